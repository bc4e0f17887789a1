"""`dox documents delete` leaves no extracted field anywhere DOX copied it (issue 10, section 6).

Real worker, Postgres, Redis and clamd: the fields go to the workflow row, the step
outputs, the ``workflow.success`` event row, the execution log, the Redis stream and
(with the bytes) the documents backup. After the deletion the invoice number is in
none of them, the records (who, when, status) stay, and the output says where what went.
"""

from __future__ import annotations

import json

import pdfs
import pytest
from services import dox, server_env
from sqlalchemy import select

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.clamd, pytest.mark.integration]

SECRET = "INV-2026-0042"


def invoice(number: str) -> bytes:
    """An invoice the shipped template recognises well above its threshold."""
    lines = ["INVOICE", f"Invoice Number: {number}", "Invoice Date: 2026-01-05", "Subtotal: 1,000.00"]
    return pdfs.fpdf_document([*lines, "VAT: 250.00", "Total due: EUR 1,250.00", "Payment terms: 30 days"])


def everywhere(h, workflow_id: str) -> dict[str, str]:
    """Every copy DOX keeps of a workflow's record, as text to search."""
    from dox_tasks.db.tables import EV, SR

    with h.rt.state.tx() as conn:
        events = conn.execute(select(EV.c.type, EV.c.payload).where(EV.c.workflow_id == workflow_id)).all()
        steps = conn.execute(select(SR.c.output).where(SR.c.workflow_id == workflow_id)).all()
    stream = h.rt.redis.xrange(f"{h.rt.settings.namespace}:events")
    banks = h.rt.settings.memory_banks
    return {
        "row": json.dumps(h.rt.state.get_workflow(workflow_id)["result"]),
        "steps": json.dumps([s.output for s in steps]),
        "events": json.dumps([[e.type, e.payload] for e in events]),
        "stream": repr(stream),
        "log": "".join(p.read_text() for p in sorted(banks.glob("WORKFLOW_EXECUTION_LOG.*.jsonl"))),
    }


def test_delete_removes_the_fields_from_events_log_stream_and_backup(tmp_path, stack, harness_factory):
    h = harness_factory(stack)
    h.worker()
    env = server_env(tmp_path, stack)
    doc = h.run(invoice(SECRET))
    other = h.run(invoice("INV-2026-0777"))
    assert doc["current_state"] == other["current_state"] == "success"
    assert doc["result"]["fields"], doc["result"]  # recognised: there is something to remove
    backed = dox(["backup", "run", "--kind", "documents", "--wait", "--json"], env, tmp_path)
    assert backed.returncode == 0, backed.stderr
    copy = (
        h.rt.settings.backups
        / "documents"
        / "sha256"
        / doc["sha256"][:2]
        / doc["sha256"][2:4]
        / doc["sha256"]
    )
    assert copy.exists()
    before = everywhere(h, doc["workflow_id"])
    assert all(SECRET in text for text in before.values()), [k for k, v in before.items() if SECRET not in v]
    log_lines = len(
        [ln for ln in before["log"].splitlines() if json.loads(ln)["workflow_id"] == doc["workflow_id"]]
    )

    gone = dox(["documents", "delete", doc["sha256"], "--reason", "GDPR request 18", "--json"], env, tmp_path)
    assert gone.returncode == 0, gone.stderr
    result = json.loads(gone.stdout)

    after = everywhere(h, doc["workflow_id"])
    assert [k for k, v in after.items() if SECRET in v] == []
    assert not copy.exists() and str(copy) in result["removed"]
    assert (
        "objects/" + f"sha256/{doc['sha256'][:2]}/{doc['sha256'][2:4]}/{doc['sha256']}" in result["removed"]
    )
    assert f"{doc['workflow_id']}:workflow.success" in result["events_redacted"]
    assert sum(result["execution_log_lines_redacted"].values()) >= 1
    assert result["stream_entries_deleted"] >= 1 and result["errors"] == []
    assert "pg_dump" in result["not_redacted"]
    # No entry of the workflow is left in the stream; the other document's entries are.
    stream = [json.loads(f[b"data"]) for _, f in h.rt.redis.xrange(f"{h.rt.settings.namespace}:events")]
    assert doc["workflow_id"] not in {e["workflow_id"] for e in stream}
    assert other["workflow_id"] in {e["workflow_id"] for e in stream}
    # The log keeps every line (rewritten in place), each still one JSON object; the other
    # document's fields are untouched.
    records = [json.loads(line) for line in after["log"].splitlines()]
    assert len([r for r in records if r["workflow_id"] == doc["workflow_id"]]) == log_lines > 0
    success = [r for r in records if r["id"] == f"{doc['workflow_id']}:workflow.success"]
    assert success and all(r["payload"]["redacted"] and r["payload"]["fields"] == {} for r in success)
    assert "INV-2026-0777" in after["log"]
    # The record itself stays: who, when, how it ended.
    row = h.rt.state.get_workflow(doc["workflow_id"])
    assert (row["current_state"], row["user_id"]) == ("success", "alice")

    plain = dox(["documents", "delete", doc["sha256"], "--reason", "again"], env, tmp_path)
    assert plain.returncode == 0, plain.stderr
    for where in ("workflow_events", "execution log", "Redis event stream", "not redacted"):
        assert where in plain.stdout, plain.stdout


def test_a_part_that_fails_is_reported_and_the_rest_is_done(tmp_path, stack, harness_factory):
    """Redis down: the database, files and log are redacted, the command says what is left."""
    h = harness_factory(stack)
    h.worker()
    doc = h.run(invoice(SECRET))
    h.stop_workers()
    env = server_env(tmp_path, stack, DOX_REDIS_URL="redis://127.0.0.1:1/0")
    gone = dox(["documents", "delete", doc["sha256"], "--json"], env, tmp_path)
    assert gone.returncode == 1, (gone.stdout, gone.stderr)
    result = json.loads(gone.stdout)
    assert result["errors"] and "stream" in result["errors"][0]
    after = everywhere(h, doc["workflow_id"])
    assert SECRET in after["stream"] and SECRET not in after["events"] + after["log"] + after["row"]
