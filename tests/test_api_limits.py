"""The API's limits as a client meets them, on a real `dox api serve` with PostgreSQL and Redis.

Refused keys: the ``authentication failed`` line (reason, prefix, client address, never the
secret) on stderr and in ``$DOX_LOG_DIR/auth.log``, ``dox_api_auth_failures_total`` scraped
from ``dox metrics serve``, 429 for an address after 20 refusals in a minute; the per-key
rate (429 with ``Retry-After``, served again after the refill) — each shared by several
server processes. 431 for huge headers; 503 when the concurrency limit is full (requests
held open by a database that never answers), ``/health`` still served; CORS for a listed
origin only; ``X-Forwarded-For`` believed from a trusted proxy only. deploy/nginx.conf
against the settings, and ``nginx -t``.
"""

from __future__ import annotations

import contextlib
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
from services import dox, free_port, http_get, kill_group, spawn_dox, unavailable

from dox_tasks import apikeys
from dox_tasks.api.edge import MAX_HEADER_BYTES
from dox_tasks.db.store import open_store
from dox_tasks.errors import ConfigError
from dox_tasks.settings import Settings, load

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ORIGIN = "https://app.example.com"
PROXY_AUTH = ("prom", "scrape-secret")

Reply = tuple[int, dict[str, str], Any]


def call(server: Server, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    """(status, headers lower-cased, body) — the status line and every header, for any status."""
    with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)) as conn:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        raw = r.read()
        head = {k.lower(): v for k, v in r.getheaders()}
        return r.status, head, json.loads(raw) if "json" in head.get("content-type", "") else raw


def pid_of(line: str) -> int:
    """The process that wrote an ``auth.log`` line."""
    found = re.search(r"dox\.api\.security\[(\d+)\]", line)
    assert found, line
    return int(found.group(1))


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


def test_refusals_and_rates_hold_across_server_processes(tmp_path, pg_url, redis_url):
    """Two servers on one Redis and one auth.log, as two hosts behind a proxy would be; the
    first with ``--workers 2``. Requests alternate between them, so every count below is
    shared by at least two processes (which worker of the first accepts a connection is the
    kernel's choice: 100 connections in a row once went to one). Behind a trusted proxy
    (127.0.0.1 here) each X-Forwarded-For address is a client."""
    logs, rate = tmp_path / "logs", 30
    env = migrated(
        tmp_path,
        pg_url,
        redis_url,
        DOX_LOG_DIR=str(logs),
        DOX_TRUSTED_PROXIES="127.0.0.1",
        DOX_API_CORS_ORIGINS=ORIGIN,
        DOX_API_RATE_PER_MIN=str(rate),
    )
    store = open_store(pg_url)
    reader, rated = (apikeys.create(store, name, "alice", "read").key for name in ("reader", "rated"))
    submitter = apikeys.create(store, "submitter", "alice", "submit").key
    store.close()
    prefix, secret = reader.split("_")[1], reader.split("_", 2)[2]
    unknown = f"dox_{'0' * 12}_{secret}"
    path = "/api/v1/workflows/no-such-id"
    servers = [Server(env, tmp_path, tmp_path / "api1.log", ["--workers", "2"])]
    try:
        servers.append(Server(env, tmp_path, tmp_path / "api2.log"))

        def attempt(n: int, headers: dict[str, str]) -> Reply:
            return call(servers[n % 2], "GET", path, headers)

        attacker = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}  # the left one is the client's claim
        as_problem(attempt(0, {**attacker, **bearer(unknown)}), 401)
        as_problem(attempt(1, {**attacker, "X-API-Key": f"dox_{prefix}_{'A' * 43}"}), 401)
        as_problem(attempt(2, attacker), 401)
        # A genuine key without the scope: 403, logged, not held against the address.
        assert "read" in as_problem(attempt(0, {**attacker, **bearer(submitter)}), 403)["detail"]
        for n in range(3, 20):  # 20 refusals in all, 10 by each server
            as_problem(attempt(n, {**attacker, **bearer("junk")}), 401)
        # The 21st attempt from that address is not even checked, on either server; a valid
        # key is refused too.
        for n, key in enumerate(("junk", reader)):
            code, head, body = attempt(n, {**attacker, **bearer(key)})
            assert "refused API keys" in as_problem((code, head, body), 429)["detail"]
            assert 1 <= int(head["retry-after"]) <= 60, head
        # Junk where an address belongs reaches the logs escaped, as one word.
        as_problem(attempt(0, {"X-Forwarded-For": "evil\xad now", **bearer("junk")}), 401)

        # The per-key rate: one bucket of a minute's worth for both servers.
        elsewhere = {"X-Forwarded-For": "203.0.113.8"}
        started, served = time.monotonic(), 0
        while (reply := attempt(served, {**elsewhere, **bearer(rated)}))[0] == 404:
            served += 1
            assert served <= 2 * rate, "each server has a bucket of its own"
        elapsed = time.monotonic() - started
        # One minute's worth, plus what refilled meanwhile (rate/60 a second).
        assert rate <= served <= rate + math.ceil(elapsed * rate / 60) + 1, (served, elapsed)
        assert f"more than {rate} requests a minute" in as_problem(reply, 429)["detail"]
        wait = int(reply[1]["retry-after"])
        assert 1 <= wait <= math.ceil(60 / rate), reply[1]
        assert attempt(1, {**elsewhere, **bearer(reader)})[0] == 404  # a bucket per key
        time.sleep(wait)
        assert attempt(served + 1, {**elsewhere, **bearer(rated)})[0] == 404  # refilled

        # CORS: a listed origin may ask, another may not (and gets no allow header).
        one = servers[0]
        preflight = {"Access-Control-Request-Method": "GET"}
        preflight["Access-Control-Request-Headers"] = "authorization"
        code, head, _ = call(one, "OPTIONS", path, {"Origin": ORIGIN, **preflight})
        assert code == 200 and head["access-control-allow-origin"] == ORIGIN, head
        assert "x-api-key" in head["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in head
        reply = call(one, "OPTIONS", path, {"Origin": "https://evil.example", **preflight})
        assert "origin" in as_problem(reply, 400)["detail"]
        assert "access-control-allow-origin" not in reply[1]
        code, head, _ = call(one, "GET", path, {"Origin": ORIGIN, **elsewhere, **bearer(reader)})
        assert code == 404 and head["access-control-allow-origin"] == ORIGIN
        assert "retry-after" in head["access-control-expose-headers"].lower()

        counted = scrape(env, tmp_path)
    finally:
        logged = "".join(server.stop() for server in servers)

    # Every refusal counted once, whichever process answered it.
    assert counted["unknown"] == 1 and counted["wrong_secret"] == 1 and counted["missing"] == 1, counted
    assert counted["malformed"] == 18 and counted["scope"] == 1 and counted["revoked"] == 0, counted
    auth_log = (logs / "auth.log").read_text()
    failed = [line for line in auth_log.splitlines() if "authentication failed" in line]
    assert len(failed) == 21, auth_log
    # Ten refusals by each server: the 429 after twenty counted both (the count is in Redis).
    second = servers[1].proc.pid
    assert {pid_of(line) for line in failed[1:20:2]} == {second}
    assert second not in {pid_of(line) for line in failed[0:20:2]}
    assert f"reason=unknown prefix={'0' * 12} client=203.0.113.7" in failed[0]
    assert f"reason=wrong_secret prefix={prefix} client=203.0.113.7" in failed[1]
    assert "reason=missing prefix=- client=203.0.113.7" in failed[2]
    assert "client=?evil\\u00ad\\x20now" in failed[20] and "\xad" not in auth_log + logged
    refused = f"authorization refused: scope=read prefix={submitter.split('_')[1]} client=203.0.113.7"
    assert refused in auth_log
    assert auth_log.count("authentication throttled: client=203.0.113.7") == 1
    assert "198.51.100.9" not in auth_log  # the client's own claim is not believed
    for text in (auth_log, logged):
        assert secret not in text and submitter.split("_", 2)[2] not in text and "Traceback" not in text
    # The same lines reach each server's own log (stderr), from the --workers processes too.
    assert f"reason=unknown prefix={'0' * 12} client=203.0.113.7" in (tmp_path / "api1.log").read_text()


def test_concurrency_headers_and_an_untrusted_peer(tmp_path, redis_url):
    """Requests held open by a database that accepts connections and never answers; no
    trusted proxies and no CORS origins."""
    with closing(socket.socket()) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent.settimeout(10)
        hung = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/nothing"
        env = api_env(tmp_path, hung, redis_url, DOX_API_MAX_CONCURRENT="2")
        server = Server(env, tmp_path, tmp_path / "api.log")
        path, operator = "/api/v1/workflows/no-such-id", bearer(OPERATOR_KEY)
        held = [
            threading.Thread(target=call, args=(server, "GET", f"/api/v1/workflows/{n}", operator))
            for n in ("x", "y")
        ]
        waiting: list[socket.socket] = []
        try:
            # Headers: 16 KiB in all is the limit.
            assert call(server, "GET", "/health", {"X-Padding": "p" * (15 * 1024)})[0] == 200
            for size in (17 * 1024, 60 * 1024):
                padded = {"X-Padding": "p" * size}
                assert "16 KiB" in as_problem(call(server, "GET", "/health", padded), 431)["detail"]
            # 64 MiB: uvicorn alone read it all (22 s of a core); now the server stops reading.
            started = time.monotonic()
            answer = huge_head(server, 64 * 1024 * 1024)
            assert answer in (b"HTTP/1.1 431 Request Header Fields Too Large", b"")
            assert time.monotonic() - started < 5
            # An untrusted peer's X-Forwarded-For is ignored; CORS is off.
            as_problem(call(server, "GET", path, {"X-Forwarded-For": "203.0.113.7", **bearer("junk")}), 401)
            preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
            code, head, _ = call(server, "OPTIONS", path, preflight)
            assert code == 405 and "access-control-allow-origin" not in head

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
    assert "authentication failed: reason=malformed prefix=- client=127.0.0.1" in log, log
    assert "203.0.113.7" not in log and "Traceback" not in log


def test_a_request_head_must_arrive_in_time(tmp_path, redis_url):
    """An unparsable request is answered with a problem document. Connections that send no
    head, or one that trickles, held a socket each forever (40 s
    and counting, no key needed, not counted as requests): DOX_API_HEAD_TIMEOUT_S closes them.
    A kept-alive connection gets a new period for each request."""
    env = api_env(
        tmp_path, "postgresql://postgres@127.0.0.1:1/nothing", redis_url, DOX_API_HEAD_TIMEOUT_S="1"
    )
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        trickle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        trickle.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        for _ in range(6):  # a header line every 0.3 s: never idle, never done
            time.sleep(0.3)
            with contextlib.suppress(OSError):
                trickle.sendall(b"X-Slow: 1\r\n")
        assert silent.recv(100) == b""  # closed without a word: nothing was asked
        answer = trickle.recv(1000)
        assert answer.startswith(b"HTTP/1.1 408") and b"application/problem+json" in answer, answer
        assert time.monotonic() - started < 4
        silent.close()
        trickle.close()
        # What httptools cannot parse was uvicorn's plain text; now a problem document too.
        for bad in (b"X-Name: a\x00b\r\n", b"Content-Length: 10\r\n\r\n" + b"x" * 100):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(b"POST /health HTTP/1.1\r\nHost: localhost\r\n" + bad + b"\r\n")
                answer = sock.recv(1000)
            assert answer.startswith(b"HTTP/1.1 400 Bad Request") and b"malformed-request" in answer, answer
        # One connection, two requests: the head timer restarts for each.
        with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)) as conn:
            for _ in range(2):
                conn.request("GET", "/health")
                assert conn.getresponse().read() == b'{"status":"ok"}'
                time.sleep(0.5)
    finally:
        log = server.stop()
    assert "Traceback" not in log


def test_limits_fail_open_while_redis_is_down(tmp_path, pg_url):
    """Keys are still checked (PostgreSQL); the counters are not there, so nothing is limited,
    and each process says so once a minute rather than once a request."""
    env = migrated(tmp_path, pg_url, f"redis://127.0.0.1:{free_port()}/0", DOX_API_RATE_PER_MIN="1")
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        path = "/api/v1/workflows/no-such-id"
        for _ in range(3):  # a rate of 1 a minute would refuse the second
            assert call(server, "GET", path, bearer(OPERATOR_KEY))[0] == 404
        for _ in range(22):  # 20 refusals would block the address
            as_problem(call(server, "GET", path, bearer("junk")), 401)
        assert as_problem(call(server, "GET", "/ready"), 503)["checks"]["redis"] == "unreachable"
    finally:
        log = server.stop()
    assert log.count("API limits not enforced: Redis unavailable") == 1, log
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
    with pytest.raises(ConfigError, match=name):
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
