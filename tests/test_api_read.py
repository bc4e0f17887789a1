"""The runbooks' queries and operator actions over HTTP, against a real `dox api serve` process.

The workflow list (filters, keyset pages, scopes, bad parameters), a document's bytes
(streamed, ETag/304, 409 running/quarantined, 404 rejected/deleted/another user's), retry
and cancel, metrics, the team sync and the services' health, the intake switch — each
answer checked against what the database holds after real submissions, or rows written
with ``stores.new_workflow``.
"""

from __future__ import annotations

import base64
import json
import math
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pdfs
import pytest
import services
import yaml
from apiserver import OPERATOR_KEY, Server, api_env, bearer, problem
from fakehealth import FakeHealth, refused_url
from sqlalchemy import select, update
from stores import new_workflow

from dox_tasks import apikeys, documents
from dox_tasks.api.document import content_disposition, safe_name
from dox_tasks.db import queries, records
from dox_tasks.db.store import StateStore, aware, open_store
from dox_tasks.db.tables import SR, WS
from dox_tasks.errors import SubmissionError
from dox_tasks.timespec import parse_since

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ITEM_FIELDS = {
    "workflow_id",
    "rule_name",
    "status",
    "current_step",
    "user",
    "user_display",
    "file",
    "reason",
    "created_at",
    "updated_at",
    "finished_at",
    "duration_seconds",
}


def _set(store: StateStore, wid: str, **values: Any) -> None:
    with store.tx() as conn:
        conn.execute(update(WS).where(WS.c.workflow_id == wid).values(**values))


def _z(ts: datetime) -> str:
    return aware(ts).isoformat().replace("+00:00", "Z")


def _pages(server: Server, query: str, key: str) -> tuple[list[dict[str, Any]], int]:
    """Every item of a listing, following next_cursor; and how many pages it took."""
    items: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        path = f"/api/v1/workflows?{query}" + (f"&cursor={cursor}" if cursor else "")
        code, ctype, body = server.get(path, bearer(key))
        assert (code, ctype) == (200, "application/json"), body
        items += body["workflows"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 50


@pytest.fixture
def api(tmp_path: Path, pg_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    store = open_store(pg_url)
    store.migrate()  # in this process: `dox db upgrade` is what test_api runs
    server = Server(api_env(tmp_path, pg_url, redis_url), tmp_path, tmp_path / "api.log")
    yield server, store
    store.close()
    assert "Traceback" not in server.stop()


def test_list_pages_filters_and_scopes(api):
    server, store = api
    now = datetime.now(UTC)
    alice = [new_workflow(store, user="alice") for _ in range(7)]
    bob = [new_workflow(store, sha="b" * 64, user="bob") for _ in range(3)]
    # Creation times a minute apart, newest first; two of alice's share one (the id breaks the tie).
    for i, wid in enumerate(alice + bob):
        _set(store, wid, created_at=now - timedelta(minutes=i), updated_at=now - timedelta(minutes=i))
    _set(store, alice[3], created_at=now - timedelta(minutes=2))
    _set(store, alice[1], current_state="running", current_step="scan")
    finished = now - timedelta(minutes=4) + timedelta(seconds=12.5)
    _set(store, alice[4], current_state="failed", reason="timeout", finished_at=finished, updated_at=finished)
    old = now - timedelta(hours=2)
    _set(store, alice[6], created_at=old, updated_at=old, current_state="failed", finished_at=old)
    _set(store, bob[0], rule_name="sync_team_coordination", user_display="Bob")
    _set(store, alice[0], user_display="Alice")
    reader = apikeys.create(store, "reader", "alice", "read").key
    everyone = apikeys.create(store, "all", "carol", "read,read_all").key
    submitter = apikeys.create(store, "submit", "alice", "submit").key

    rows = {r["workflow_id"]: r for r in queries.list_workflows(store, limit=100)}
    expected = sorted(rows, key=lambda w: (aware(rows[w]["created_at"]), w), reverse=True)
    assert len(expected) == 10

    # Pages of 3 under read_all: every workflow once, newest first, ties by id, 4 pages.
    items, pages = _pages(server, "limit=3", everyone)
    assert [i["workflow_id"] for i in items] == expected and pages == 4
    by_id = {i["workflow_id"]: i for i in items}
    assert all(set(i) == ITEM_FIELDS for i in items)
    for wid, item in by_id.items():
        row = rows[wid]
        assert item["status"] == row["current_state"] and item["user"] == row["user_id"]
        assert item["rule_name"] == row["rule_name"] and item["reason"] == row["reason"]
        assert item["file"] == "f.pdf" and item["current_step"] == row["current_step"]
        assert item["created_at"] == _z(row["created_at"]) and item["updated_at"] == _z(row["updated_at"])
    assert by_id[alice[0]]["user_display"] == "Alice" and by_id[bob[0]]["user_display"] == "Bob"
    assert by_id[alice[4]]["finished_at"] == _z(finished) and by_id[alice[4]]["duration_seconds"] == 12.5
    # Still running: the time so far (the runbook's `select(.duration_seconds > 300)`).
    running = by_id[alice[1]]["duration_seconds"]
    assert 60 <= running <= 60 + (datetime.now(UTC) - now).total_seconds() + 1

    # Under read: the key's own user's workflows only, with the same paging.
    mine, _ = _pages(server, "limit=2", reader)
    assert [i["workflow_id"] for i in mine] == [w for w in expected if w in alice]
    assert {i["user"] for i in mine} == {"alice"}
    everything = _pages(server, "limit=50", OPERATOR_KEY)[0]  # API_KEY: every scope
    assert [i["workflow_id"] for i in everything] == expected

    # Filters, as the runbooks use them.
    failed = server.get("/api/v1/workflows?status=failed&limit=10", bearer(everyone))[2]["workflows"]
    assert [i["workflow_id"] for i in failed] == [alice[4], alice[6]]
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")  # date -Iseconds
    assert [i["workflow_id"] for i in failed if i["updated_at"] > hour_ago] == [alice[4]]
    sync = server.get("/api/v1/workflows?rule=sync_team_coordination", bearer(everyone))[2]["workflows"]
    assert [i["workflow_id"] for i in sync] == [bob[0]]
    assert server.get("/api/v1/workflows?rule=sync_team_coordination", bearer(reader))[2]["workflows"] == []
    recent = server.get("/api/v1/workflows?since=90m&limit=100", bearer(everyone))[2]["workflows"]
    assert {i["workflow_id"] for i in recent} == set(expected) - {alice[6]}
    iso = (now - timedelta(minutes=4, seconds=30)).isoformat().replace("+00:00", "Z")
    window = server.get(f"/api/v1/workflows?since={iso}&status=queued", bearer(everyone))[2]["workflows"]
    assert {i["workflow_id"] for i in window} == {alice[0], alice[2], alice[3]}

    # Bad parameters are problem documents naming what is wrong.
    bad_status = problem(server.get("/api/v1/workflows?status=done", bearer(reader)), 422)
    assert "status" in bad_status["detail"] and "'failed'" in bad_status["detail"], bad_status
    for query in ("limit=0", "limit=1001", "limit=x", "rule=Not%20a%20rule"):
        problem(server.get(f"/api/v1/workflows?{query}", bearer(reader)), 422)
    assert "since" in problem(server.get("/api/v1/workflows?since=yesterday", bearer(reader)), 400)["detail"]

    def forged(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    for cursor in (
        "garbage",
        forged(["not a time", alice[0]]),
        forged([now.isoformat(), 7]),
        forged([now.replace(tzinfo=None).isoformat(), alice[0]]),
        forged([now.isoformat(), "\x00"]),
        forged({"a": 1}),
        forged(["9999-12-31T23:59:59-23:00", "x"]),
        base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="),
    ):
        body = problem(server.get(f"/api/v1/workflows?cursor={cursor}", bearer(reader)), 400)
        assert "cursor" in body["detail"]
    assert (
        "cursor"
        in problem(server.get(f"/api/v1/workflows?cursor={'x' * 300}", bearer(reader)), 422)["detail"]
    )
    problem(server.get("/api/v1/workflows", bearer(submitter)), 403)
    problem(server.get("/api/v1/workflows"), 401)


def test_since_and_file_names_are_confined():
    now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-12-07", now) == datetime(2026, 12, 7, tzinfo=UTC)
    assert parse_since("2026-12-07T10:00:00+01:00", now) == now
    for bad in ("1w", "yesterday", "", "99999999999d"):
        with pytest.raises(ValueError):
            parse_since(bad, now)
    assert safe_name('../../etc/pa"ss\r\nwd.pdf', "x") == "pass wd.pdf".replace(" ", "")
    assert safe_name("C:\\Users\\me\\invoice.pdf", "x") == "invoice.pdf"
    assert safe_name("\u202egnp.pdf", "fallback.pdf") == "gnp.pdf"
    assert safe_name("..", "fallback.pdf") == "fallback.pdf"
    assert content_disposition("a.pdf") == 'attachment; filename="a.pdf"'
    assert content_disposition("ü.pdf") == "attachment; filename=\"_.pdf\"; filename*=UTF-8''%C3%BC.pdf"


def _events(store: StateStore, kind: str) -> list[dict[str, Any]]:
    return queries.list_events(store, types=[kind])


def test_document_retry_cancel_and_metrics(tmp_path, stack, harness_factory):
    h = harness_factory(stack)  # no worker yet: what is submitted stays queued
    env = services.server_env(tmp_path, stack, API_KEY=OPERATOR_KEY)
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        _document_retry_cancel_and_metrics(h, server)
    finally:
        log = server.stop()
    assert "Traceback" not in log, log


def _document_retry_cancel_and_metrics(h: Any, server: Server) -> None:
    store = h.rt.state
    alice = apikeys.create(store, "alice-reader", "alice", "read").key
    bob = apikeys.create(store, "bob-reader", "bob", "read,submit").key
    ops = apikeys.create(store, "night-ops", "ops", "operate").key
    data = pdfs.unique(1)
    wid = h.submit(data, user="alice", file_name="Rechnung März.pdf")
    doc = f"/api/v1/workflows/{wid}/document"

    assert "still queued" in problem(server.get(doc, bearer(alice)), 409)["detail"]
    metrics = server.get("/api/v1/metrics", bearer(OPERATOR_KEY))[2]["metrics"]
    assert metrics["queue_depth"]["validation"] == 1 and sum(metrics["queue_depth"].values()) == 1
    assert metrics["error_rate_5m"] == 0.0 and set(metrics["workflows_5m"].values()) == {0}

    # Cancel and retry: operate only, a reason required, the key's name as the actor.
    cancel = f"/api/v1/workflows/{wid}/cancel"
    reason = json.dumps({"reason": "stuck behind the outage"}).encode()
    json_type = {"Content-Type": "application/json"}
    problem(server.post(cancel, reason, {**bearer(alice), **json_type}), 403)
    problem(server.post(cancel, b"{}", {**bearer(ops), **json_type}), 422)
    problem(server.post(cancel, b'{"reason": "a\\u0000b"}', {**bearer(ops), **json_type}), 422)
    code, _, body = server.post(cancel, reason, {**bearer(ops), **json_type})
    assert code == 200 and body == {
        "workflow_id": wid,
        "status": "cancelled",
        "step": "validate",
        "revoked": [],
    }
    [event] = _events(store, "workflow.cancel")
    assert (
        event["payload"]["actor"] == "night-ops" and event["payload"]["reason"] == "stuck behind the outage"
    )
    assert (
        "nothing to cancel"
        in problem(server.post(cancel, reason, {**bearer(ops), **json_type}), 409)["detail"]
    )
    problem(server.post("/api/v1/workflows/no-such-id/cancel", reason, {**bearer(ops), **json_type}), 404)
    problem(server.post("/api/v1/workflows/%00/retry", reason, {**bearer(ops), **json_type}), 404)

    retry = f"/api/v1/workflows/{wid}/retry"
    answer = server.request("POST", retry, reason, {**bearer(ops), **json_type})
    assert answer[0] == 202, answer
    assert answer[2] == {
        "workflow_id": wid,
        "status": "queued",
        "from_step": "validate",
        "run": 2,
        "warning": None,
    }
    [event] = _events(store, "workflow.retry")
    assert event["payload"]["actor"] == "night-ops" and event["payload"]["previous_state"] == "cancelled"

    h.worker()
    assert h.wait([wid])[wid]["current_state"] == "success"
    assert (
        "already succeeded"
        in problem(server.post(retry, reason, {**bearer(ops), **json_type}), 409)["detail"]
    )

    # The document: streamed bytes, its hash as ETag, the detected type, a safe name.
    row = store.get_workflow(wid)
    code, ctype, body = server.get(doc, bearer(alice))
    assert (code, ctype, body) == (200, "application/pdf", data)
    import urllib.request

    request = urllib.request.Request(server.url + doc, headers=bearer(alice))
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.headers["ETag"] == f'"{row["sha256"]}"' and r.headers["Content-Length"] == str(len(data))
        assert r.headers["Content-Disposition"] == (
            "attachment; filename=\"Rechnung M_rz.pdf\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"
        )
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    not_modified = server.get(doc, {**bearer(alice), "If-None-Match": f'W/"x", "{row["sha256"]}"'})
    assert not_modified[0] == 304
    assert server.get(doc, {**bearer(alice), "If-None-Match": '"other"'})[0] == 200
    problem(server.get(doc, bearer(bob)), 404)  # another user's: as if it did not exist
    problem(server.get(doc, bearer(ops)), 403)

    # Quarantined: 409; rejected (nothing stored): 404; deleted: 404.
    infected = h.submit(pdfs.eicar_pdf(), user="bob", file_name="report.pdf")
    picture = h.submit(pdfs.png(), user="bob", file_name="photo.png")
    h.wait([infected, picture])
    quarantined = problem(server.get(f"/api/v1/workflows/{infected}/document", bearer(bob)), 409)
    assert "quarantined" in quarantined["detail"]
    rejected = problem(server.get(f"/api/v1/workflows/{picture}/document", bearer(bob)), 404)
    assert "rejected (type_not_allowed)" in rejected["detail"]
    documents.delete(h.rt, row["sha256"], "test", "deletion request")
    assert "deleted" in problem(server.get(doc, bearer(alice)), 404)["detail"]

    # Metrics: one failed run (a row as a worker ends one) beside the real ones.
    failed = new_workflow(store, sha="c" * 64, user="carol", rule_name="process_document_upload")
    _set(store, failed, current_state="failed", reason="timeout", finished_at=datetime.now(UTC))
    records.record_event(
        store, f"{failed}:end", failed, "workflow.failed", {"reason": "timeout", "duration_ms": 900}
    )
    problem(server.get("/api/v1/metrics", bearer(alice)), 403)
    code, _, body = server.get("/api/v1/metrics", bearer(OPERATOR_KEY))
    assert code == 200, body
    metrics = body["metrics"]
    assert metrics["workflows_5m"] == {
        "success": 1,
        "failed": 1,
        "rejected": 2,
        "cancelled": 1,
        "duplicate": 0,
    }
    assert metrics["error_rate_5m"] == 0.5  # failed / (success + failed)
    assert set(metrics["queue_depth"]) >= {"validation", "scan", "intake"}
    with store.tx() as conn:
        walls = [
            (aware(f) - aware(c)).total_seconds()
            for c, f in conn.execute(
                select(WS.c.created_at, WS.c.finished_at).where(WS.c.finished_at.is_not(None))
            )
        ]
        scans = [
            ms / 1000
            for ms in conn.execute(
                select(SR.c.duration_ms).where(SR.c.step == "scan", SR.c.state == "success")
            ).scalars()
        ]
    assert math.isclose(
        metrics["duration_p95_s_1h"], round(statistics.quantiles(walls, n=100, method="inclusive")[94], 3)
    )
    assert len(scans) == 1 and metrics["scan_p95_s_1h"] == round(scans[0], 3)


def test_sync_services_health_and_intake(tmp_path, stack, harness_factory):
    fake = FakeHealth().start()
    teams = {
        "check_timeout_s": 2,
        "sync_deadline_s": 20,
        "teams": [{"name": "platform"}],
        "services": [
            {"name": "ledger", "health_url": fake.url("/ok"), "team": "platform"},
            {"name": "gone", "health_url": refused_url(), "team": "platform"},
        ],
    }
    path = tmp_path / "teams.yaml"
    path.write_text(yaml.safe_dump(teams))
    h = harness_factory(stack.model_copy(update={"teams_file": path}))
    h.worker()
    env = services.server_env(tmp_path, stack, API_KEY=OPERATOR_KEY, DOX_TEAMS_FILE=str(path))
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        _sync_services_health_and_intake(h, server)
    finally:
        log = server.stop()
        fake.stop()
    assert "Traceback" not in log, log


def _sync_services_health_and_intake(h: Any, server: Server) -> None:
    store = h.rt.state
    ops = apikeys.create(store, "night-ops", "ops", "operate").key
    watcher = apikeys.create(store, "watcher", "eve", "read_all").key
    health = "/api/v1/services/health"
    assert server.get(health, bearer(watcher))[2] == {
        "workflow_id": None,
        "status": None,
        "checked_at": None,
        "services": {},
    }
    problem(server.get(health, bearer(ops)), 403)
    problem(server.post("/api/v1/coordination/sync", None, bearer(watcher)), 403)

    # As the runbook types it: a POST with no body.
    code, _, started = server.post("/api/v1/coordination/sync", None, bearer(ops))
    assert code == 202 and started["status"] == "queued" and started["slot"].startswith("manual:"), started
    wid = started["workflow_id"]
    row = h.wait([wid], timeout=60)[wid]
    assert row["current_state"] == "success" and row["user_id"] == "night-ops"

    code, _, body = server.get(health, bearer(watcher))
    assert code == 200, body
    assert body["workflow_id"] == wid and body["status"] == "success"
    assert body["checked_at"] == _z(row["finished_at"])
    assert body["services"] == row["result"]["services"]
    assert body["services"]["ledger"]["status"] == "up" and body["services"]["gone"]["status"] == "down"
    # A sync cancelled since checked nothing: the findings stay the last finished sync's.
    cancelled = new_workflow(
        store, sha=None, user="ops", rule_name="sync_team_coordination", schedule_slot="manual:x"
    )
    _set(store, cancelled, current_state="cancelled", finished_at=datetime.now(UTC))
    assert server.get(health, bearer(watcher))[2] == body
    # The runbook's sync-completion check: the newest successful runs, then the sync's id.
    listed = server.get("/api/v1/workflows?status=success&limit=5", bearer(OPERATOR_KEY))[2]["workflows"]
    assert [i["workflow_id"] for i in listed if i["rule_name"] == "sync_team_coordination"] == [wid]

    # The intake switch.
    assert server.get("/api/v1/intake", bearer(ops))[2] == {
        "paused": False,
        "since": None,
        "actor": None,
        "reason": None,
    }
    problem(server.get("/api/v1/intake", bearer(watcher)), 403)
    problem(
        server.post("/api/v1/intake/pause", b"{}", {**bearer(ops), "Content-Type": "application/json"}), 422
    )
    pause = json.dumps({"reason": "storage migration"}).encode()
    code, _, paused = server.post(
        "/api/v1/intake/pause", pause, {**bearer(ops), "Content-Type": "application/json"}
    )
    assert (
        code == 200
        and paused["paused"]
        and (paused["actor"], paused["reason"]) == ("night-ops", "storage migration")
    )
    assert server.get("/api/v1/intake", bearer(ops))[2] == paused
    # Paused again: 409 with the pause in force, unless "replace" is true.
    other = json.dumps({"reason": "another reason"}).encode()
    refused = problem(
        server.post("/api/v1/intake/pause", other, {**bearer(ops), "Content-Type": "application/json"}), 409
    )
    assert refused["intake"] == paused and "replace" in refused["detail"]
    replace = json.dumps({"reason": "storage migration", "replace": True}).encode()
    code, _, again = server.post(
        "/api/v1/intake/pause", replace, {**bearer(ops), "Content-Type": "application/json"}
    )
    assert code == 200 and again["reason"] == "storage migration" and again["since"] >= paused["since"]
    paused = again
    time.sleep(1.1)  # a submitting process reads the switch at most once a second
    with pytest.raises(SubmissionError, match="storage migration"):
        h.submit(pdfs.simple(), user="alice")
    code, _, resumed = server.post("/api/v1/intake/resume", None, bearer(ops))
    assert code == 200 and resumed == {"paused": False, "since": None, "actor": None, "reason": None}
    [event] = _events(store, "intake.resumed")
    assert event["payload"]["actor"] == "night-ops" and event["payload"]["reason"] is None


def test_list_workflows_pages_by_keyset_on_both_backends(store):
    """The read model under the API and the CLI: a user filter, and pages that neither repeat
    nor skip a row — ties on created_at included — on SQLite as on PostgreSQL."""
    now = datetime.now(UTC)
    ids = [new_workflow(store, user="alice" if i % 3 else "bob") for i in range(8)]
    for i, wid in enumerate(ids):
        _set(store, wid, created_at=now - timedelta(seconds=i // 2))  # pairs share a time
    expected = sorted(ids, key=lambda w: (now - timedelta(seconds=ids.index(w) // 2), w), reverse=True)
    seen: list[str] = []
    after = None
    while True:
        page = queries.list_workflows(store, limit=3, after=after)
        seen += [r["workflow_id"] for r in page]
        if len(page) < 3:
            break
        after = queries.Position.of(page[-1])
    assert seen == expected
    bobs = queries.list_workflows(store, user="bob", limit=100)
    assert [r["workflow_id"] for r in bobs] == [w for w in expected if ids.index(w) % 3 == 0]


def test_a_stored_definition_that_no_longer_fits_is_a_refusal():
    """A retry of a workflow whose snapshot an older DOX stored: a sentence (409 from the API,
    exit 2 from the CLI), not an internal error (Schemathesis found the 500)."""
    from dox_tasks.definitions.loader import Definition
    from dox_tasks.errors import DefinitionError

    with pytest.raises(DefinitionError, match="stored definition d: steps: required key is missing"):
        Definition.from_snapshot({"name": "x", "trigger": {"type": "api_request"}}, "stored definition d")
