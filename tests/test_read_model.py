"""The read model and the operator writes of ``dox_tasks.db``, on SQLite and PostgreSQL:
plain dicts out, DOX's exceptions for database errors, a deletion's check and
redaction in one locked transaction."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import services
from sqlalchemy import select, update
from stores import new_workflow

from dox_tasks.db import queries, records
from dox_tasks.db.redaction import redact_document
from dox_tasks.db.store import StateStore, open_store
from dox_tasks.db.tables import EV, WS
from dox_tasks.documents import CONTENT_STEPS, REDACTED, redact_extracted
from dox_tasks.errors import DocumentInUse, StateStoreError, StateStoreUnavailable, UnknownWorkflow

SHA = "a" * 64


def end(store: StateStore, wid: str, state: str = "success", **values) -> None:
    with store.tx() as conn:
        conn.execute(
            update(WS)
            .where(WS.c.workflow_id == wid)
            .values(current_state=state, finished_at=datetime.now(UTC), **values)
        )


def test_lists_and_details_are_plain_dicts(store):
    wid = new_workflow(store)
    assert records.record_event(store, f"{wid}:note", wid, "note", {"n": 1})
    assert not records.record_event(store, f"{wid}:note", wid, "note", {"n": 2})  # idempotent by id
    listed = queries.list_workflows(store, status="queued", since=datetime.now(UTC) - timedelta(hours=1))
    assert [r["workflow_id"] for r in listed] == [wid] and type(listed[0]) is dict
    assert queries.list_workflows(store, status="success") == []
    detail = queries.workflow_detail(store, wid)
    assert detail.workflow["sha256"] == SHA and detail.steps == []
    assert [e["type"] for e in detail.events] == ["note"]
    assert [e["id"] for e in queries.list_events(store, types=["note"], newest_first=True)] == [f"{wid}:note"]
    with pytest.raises(UnknownWorkflow):
        queries.workflow_detail(store, "nope")
    end(store, wid, "failed", reason="timeout")
    ended = queries.ended_since(store, datetime.now(UTC) - timedelta(minutes=1), "failed")
    assert [(e["workflow_id"], e["reason"]) for e in ended] == [(wid, "timeout")]
    assert queries.latest_workflows_of(store, [SHA, "b" * 64]) == {
        SHA: {"workflow_id": wid, "reason": "timeout", "detail": None, "result": None}
    }
    queries.ping(store)


def test_deletion_is_refused_while_a_workflow_is_live_then_redacts(store):
    wid = new_workflow(store)
    with pytest.raises(DocumentInUse, match="still queued"):
        redact_document(store, SHA, redact_extracted, CONTENT_STEPS, REDACTED)
    end(store, wid, result={"fields": {"total": "1"}, "template": "t", "status": "success"})
    records.record_event(store, f"{wid}:workflow.success", wid, "workflow.success", {"fields": {"x": 1}})
    done = redact_document(store, SHA, redact_extracted, CONTENT_STEPS, REDACTED)
    assert (done.workflows, done.events) == ([wid], [f"{wid}:workflow.success"])
    result = store.get_workflow(wid)["result"]
    assert result["fields"] == {} and result["redacted"] is True and result["status"] == "success"


def test_the_liveness_check_is_inside_the_redactions_transaction(tmp_path):
    """A workflow that goes live while the deletion waits for its row is seen live: the
    check reads the row under the lock the redaction holds to its commit."""
    url = services.create_database()
    store = open_store(url)
    try:
        store.migrate()
        wid = new_workflow(store)
        end(store, wid, result={"fields": {"total": "1"}})
        outcome: list[object] = []
        with store.engine.connect() as other, other.begin():
            other.execute(select(WS.c.workflow_id).where(WS.c.workflow_id == wid).with_for_update())

            def delete() -> None:
                try:
                    outcome.append(redact_document(store, SHA, redact_extracted, CONTENT_STEPS, REDACTED))
                except DocumentInUse as exc:
                    outcome.append(exc)

            worker = threading.Thread(target=delete)
            worker.start()
            time.sleep(0.5)
            assert worker.is_alive()  # waiting for the row
            other.execute(update(WS).where(WS.c.workflow_id == wid).values(current_state="running"))
        worker.join(10)
        assert isinstance(outcome[0], DocumentInUse), outcome
        assert store.get_workflow(wid)["result"] == {"fields": {"total": "1"}}  # nothing redacted
    finally:
        store.close()
        services.drop_database(url)


def test_database_errors_arrive_as_doxs_own(pg_url):
    down = open_store("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StateStoreUnavailable):
        queries.list_workflows(down)
    with pytest.raises(StateStoreUnavailable):
        queries.ping(down)
    down.close()
    unmigrated = open_store(pg_url)  # reachable, but no tables: a refusal, not an outage
    try:
        with pytest.raises(StateStoreError, match="workflow_states"):
            queries.list_workflows(unmigrated)
        with pytest.raises(StateStoreError):
            records.backups(unmigrated)
    finally:
        unmigrated.close()


def test_event_rows_touch_their_workflow(store):
    wid = new_workflow(store)
    before = store.get_workflow(wid)["updated_at"]
    time.sleep(0.01)
    records.record_event(store, f"{wid}:x", wid, "x", {})
    assert store.get_workflow(wid)["updated_at"] > before
    with store.tx() as conn:
        assert conn.execute(select(EV.c.type).where(EV.c.id == f"{wid}:x")).scalar_one() == "x"
    assert records.count_events(store, wid, "x") == 1
