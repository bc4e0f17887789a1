"""`dox flower`: refuses to start without credentials; the API answers 401 without them."""

from __future__ import annotations

import time

import pytest
from services import dox, free_port, http_get, kill_group, server_env, spawn_dox

pytestmark = [pytest.mark.redis, pytest.mark.integration]


def get(url: str, auth: tuple[str, str] | None = None) -> int:
    return http_get(url, auth, timeout=5)[0]


def test_flower_needs_credentials(tmp_path, stack):
    env = server_env(tmp_path, stack)
    refused = dox(["flower"], env, tmp_path)
    assert refused.returncode == 2 and "DOX_FLOWER_USER" in refused.stderr


def test_flower_api_is_behind_basic_auth(tmp_path, stack, harness_factory):
    harness_factory(stack)  # the database and tables
    port = free_port()
    env = server_env(tmp_path, stack, DOX_FLOWER_USER="ops", DOX_FLOWER_PASSWORD="s3cret-pw")
    proc = spawn_dox(["flower", f"--port={port}", "--address=127.0.0.1"], env, tmp_path / "flower.log")
    try:
        url = f"http://127.0.0.1:{port}/api/workers"
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline:
            try:
                status = get(url)
                break
            except OSError:
                time.sleep(0.3)
        assert status == 401, (tmp_path / "flower.log").read_text()[-2000:]
        assert get(url, ("ops", "wrong")) == 401
        assert get(url, ("ops", "s3cret-pw")) == 200
        # Its Prometheus page (task names and counts) asks for the same credentials.
        metrics = f"http://127.0.0.1:{port}/metrics"
        assert get(metrics) == 401 and get(metrics, ("ops", "wrong")) == 401
        assert get(metrics, ("ops", "s3cret-pw")) == 200
        assert get(f"http://127.0.0.1:{port}/healthcheck") == 200  # says only "OK"
    finally:
        kill_group(proc)
    log = (tmp_path / "flower.log").read_text()
    assert "s3cret-pw" not in log
    assert f"Visit me at http://127.0.0.1:{port}" in log  # the address it binds, as it says
