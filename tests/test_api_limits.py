"""The API's limits as a client meets them, on a real `dox api serve` with PostgreSQL and Redis.

Refused keys: the ``authentication failed`` line (reason, prefix, client address, never the
secret) on stderr and in ``$DOX_LOG_DIR/auth.log``, ``dox_api_auth_failures_total`` scraped
from ``dox metrics serve``, 429 for an address after 20 refusals in a minute. The per-key
rate across ``--workers 2`` (429 with ``Retry-After``, served again after the refill); 431
for huge headers; 503 when the concurrency limit is full (requests held open by a database
that never answers), ``/health`` still served; CORS for a listed origin only;
``X-Forwarded-For`` believed from a trusted proxy only.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from apiserver import OPERATOR_KEY, Server, api_env, bearer, problem
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from services import dox, free_port, http_get, kill_group, spawn_dox, unavailable

from dox_tasks import apikeys
from dox_tasks.api.edge import MAX_HEADER_BYTES
from dox_tasks.db.store import open_store
from dox_tasks.settings import Settings, load

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ORIGIN = "https://app.example.com"
PROXY_AUTH = ("prom", "scrape-secret")

Reply = tuple[int, dict[str, str], Any]


def call(server: Server, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    """(status, headers lower-cased, body) — the status line and every header, for any status."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        raw = r.read()
        head = {k.lower(): v for k, v in r.getheaders()}
        body = json.loads(raw) if "json" in head.get("content-type", "") else raw
        return r.status, head, body
    finally:
        conn.close()


def huge_head(server: Server, size: int) -> bytes:
    """Send a request head of ``size`` bytes; the status line answered, b"" if the server
    cut the connection first (a reset can overtake the answer)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        try:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * size + b"\r\n\r\n")
            return conn.recv(100).split(b"\r\n")[0]
        except (ConnectionResetError, BrokenPipeError):
            return b""


def as_problem(reply: Reply, status: int) -> dict[str, Any]:
    code, head, body = reply
    return problem((code, head.get("content-type", ""), body), status)


def migrated(tmp_path: Path, pg_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = api_env(tmp_path, pg_url, redis_url, **extra)
    upgraded = dox(["db", "upgrade"], env, tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    return env


def scrape(env: dict[str, str], tmp_path: Path) -> dict[str, float]:
    """``dox_api_auth_failures_total`` by reason, as Prometheus reads it from the exporter."""
    port, log = free_port(), tmp_path / "exporter.log"
    exporter = spawn_dox(
        ["metrics", "serve", "--port", str(port), "--address", "127.0.0.1"],
        {**env, "DOX_METRICS_USER": PROXY_AUTH[0], "DOX_METRICS_PASSWORD": PROXY_AUTH[1]},
        log,
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}/metrics", time.monotonic() + 30
        while True:
            try:
                status, text = http_get(url, PROXY_AUTH)
                break
            except OSError:
                assert time.monotonic() < deadline and exporter.poll() is None, log.read_text()
                time.sleep(0.2)
        assert status == 200, text
    finally:
        kill_group(exporter)
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name == "dox_api_auth_failures":
            assert family.type == "counter"
            found |= {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}
    return found


def test_refused_keys_are_logged_counted_and_throttle_their_address(tmp_path, pg_url, redis_url):
    """Two server processes share the counts and auth.log. Behind a trusted proxy (127.0.0.1
    here) each X-Forwarded-For address is a client."""
    logs = tmp_path / "logs"
    env = migrated(
        tmp_path,
        pg_url,
        redis_url,
        DOX_LOG_DIR=str(logs),
        DOX_TRUSTED_PROXIES="127.0.0.1",
        DOX_API_CORS_ORIGINS=ORIGIN,
    )
    store = open_store(pg_url)
    reader = apikeys.create(store, "reader", "alice", "read").key
    submitter = apikeys.create(store, "submitter", "alice", "submit").key
    store.close()
    prefix, secret = reader.split("_")[1], reader.split("_", 2)[2]
    unknown = f"dox_{'0' * 12}_{secret}"
    server = Server(env, tmp_path, tmp_path / "api.log", ["--workers", "2"])  # both append auth.log
    try:
        attacker = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}  # the left one is the client's claim
        path = "/api/v1/workflows/no-such-id"
        as_problem(call(server, "GET", path, {**attacker, **bearer(unknown)}), 401)
        as_problem(call(server, "GET", path, {**attacker, "X-API-Key": f"dox_{prefix}_{'A' * 43}"}), 401)
        as_problem(call(server, "GET", path, attacker), 401)
        assert (
            "submit"
            not in as_problem(call(server, "GET", path, {**attacker, **bearer(submitter)}), 403)["detail"]
        )
        for _ in range(17):  # 20 refusals in all
            as_problem(call(server, "GET", path, {**attacker, **bearer("junk")}), 401)
        # The 21st attempt from that address is not even checked; a valid key is refused too.
        for key in ("junk", reader):
            code, head, body = call(server, "GET", path, {**attacker, **bearer(key)})
            as_problem((code, head, body), 429)
            assert 1 <= int(head["retry-after"]) <= 60, head
        # Junk where an address belongs reaches the log escaped, as one word.
        as_problem(call(server, "GET", path, {"X-Forwarded-For": "evil\xad now", **bearer("junk")}), 401)
        # Another address behind the same proxy is served.
        assert call(server, "GET", path, {"X-Forwarded-For": "203.0.113.8", **bearer(reader)})[0] == 404

        # CORS: a listed origin may ask, another may not (and gets no allow header).
        preflight = {
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
        code, head, _ = call(server, "OPTIONS", path, {"Origin": ORIGIN, **preflight})
        assert code == 200 and head["access-control-allow-origin"] == ORIGIN, head
        assert "x-api-key" in head["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in head
        reply = call(server, "OPTIONS", path, {"Origin": "https://evil.example", **preflight})
        assert "origin" in as_problem(reply, 400)["detail"]
        assert "access-control-allow-origin" not in reply[1]
        code, head, _ = call(
            server, "GET", path, {"Origin": ORIGIN, "X-Forwarded-For": "203.0.113.8", **bearer(reader)}
        )
        assert code == 404 and head["access-control-allow-origin"] == ORIGIN
        assert "retry-after" in head["access-control-expose-headers"].lower()

        counted = scrape(env, tmp_path)
    finally:
        log = server.stop()

    assert counted["unknown"] == 1 and counted["wrong_secret"] == 1 and counted["missing"] == 1, counted
    assert counted["malformed"] == 18 and counted["scope"] == 1 and counted["revoked"] == 0, counted
    auth_log = (logs / "auth.log").read_text()
    failed = [line for line in auth_log.splitlines() if "authentication failed" in line]
    assert len(failed) == 21, auth_log
    assert "client=?evil\\u00ad\\x20now" in auth_log and "\xad" not in auth_log + log
    assert f"reason=unknown prefix={'0' * 12} client=203.0.113.7" in failed[0]
    assert f"reason=wrong_secret prefix={prefix} client=203.0.113.7" in failed[1]
    assert "reason=missing prefix=- client=203.0.113.7" in failed[2]
    assert (
        f"authorization refused: scope=read prefix={submitter.split('_')[1]} client=203.0.113.7" in auth_log
    )
    assert "authentication throttled: client=203.0.113.7" in auth_log
    assert "198.51.100.9" not in auth_log  # the client's own claim is not believed
    for text in (auth_log, log):
        assert secret not in text and submitter.split("_", 2)[2] not in text and "Traceback" not in text
    assert failed[0] in log or f"reason=unknown prefix={'0' * 12} client=203.0.113.7" in log


def test_per_key_rate_across_workers_headers_and_untrusted_forwarding(tmp_path, pg_url, redis_url):
    rate = 30
    env = migrated(tmp_path, pg_url, redis_url, DOX_API_RATE_PER_MIN=str(rate))
    store = open_store(pg_url)
    reader, other = (apikeys.create(store, n, "alice", "read").key for n in ("one", "two"))
    store.close()
    server = Server(env, tmp_path, tmp_path / "api.log", ["--workers", "2"])
    try:
        path = "/api/v1/workflows/no-such-id"
        started, served = time.monotonic(), 0
        while (reply := call(server, "GET", path, bearer(reader)))[0] == 404:
            served += 1
            assert served <= 2 * rate, "the bucket is not shared by the two worker processes"
        elapsed = time.monotonic() - started
        # One minute's worth, plus what refilled meanwhile (rate/60 a second).
        assert rate <= served <= rate + math.ceil(elapsed * rate / 60) + 1, (served, elapsed)
        body = as_problem(reply, 429)
        assert str(rate) in body["detail"]
        wait = int(reply[1]["retry-after"])
        assert 1 <= wait <= math.ceil(60 / rate), reply[1]
        assert call(server, "GET", path, bearer(other))[0] == 404  # its own bucket
        time.sleep(wait)
        assert call(server, "GET", path, bearer(reader))[0] == 404  # refilled

        # Headers: 16 KiB in all is the limit; an untrusted peer's X-Forwarded-For is ignored.
        under = {**bearer(other), "X-Padding": "p" * (15 * 1024)}
        assert call(server, "GET", path, under)[0] == 404
        for size in (17 * 1024, 60 * 1024):
            padded = {"X-Padding": "p" * size}
            assert "16 KiB" in as_problem(call(server, "GET", "/health", padded), 431)["detail"]
        # 64 MiB: uvicorn alone read it all (22 s of a core); now the server stops reading.
        started = time.monotonic()
        assert huge_head(server, 64 * 1024 * 1024) in (b"HTTP/1.1 431 Request Header Fields Too Large", b"")
        assert time.monotonic() - started < 5
        assert call(server, "GET", "/health")[0] == 200
        as_problem(call(server, "GET", path, {"X-Forwarded-For": "203.0.113.7", **bearer("junk")}), 401)
        # CORS is off: a preflight gets no allow header.
        code, head, _ = call(
            server, "OPTIONS", path, {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
        )
        assert code == 405 and "access-control-allow-origin" not in head
    finally:
        log = server.stop()
    assert "authentication failed: reason=malformed prefix=- client=127.0.0.1" in log, log
    assert "203.0.113.7" not in log


def test_concurrency_limit_answers_503_and_probes_still_answer(tmp_path, redis_url):
    """Two requests held open by a database that accepts connections and never answers."""
    with closing(socket.socket()) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent.settimeout(10)
        hung = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/nothing"
        env = api_env(tmp_path, hung, redis_url, DOX_API_MAX_CONCURRENT="2")
        server = Server(env, tmp_path, tmp_path / "api.log")
        held = [
            threading.Thread(
                target=call, args=(server, "GET", f"/api/v1/workflows/{n}", bearer(OPERATOR_KEY))
            )
            for n in ("x", "y")
        ]
        waiting: list[socket.socket] = []
        try:
            for t in held:
                t.start()
            while len(waiting) < 2:  # both requests are inside, waiting for the database
                waiting.append(silent.accept()[0])
            reply = call(server, "GET", "/api/v1/workflows/z", bearer(OPERATOR_KEY))
            body = as_problem(reply, 503)
            assert body["type"].endswith("/busy") and reply[1]["retry-after"] == "1", body
            assert "2 requests at once" in body["detail"]
            assert call(server, "GET", "/health")[:1] == (200,)
        finally:
            for conn in waiting:
                conn.close()  # the held requests fail (503) and end
            for t in held:
                t.join(15)
            log = server.stop()
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "name, value",
    [
        ("DOX_API_CORS_ORIGINS", "*"),
        ("DOX_API_CORS_ORIGINS", "app.example.com"),
        ("DOX_API_CORS_ORIGINS", "https://app.example.com/path"),
        ("DOX_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("DOX_TRUSTED_PROXIES", "proxy.internal"),
    ],
)
def test_settings_refuse_wildcards_and_unreadable_proxies(monkeypatch, name, value):
    """uvicorn would take an unparsable proxy as a literal no peer ever matches: refused instead."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        load()


def test_settings_normalise_origins_and_proxies(monkeypatch):
    monkeypatch.setenv("DOX_API_CORS_ORIGINS", "https://a.example, http://localhost:3000/")
    monkeypatch.setenv("DOX_TRUSTED_PROXIES", "10.1.2.3/8, ::1")
    settings = load()
    assert settings.api_cors_origins == ["https://a.example", "http://localhost:3000"]
    assert settings.trusted_proxies == ["10.0.0.0/8", "::1"]
    assert (settings.api_rate_per_min, settings.api_max_concurrent, settings.api_auth_failures_per_min) == (
        600,
        64,
        20,
    )


# ---- deploy/nginx.conf ---------------------------------------------------------------------

NGINX_CONF = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"


def block(text: str, opening: str) -> str:
    """The body of the (unnested) block that starts with ``opening {``."""
    found = re.search(re.escape(opening) + r"\s*\{(.*?)\}", text, re.S)
    assert found, f"no block {opening!r} in {NGINX_CONF}"
    return found.group(1)


def size(value: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


def test_nginx_conf_matches_the_settings(tmp_path):
    text = NGINX_CONF.read_text()
    defaults = Settings.model_fields
    max_file = int(defaults["max_file_size_mb"].default * 1024 * 1024)
    # Room for the multipart envelope, never less than a file DOX accepts.
    (body,) = re.findall(r"client_max_body_size (\S+);", text)
    assert size(body) == max_file + 1024 * 1024
    (line,) = re.findall(r"large_client_header_buffers \d+ (\S+);", text)
    assert size(line) == MAX_HEADER_BYTES
    assert f"server 127.0.0.1:{defaults['api_port'].default};" in block(text, "upstream dox_api")
    assert "proxy_request_buffering off;" in block(text, "location /")
    assert "proxy_buffering off;" in block(text, "location = /api/v1/events")
    assert "proxy_buffering off;" not in block(text, "location /")  # only SSE skips the buffer
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in text
    tls = text[text.index("listen 443 ssl") :]
    assert "ssl_certificate " in tls and "ssl_certificate_key " in tls and "return 301 https://" in text

    nginx = os.environ.get("DOX_TEST_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        unavailable("nginx", "not installed (apt-get install nginx; .ci/run does)")
    key, cert = tmp_path / "tls.key", tmp_path / "tls.crt"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=dox-test"]
        + ["-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    local = (
        text.replace("/etc/ssl/certs/dox-platform.crt", str(cert))
        .replace("/etc/ssl/private/dox-platform.key", str(key))
        .replace("/var/log/nginx/", f"{tmp_path}/")
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(local)
    args = [nginx, "-t", "-c", str(conf), "-p", str(tmp_path), "-g", f"pid {tmp_path}/nginx.pid;"]
    checked = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and "test is successful" in checked.stderr, checked.stderr
    # And nginx -t does reject a broken file (the check is not a formality).
    conf.write_text(local.replace("proxy_request_buffering off;", "proxy_request_buffering sometimes;"))
    assert subprocess.run(args, capture_output=True, timeout=30).returncode != 0
