"""The HTTP API as a client sees it: a real `dox api serve` process against PostgreSQL and Redis.

Health and readiness (and readiness against a database that is down), the key check
(every refusal, scopes, another user's workflow), problem documents for every error, the
OpenAPI document, and `dox api serve`'s refusals to start.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import services
from apiserver import OPERATOR_KEY, Server, api_env, bearer, problem
from services import clean_env, dox, free_port
from sqlalchemy import insert
from stores import new_workflow

from dox_tasks import apikeys
from dox_tasks.api.app import create_app
from dox_tasks.db.store import now, open_store
from dox_tasks.db.tables import SR
from dox_tasks.settings import Settings

with warnings.catch_warnings():  # starlette asks for httpx2, which is not released for this pin
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def api(tmp_path: Path, pg_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    env = api_env(tmp_path, pg_url, redis_url)
    upgraded = dox(["db", "upgrade"], env, tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    server = Server(env, tmp_path, tmp_path / "api.log")
    store = open_store(pg_url)
    yield server, store
    store.close()
    server.stop()


def test_health_ready_and_openapi(api):
    server, _ = api
    assert server.get("/health")[:2] == (200, "application/json")
    assert server.get("/health")[2] == {"status": "ok"}
    code, _, body = server.get("/ready")
    assert code == 200 and body["checks"] == {"database": "ok", "redis": "ok"}, body
    code, _, doc = server.get("/api/v1/openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.1")
    assert "/api/v1/workflows/{workflow_id}" in doc["paths"]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/v1/docs", timeout=10) as r:
        assert r.status == 200 and "text/html" in r.headers["content-type"]
    problem(server.get("/api/v1/nothing-here"), 404)


def test_auth_matrix(api):
    server, store = api
    mine = new_workflow(store, user="alice")
    theirs = new_workflow(store, sha="b" * 64, user="bob")
    reader = apikeys.create(store, "reader", "Alice", "read").key
    reader_all = apikeys.create(store, "all", "carol", "read,read_all").key
    only_all = apikeys.create(store, "only-all", "dave", "read_all").key  # read_all includes read
    submitter = apikeys.create(store, "submit", "alice", "submit").key
    revoked = apikeys.create(store, "gone", "alice", "read")
    apikeys.revoke(store, revoked.record["api_key"])
    expired = apikeys.create(store, "old", "alice", "read", timedelta(days=1), now=now() - timedelta(days=2))
    path = f"/api/v1/workflows/{mine}"

    assert problem(server.get(path), 401)["type"].endswith("unauthorized")
    problem(server.get(path, bearer("not-a-key")), 401)
    problem(server.get(path, {"Authorization": f"Basic {reader}"}), 401)
    prefix, secret = reader.split("_")[1], reader.split("_", 2)[2]
    unknown = f"dox_{'0' * 12}_{secret}"
    problem(server.get(path, bearer(unknown)), 401)
    problem(server.get(path, bearer(revoked.key)), 401)
    problem(server.get(path, bearer(expired.key)), 401)
    assert "read" in problem(server.get(path, bearer(submitter)), 403)["detail"]

    code, ctype, body = server.get(path, bearer(reader))
    assert (code, ctype) == (200, "application/json"), body
    assert body["workflow_id"] == mine and body["user"] == "alice" and body["status"] == "queued"
    assert body["file"] == "f.pdf" and isinstance(body["steps"], list) and isinstance(body["events"], list)
    assert body["created_at"].endswith("Z")
    assert server.get(path, {"X-API-Key": reader})[0] == 200
    assert problem(server.get(f"/api/v1/workflows/{theirs}", bearer(reader)), 404)["detail"]
    problem(server.get("/api/v1/workflows/no-such-id", bearer(reader)), 404)
    assert server.get(f"/api/v1/workflows/{theirs}", bearer(reader_all))[2]["user"] == "bob"
    assert server.get(f"/api/v1/workflows/{theirs}", bearer(only_all))[2]["user"] == "bob"
    # Ids no workflow can have are 404 without a query: a NUL broke the query (a 500 and a
    # traceback in the log), an escape sequence must not reach the log raw.
    for odd in ("wf%00", "%1b%5b2J%1b%5b32mFAKE", "x" * 5000):
        problem(server.get(f"/api/v1/workflows/{odd}", bearer(reader)), 404)
    # No redirect to the slash-less path (its Location would come from the Host header).
    problem(server.get(f"{path}/", {**bearer(reader), "Host": "evil.example"}), 404)
    assert server.get(f"/api/v1/workflows/{theirs}", bearer(OPERATOR_KEY))[0] == 200
    assert server.get(f"/api/v1/workflows/{theirs}", {"X-API-Key": OPERATOR_KEY})[0] == 200

    log = server.stop()
    assert "Traceback" not in log and "\x1b" not in log, log
    for reason in ("missing", "malformed", "unknown", "revoked", "expired"):
        assert f"reason={reason}" in log, log
    assert f"prefix={prefix}" not in log  # a valid key is not logged
    for secret_text in (secret, OPERATOR_KEY, revoked.key.split("_", 2)[2]):
        assert secret_text not in log
    used = {k["api_key"]: k["usage_count"] for k in apikeys.list_keys(store)}
    # 4 reads, 3 odd ids (the slashed path matches no route: no key is checked); counted in
    # memory, written at shutdown at the latest.
    assert used[prefix] == 7, used


def test_usage_is_written_while_the_server_idles(api):
    """Counted in memory, written by the server's own timer: no later request is needed."""
    server, store = api
    wid = new_workflow(store, user="alice")
    made = apikeys.create(store, "reader", "alice", "read")
    assert server.get(f"/api/v1/workflows/{wid}", {"X-API-Key": made.key})[0] == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        row = next(k for k in apikeys.list_keys(store) if k["api_key"] == made.record["api_key"])
        if row["usage_count"] == 1:
            assert row["last_used"] is not None
            return
        time.sleep(0.5)
    raise AssertionError(f"usage not written while the server idled: {row}")


def test_ready_503_when_the_database_is_down(tmp_path, redis_url):
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    server = Server(api_env(tmp_path, down, redis_url), tmp_path, tmp_path / "api.log")
    try:
        body = problem(server.get("/ready"), 503)
        assert "database" in body["detail"] and body["checks"]["redis"] == "ok"
        assert "127.0.0.1" not in json.dumps(body) and "nothing" not in json.dumps(body)
        # A key check that needs the database is 503 too, not a traceback.
        key = f"dox_{'0' * 12}_{'A' * 43}"
        problem(server.get("/api/v1/workflows/x", {"Authorization": f"Bearer {key}"}), 503)
        # The logged path is escaped: no terminal sequence from a caller reaches the log.
        problem(server.get("/api/v1/workflows/%1b%5b2Jx", {"Authorization": f"Bearer {key}"}), 503)
    finally:
        log = server.stop()
    assert "\x1b" not in log and "\\x1b" in log, log


def test_docs_off_and_no_auth_on_loopback(tmp_path, pg_url, redis_url):
    env = api_env(tmp_path, pg_url, redis_url, DOX_API_DOCS="off", REQUIRE_AUTH="false")
    assert dox(["db", "upgrade"], env, tmp_path).returncode == 0
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        problem(server.get("/api/v1/openapi.json"), 404)
        problem(server.get("/api/v1/docs"), 404)
        # No key asked: the unknown id is 404, not 401; a bad key is still refused.
        problem(server.get("/api/v1/workflows/no-such-id"), 404)
        problem(server.get("/api/v1/workflows/no-such-id", {"X-API-Key": "junk"}), 401)
        # Without keys only requests addressed to this machine are served: a page on another
        # name that resolves to 127.0.0.1 (DNS rebinding) is not.
        problem(server.get("/api/v1/workflows/no-such-id", {"Host": "rebind.example"}), 401)
        problem(server.get("/api/v1/workflows/no-such-id", {"Host": f"localhost:{server.port}"}), 404)
    finally:
        server.stop()


def test_serve_refusals(tmp_path, redis_url):
    result = dox(["api", "serve"], clean_env(tmp_path, DOX_BROKER_URL=redis_url), tmp_path)
    assert result.returncode != 0
    assert "DOX_DATABASE_URL" in result.stderr and "dox run" in result.stderr
    assert "Traceback" not in result.stderr
    env = api_env(tmp_path, services.PG_ADMIN_URL, redis_url, REQUIRE_AUTH="false")
    result = dox(["api", "serve", "--host", "0.0.0.0", "--port", str(free_port())], env, tmp_path)
    assert result.returncode != 0 and "REQUIRE_AUTH" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    for weak in ("x", " " * 40, "é" * 40, " " + "k" * 40):  # guessable, or never sendable as sent
        env = api_env(tmp_path, services.PG_ADMIN_URL, redis_url, API_KEY=weak)
        result = dox(["api", "serve", "--port", str(free_port())], env, tmp_path)
        assert result.returncode != 0 and "API_KEY must be" in result.stderr, result.stderr
        assert len(weak.strip()) < 2 or weak.strip() not in result.stderr  # never echoed


def test_unexpected_errors_are_generic_problems(tmp_path, redis_url):
    """In process (a real server has no route that fails): a 500 says nothing of the exception."""
    settings = Settings().model_copy(
        update={"broker_url": redis_url, "database_url": services.PG_ADMIN_URL, "home": tmp_path}
    )
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("password=hunter2 at db.internal:5432")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom")
        body = problem((answer.status_code, answer.headers["content-type"], answer.json()), 500)
        assert "hunter2" not in answer.text and "db.internal" not in answer.text, body
        answer = client.post("/health")
        problem((answer.status_code, answer.headers["content-type"], answer.json()), 405)


def test_dox_health_reports_the_api(tmp_path, pg_url, redis_url):
    """`dox health` checks the API's /ready when DOX_API_URL is set: ready, not ready, silent."""
    env = api_env(tmp_path, pg_url, redis_url)
    assert dox(["db", "upgrade"], env, tmp_path).returncode == 0
    server = Server(env, tmp_path, tmp_path / "api.log")
    down_db = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    unready = Server(api_env(tmp_path, down_db, redis_url), tmp_path, tmp_path / "unready.log")
    try:
        cases = {
            server.url: (True, None),
            unready.url: (False, "the API is not ready (HTTP 503): not ready: database unreachable"),
            f"http://127.0.0.1:{free_port()}": (False, "the API does not answer"),
        }
        for url, (ok, sentence) in cases.items():
            result = dox(["health", "--json"], {**env, "DOX_API_URL": url}, tmp_path)
            report = json.loads(result.stdout)
            assert report["api"]["ok"] is ok, report
            api_problems = [p for p in report["problems"] if "API" in p]
            if sentence is None:
                assert api_problems == [], report
            else:
                assert len(api_problems) == 1 and api_problems[0].startswith(sentence), report
        assert "api" not in json.loads(dox(["health", "--json"], env, tmp_path).stdout)
    finally:
        server.stop()
        unready.stop()


def test_a_step_traceback_never_reaches_a_client(api):
    """A failed attempt's traceback (internal paths, hosts) stays in the database for operators;
    the API shows the attempt and its one-line error, not the stack."""
    server, store = api
    wid = new_workflow(store, user="alice")
    stack = 'Traceback (most recent call last):\n  File "/srv/dox/dox_tasks/scanner.py", line 95\n'
    with store.tx() as conn:
        conn.execute(
            insert(SR).values(
                workflow_id=wid,
                step="scan",
                attempt=1,
                state="retry",
                started_at=now(),
                error="ScannerUnavailable: clamd did not answer",
                traceback=stack,
            )
        )
    reader = apikeys.create(store, "reader", "alice", "read").key
    code, _, body = server.get(f"/api/v1/workflows/{wid}", bearer(reader))
    assert code == 200, body
    assert [(s["step"], s["error"]) for s in body["steps"]] == [
        ("scan", "ScannerUnavailable: clamd did not answer")
    ]
    assert "traceback" not in body["steps"][0] and "Traceback" not in json.dumps(body), body


def _answer_to(port: int, sent: bytes) -> bytes:
    """Send ``sent`` (a request head, maybe part of a body) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(sent)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    return answer


def test_a_json_body_is_bounded_before_its_key_is_checked(tmp_path, pg_url, redis_url):
    """FastAPI reads a JSON body whole before any dependency runs, so the key check came after
    it: without a key, a 200 MB body grew the server by 360 MB, and a body that never ends held
    a request slot forever. Small bodies are capped and timed at the edge instead."""
    env = api_env(tmp_path, pg_url, redis_url, DOX_API_BODY_TIMEOUT_S="1")
    assert dox(["db", "upgrade"], env, tmp_path).returncode == 0
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        json_head = "Content-Type: application/json\r\nConnection: close\r\n"
        for path in ("/api/v1/intake/pause", "/api/v1/workflows/x/retry", "/api/v1/coordination/sync"):
            # Declared too large: refused before a byte of the body is read.
            head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{json_head}"
            answer = _answer_to(server.port, f"{head}Content-Length: {200 * 10**6}\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
            assert b"application/problem+json" in answer
            if path.endswith("/sync"):
                continue  # takes no body: never read, the key check answers
            # Chunked, no length: refused once it passes the cap.
            chunk = b'{"reason": "' + b"x" * 100_000
            chunked = f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + b"%x\r\n" % len(chunk) + chunk
            answer = _answer_to(server.port, chunked + b"\r\n")
            assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
            # A body that stops arriving: 408, not a slot held forever.
            started = time.monotonic()
            answer = _answer_to(server.port, f'{head}Content-Length: 50\r\n\r\n{{"rea'.encode())
            assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5, answer[:300]
        # A small body still reaches the key check, and an operator's request works.
        json_type = {"Content-Type": "application/json"}
        problem(server.post("/api/v1/intake/pause", b'{"reason": "x"}', json_type), 401)
        code, _, body = server.post(
            "/api/v1/intake/pause",
            json.dumps({"reason": "r" * 400}).encode(),
            {**bearer(OPERATOR_KEY), **json_type},
        )
        assert code == 200 and body["paused"] is True, body
    finally:
        log = server.stop()
    assert "Traceback" not in log, log
