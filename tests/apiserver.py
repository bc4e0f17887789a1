"""A real `dox api serve` process for the API tests, and the checks every API test shares.

``Server`` starts the CLI on a free port and waits for ``/health``; ``request`` is a small
HTTP client that returns ``(status, content-type, body)`` (JSON decoded when it is JSON) for
answers of every status. ``api_env`` points a server at a test's PostgreSQL and Redis with the
operator key ``OPERATOR_KEY``; ``problem`` asserts an answer is a problem document.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from services import clean_env, free_port

OPERATOR_KEY = "operator-key-for-tests-0123456789"
PROBLEM_FIELDS = {"type", "title", "status", "detail"}

Answer = tuple[int, str, Any]


def _decode(ctype: str | None, raw: bytes) -> Any:
    if ctype and "json" in ctype:
        return json.loads(raw)
    return raw


class Server:
    """`dox api serve` on a free port (extra CLI ``args`` appended), stopped by :meth:`stop`."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path, args: list[str] | None = None):
        self.port = free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dox_tasks.cli", "api", "serve", "--port", str(self.port), *(args or [])],
            env=env,
            cwd=cwd,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not answer /health: {log.read_text()}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Answer:
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, r.headers["content-type"], _decode(r.headers["content-type"], r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.headers["content-type"], _decode(e.headers["content-type"], e.read())

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        return self.request("POST", path, body if body is not None else b"", headers)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.log.read_text()


def api_env(tmp_path: Path, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """A server environment on this test's database and Redis, in a namespace of its own."""
    return clean_env(
        tmp_path,
        DOX_BROKER_URL=redis_url,
        DOX_DATABASE_URL=database_url,
        DOX_NAMESPACE=f"api{time.monotonic_ns()}",
        **{"API_KEY": OPERATOR_KEY, **extra},
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def problem(answer: Answer, status: int) -> dict[str, Any]:
    """The problem document of ``answer``, asserting its status, media type and fields."""
    code, ctype, body = answer
    assert code == status, body
    assert ctype == "application/problem+json", ctype
    assert set(body) >= PROBLEM_FIELDS and body["status"] == status, body
    assert "Traceback" not in json.dumps(body)
    return dict(body)
