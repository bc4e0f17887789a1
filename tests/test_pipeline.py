"""The document workflow end to end on Redis, PostgreSQL, clamd and a real worker."""

from __future__ import annotations

import json

import pdfs
import pytest

pytestmark = pytest.mark.integration


def test_clean_invoice_succeeds_and_is_mirrored(dox):
    doc = pdfs.fpdf_document(
        [
            "INVOICE",
            "Invoice Number: INV-77",
            "Invoice Date: 2026-01-05",
            "Subtotal: 100.00",
            "VAT: 20.00",
            "Total Due: EUR 120.00",
        ]
    )
    row = dox.run(doc, file_name="inv.pdf")
    assert row["current_state"] == "success", row
    result = row["result"]
    assert result["scan"] == "clean"
    assert result["template"] == "invoice"
    assert result["fields"]["total"] == "120.00" and result["fields"]["currency"] == "EUR"
    assert result["storage_key"].startswith("sha256/")
    assert dox.objects() == [row["sha256"]]
    steps = dox.rt.state.step_rows(row["workflow_id"])
    assert [s["step"] for s in steps] == ["validate", "scan", "store", "recognize", "publish"]
    assert all(s["state"] == "success" and s["task_id"] and s["worker_hostname"] for s in steps)
    events = dox.rt.state.events(row["workflow_id"])
    assert [e["type"] for e in events] == ["workflow.success"]


@pytest.mark.parametrize(
    ("maker", "name", "reason"),
    [
        (lambda: b"", "zero.pdf", "empty"),
        (pdfs.png, "photo.pdf", "type_mismatch"),
        (pdfs.truncated, "cut.pdf", "truncated"),
        (pdfs.malformed, "bad.pdf", "malformed"),
        (pdfs.encrypted, "locked.pdf", "encrypted"),
        (pdfs.javascript_plain, "js.pdf", "javascript"),
        (pdfs.javascript_in_object_stream, "js-objstm.pdf", "javascript"),
        (pdfs.javascript_escaped_name, "js-escaped.pdf", "javascript"),
        (pdfs.looping_page_tree, "loop.pdf", "too_complex"),
        (pdfs.compression_bomb, "bomb.pdf", "too_complex"),
    ],
)
def test_bad_documents_are_rejected_with_reason_and_nothing_stored(dox, maker, name, reason):
    row = dox.run(maker(), file_name=name)
    assert row["current_state"] == "rejected"
    assert row["reason"] == reason
    assert row["detail"]  # a sentence a person understands
    assert dox.objects() == []


def test_over_size_limit_is_rejected_too_large(stack, harness_factory):
    h = harness_factory(stack.model_copy(update={"max_file_size_mb": 0.001}))
    h.worker()
    row = h.run(pdfs.simple() + b"%" * 2000)
    assert (row["current_state"], row["reason"]) == ("rejected", "too_large")
    assert h.objects() == []


def test_text_mentioning_javascript_is_accepted(dox):
    row = dox.run(pdfs.mentions_javascript())
    assert row["current_state"] == "success"


def test_owner_password_only_pdf_is_accepted_and_flagged(dox):
    row = dox.run(pdfs.owner_only_encrypted())
    assert row["current_state"] == "success"
    validate = [s for s in dox.rt.state.step_rows(row["workflow_id"]) if s["step"] == "validate"]
    assert validate[0]["output"]["flags"] == ["owner_password"]


def test_eicar_is_rejected_infected_quarantined_and_announced(dox):
    import redis

    client = redis.Redis.from_url(dox.settings.redis)
    pubsub = client.pubsub()
    pubsub.subscribe(f"{dox.settings.namespace}.workflow.rejected")
    row = dox.run(pdfs.eicar_pdf(), file_name="report.pdf")
    assert (row["current_state"], row["reason"]) == ("rejected", "infected")
    assert row["result"]["signature"].startswith("Dox.Test.EICAR")
    assert row["result"]["scan"] == "infected"
    assert dox.objects() == []
    assert dox.rt.storage.quarantine_path(row["sha256"]).exists()
    assert not dox.rt.storage.staged_path(row["sha256"]).exists()
    scan_row = [s for s in dox.rt.state.step_rows(row["workflow_id"]) if s["step"] == "scan"][0]
    assert scan_row["output"]["engine"].startswith("ClamAV")
    # the record, the stream and the live channel
    assert [e["type"] for e in dox.rt.state.events(row["workflow_id"])] == ["workflow.rejected"]
    stream = client.xrange(f"{dox.settings.namespace}:events")
    assert any(json.loads(f[b"data"])["workflow_id"] == row["workflow_id"] for _, f in stream)
    msg = None
    for _ in range(50):
        msg = pubsub.get_message(timeout=0.1)
        if msg and msg["type"] == "message":
            break
    assert msg and json.loads(msg["data"])["payload"]["reason"] == "infected"
    # the same bytes again are refused at validate, without another scan
    again = dox.run(pdfs.eicar_pdf(), file_name="report-again.pdf")
    assert (again["current_state"], again["reason"]) == ("rejected", "infected")


def test_same_document_twice_is_a_duplicate_stored_once(dox):
    doc = pdfs.unique(1)
    first = dox.run(doc)
    second = dox.run(doc)
    assert first["current_state"] == "success"
    assert second["current_state"] == "duplicate"
    assert second["duplicate_of"] == first["workflow_id"]
    assert second["result"]["duplicate_of"] == first["workflow_id"]
    # a duplicate answers where the bytes are and what they are, like its original
    assert second["result"]["storage_key"] == first["result"]["storage_key"]
    assert second["result"]["scan"] == first["result"]["scan"] == "clean"
    assert dox.objects() == [first["sha256"]]
    # another user's copy is not a duplicate (scope: user)
    other = dox.run(doc, user="bob")
    assert other["current_state"] == "success"
    assert dox.objects() == [first["sha256"]]


def test_idempotency_key_returns_the_same_workflow(dox):
    a = dox.submit(pdfs.unique(2), idempotency_key="upload-42")
    b = dox.submit(pdfs.unique(3), idempotency_key="upload-42")
    assert a == b
    dox.wait([a])
    from sqlalchemy import text

    with dox.rt.state.engine.connect() as c:
        assert c.execute(text("select count(*) from workflow_states")).scalar() == 1


def test_rate_limit_is_exact_under_20_concurrent_submissions(stack, harness_factory):
    from concurrent.futures import ThreadPoolExecutor

    h = harness_factory(stack.model_copy(update={"rate_limit_per_user_per_day": 7}))
    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(lambda n: h.submit(pdfs.unique(100 + n), user="carol"), range(20)))
    h.worker()
    rows = h.wait(ids, timeout=120)
    states = sorted((r["current_state"], r["reason"]) for r in rows.values())
    assert states.count(("success", None)) == 7
    assert states.count(("rejected", "rate_limited")) == 13
    assert h.rt.limiter.count("carol", __import__("dox_tasks.ratelimit").ratelimit.day_key()) == 20


def test_clamd_down_retries_then_fails_scanner_unavailable(stack, harness_factory):
    import services

    dead = f"tcp://127.0.0.1:{services.free_port()}"
    h = harness_factory(stack.model_copy(update={"clamd_url": dead, "clamd_timeout_s": 1.0}))
    h.worker()
    row = h.run(pdfs.unique(4), timeout=60)
    assert (row["current_state"], row["reason"]) == ("failed", "scanner_unavailable")
    scans = [s for s in h.rt.state.step_rows(row["workflow_id"]) if s["step"] == "scan"]
    assert [s["state"] for s in scans] == ["retry", "retry", "retry", "failed"]
    assert h.objects() == []  # never stored as clean
    types = [e["type"] for e in h.rt.state.events(row["workflow_id"])]
    assert types == ["workflow.escalated", "workflow.failed"]


def test_staged_file_changed_before_store_fails_and_stores_nothing(stack, harness_factory):
    import os

    h = harness_factory(stack)
    h.worker(queues=["validation", "scan"])
    wid = h.submit(pdfs.unique(5))
    h.wait_until(lambda: h.rt.state.get_workflow(wid)["current_step"] == "store", what="scan to finish")
    h.stop_workers()
    staged = h.rt.storage.staged_path(h.rt.state.get_workflow(wid)["sha256"])
    os.chmod(staged, 0o644)
    with staged.open("ab") as fh:
        fh.write(b"% tampered\n")
    h.worker(queues=["storage", "recognition", "events"])
    row = h.wait([wid])[wid]
    assert (row["current_state"], row["reason"]) == ("failed", "internal_error")
    assert "changed on disk" in row["detail"]
    assert h.objects() == []


def test_forged_step_message_for_finished_workflow_changes_nothing(dox):
    row = dox.run(pdfs.unique(6))
    before = dox.rt.state.step_rows(row["workflow_id"])
    dox.app.send_task(
        "dox.store", args=(row["workflow_id"], "store", row["definition_hash"]), queue="storage"
    )
    dox.app.send_task("dox.validate", args=(row["workflow_id"], "validate", "f" * 64), queue="validation")
    dox.app.send_task("dox.scan", args=("no-such-workflow", "scan", row["definition_hash"]), queue="scan")
    import time

    time.sleep(1.5)
    assert dox.rt.state.step_rows(row["workflow_id"]) == before
    assert dox.rt.state.get_workflow(row["workflow_id"]) == dox.rt.state.get_workflow(row["workflow_id"])
    assert dox.rt.state.get_workflow(row["workflow_id"])["current_state"] == "success"


def test_pickle_messages_are_refused_json_accepted(stack, harness_factory, tmp_path):
    import time

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.pdf").write_bytes(pdfs.unique(7))
    h = harness_factory(stack.model_copy(update={"inbox_root": inbox}))
    h.worker(queues=["intake"])  # submissions only: the rows are what this test counts
    h.app.send_task("dox.submit", args=["a.pdf"], kwargs={"user": "mallory"}, serializer="pickle")
    time.sleep(2)
    from sqlalchemy import text

    def count() -> int:
        with h.rt.state.engine.connect() as c:
            return int(c.execute(text("select count(*) from workflow_states")).scalar())

    assert count() == 0  # the worker refused the pickle message
    h.app.send_task("dox.submit", args=["a.pdf"], kwargs={"user": "mallory"})
    h.wait_until(lambda: count() == 1, what="the JSON submission to be accepted")
