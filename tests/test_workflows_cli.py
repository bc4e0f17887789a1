"""`dox workflows list | show` against a real worker's records."""

from __future__ import annotations

import json

import pdfs
import pytest
from services import dox, server_env

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.clamd, pytest.mark.integration]


def test_list_filters_and_show_tells_the_whole_story(tmp_path, stack, harness_factory):
    h = harness_factory(stack)
    h.worker()
    good = h.run(pdfs.unique(900))
    bad = h.run(pdfs.truncated())
    env = server_env(tmp_path, stack)

    listed = dox(["workflows", "list", "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["workflow_id"] for r in rows] == [bad["workflow_id"], good["workflow_id"]]  # newest first
    rejected = dox(["workflows", "list", "--status", "rejected", "--json"], env, tmp_path)
    (only,) = [json.loads(line) for line in rejected.stdout.splitlines()]
    assert (only["workflow_id"], only["reason"]) == (bad["workflow_id"], "truncated")
    none = dox(["workflows", "list", "--rule", "backup_database", "--json"], env, tmp_path)
    assert none.stdout == ""
    wrong = dox(["workflows", "list", "--since", "yesterday"], env, tmp_path)
    assert wrong.returncode == 2 and "30m, 24h, 7d" in wrong.stderr and "Traceback" not in wrong.stderr

    shown = dox(["workflows", "show", good["workflow_id"], "--json"], env, tmp_path)
    story = json.loads(shown.stdout)
    assert [s["step"] for s in story["steps"]] == ["validate", "scan", "store", "recognize", "publish"]
    assert all(s["state"] == "success" and s["duration_ms"] is not None for s in story["steps"])
    assert "workflow.success" in [e["type"] for e in story["events"]]
    table = dox(["workflows", "show", good["workflow_id"]], {**env, "COLUMNS": "200"}, tmp_path)
    assert table.returncode == 0 and "publish" in table.stdout
    missing = dox(["workflows", "show", "no-such-id"], env, tmp_path)
    assert missing.returncode == 2 and "no workflow with id" in missing.stderr


def test_intake_pause_refuses_new_work_with_a_reason_and_resume_reopens(tmp_path, stack, harness_factory):
    from dox_tasks.errors import SubmissionError

    h = harness_factory(stack)
    h.worker()
    env = server_env(tmp_path, stack)
    (tmp_path / "a.pdf").write_bytes(pdfs.unique(910))
    paused = dox(
        ["intake", "pause", "--actor", "ops-anna", "--reason", "db migration", "--json"], env, tmp_path
    )
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    # Paused again: the first pause (who, why, since when) is kept unless --replace.
    again = dox(["intake", "pause", "--actor", "ops-ben", "--reason", "other"], env, tmp_path)
    assert again.returncode == 0 and "already paused" in again.stderr, again.stderr
    assert "ops-anna" in again.stdout and "db migration" in again.stdout and "other" not in again.stdout
    replaced = dox(
        ["intake", "pause", "--actor", "ops-ben", "--reason", "longer migration", "--replace", "--json"],
        env,
        tmp_path,
    )
    assert json.loads(replaced.stdout)["reason"] == "longer migration"
    back = dox(
        ["intake", "pause", "--actor", "ops-anna", "--reason", "db migration", "--replace"], env, tmp_path
    )
    assert back.returncode == 0
    refused = dox(["submit", str(tmp_path / "a.pdf")], env, tmp_path)
    assert refused.returncode == 2
    assert "intake is paused" in refused.stderr and "by ops-anna: db migration" in refused.stderr
    import time

    time.sleep(1.1)  # the submitting process caches the switch for up to a second
    with pytest.raises(SubmissionError, match="intake is paused"):
        h.submit(pdfs.unique(911))
    status = dox(["intake", "status"], env, tmp_path)
    assert "PAUSED" in status.stdout
    resumed = dox(["intake", "resume", "--actor", "ops-anna", "--reason", "done"], env, tmp_path)
    assert resumed.returncode == 0 and "open" in resumed.stdout
    time.sleep(1.1)
    assert h.run(pdfs.unique(912))["current_state"] == "success"
    from sqlalchemy import text

    with h.rt.state.tx() as conn:
        actions = conn.execute(
            text("SELECT type, payload FROM workflow_events WHERE type LIKE 'intake.%' ORDER BY created_at")
        ).all()
    # The kept second pause recorded nothing; the two replacements did.
    assert [a[0] for a in actions] == ["intake.paused"] * 3 + ["intake.resumed"]
    assert actions[0][1]["actor"] == "ops-anna" and actions[0][1]["reason"] == "db migration"
    assert actions[1][1]["actor"] == "ops-ben" and actions[1][1]["reason"] == "longer migration"


def test_cancel_stops_a_queued_workflow_and_its_steps_do_nothing(tmp_path, stack, harness_factory):
    h = harness_factory(stack)
    h.worker(queues=["operations"])  # nothing consumes validation yet: the workflow waits
    wid = h.submit(pdfs.unique(920))
    env = server_env(tmp_path, stack)
    done = dox(
        ["workflows", "cancel", wid, "--actor", "ops-ben", "--reason", "wrong file", "--json"], env, tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "cancelled"
    h.stop_workers()
    h.worker()  # the step message is delivered now, and finds the workflow cancelled
    queue = f"{stack.broker_key_prefix}validation"
    h.wait_until(lambda: h.rt.redis.llen(queue) == 0, 10, "the step message to be taken")
    import time

    time.sleep(1)  # the worker runs the delivery: begin_step refuses it, nothing is recorded
    row = h.rt.state.get_workflow(wid)
    assert (row["current_state"], row["reason"]) == ("cancelled", "cancelled")
    assert row["detail"] == "cancelled by ops-ben: wrong file"
    assert not any(r["state"] == "success" for r in h.rt.state.step_rows(wid))
    types = [e["type"] for e in h.rt.state.events(wid)]
    assert "workflow.cancelled" in types and "workflow.cancel" in types
    again = dox(["workflows", "cancel", wid], env, tmp_path)
    assert again.returncode == 2 and "already ended cancelled" in again.stderr


def test_daily_report_counts_rates_and_reasons(tmp_path, stack, harness_factory):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from dox_tasks.db.tables import WS

    h = harness_factory(stack.model_copy(update={"rate_limit_per_user_per_day": 4}))
    h.worker()
    rows = [h.run(pdfs.unique(930 + n)) for n in range(3)] + [
        h.run(pdfs.truncated()),
        h.run(pdfs.unique(940)),
    ]
    assert [r["current_state"] for r in rows] == ["success", "success", "success", "rejected", "rejected"]
    yesterday = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=1)
    h.backdate([r["workflow_id"] for r in rows], yesterday, 4)
    with h.rt.state.tx() as conn:
        # One of the successes turned out a fault (as if its scan had failed after retries).
        conn.execute(
            update(WS)
            .where(WS.c.workflow_id == rows[2]["workflow_id"])
            .values(current_state="failed", reason="scanner_unavailable")
        )
    done = dox(["report", "daily", "--format", "json"], server_env(tmp_path, stack), tmp_path)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert (r["total"], r["success"], r["failed"], r["rejected"]) == (5, 2, 1, 2)
    assert r["success_rate"] == 0.6667 and r["success_rate_met"] is False
    assert r["p95_duration_s"] == 4.0 and r["p95_duration_met"] is True
    assert r["p95_scan_s"] is not None and r["p95_scan_met"] is True
    assert r["top_failure_reasons"] == [["scanner_unavailable", 1]]
    assert sorted(map(tuple, r["top_rejection_reasons"])) == [("rate_limited", 1), ("truncated", 1)]
    assert r["rate_limit_hits"] == 1 and r["infected"] == 0
    csv_out = dox(["report", "daily", "--format", "csv"], server_env(tmp_path, stack), tmp_path)
    assert csv_out.stdout.splitlines()[0] == "metric,value" and "success_rate,0.6667" in csv_out.stdout
    table = dox(["report", "weekly"], {**server_env(tmp_path, stack), "COLUMNS": "200"}, tmp_path)
    assert table.returncode == 0 and "success rate 66.7% (target 95%): missed" in table.stdout


def test_quarantine_list_release_purge_and_document_deletion(tmp_path, stack, harness_factory):
    h = harness_factory(stack)
    h.worker()
    env = server_env(tmp_path, stack)
    infected = h.run(pdfs.eicar_pdf())
    assert infected["reason"] == "infected"
    listed = [json.loads(x) for x in dox(["quarantine", "list", "--json"], env, tmp_path).stdout.splitlines()]
    assert [(i["sha256"], i["reason"]) for i in listed] == [(infected["sha256"], "infected")]
    assert "EICAR" in listed[0]["signature"]
    released = dox(["quarantine", "release", infected["sha256"], "--reason", "false positive"], env, tmp_path)
    assert released.returncode == 0 and h.rt.storage.object_path(infected["sha256"]).exists()
    assert dox(["quarantine", "list", "--json"], env, tmp_path).stdout == ""
    purged = dox(["quarantine", "purge", "--older-than", "0s"], env, tmp_path)
    assert "purged 0" in purged.stdout

    stored = h.run(pdfs.fpdf_document(["INVOICE", "Invoice Number: INV-2026-0042", "Total: 1,250.00 EUR"]))
    assert stored["current_state"] == "success"
    from sqlalchemy import update

    from dox_tasks.db.store import NewWorkflow
    from dox_tasks.db.tables import WS

    # A second copy still in flight: deleting now would race its later steps.
    pending, _ = h.rt.state.create_workflow(
        NewWorkflow(
            rule_name="process_document_upload",
            definition_hash=h.rt.definitions["process_document_upload"].digest,
            definition_version="1.0.0",
            first_step="validate",
            user="u2",
            file_name="again.pdf",
            sha256=stored["sha256"],
            size=stored["size"],
        )
    )
    delete = ["documents", "delete", stored["sha256"], "--reason", "GDPR request 17", "--json"]
    refused = dox(delete, env, tmp_path)
    assert (
        refused.returncode == 2 and f"workflow {pending} of this document is still queued" in refused.stderr
    )
    assert "Traceback" not in refused.stderr and h.rt.storage.object_path(stored["sha256"]).exists()
    with h.rt.state.tx() as conn:
        conn.execute(update(WS).where(WS.c.workflow_id == pending).values(current_state="cancelled"))
    gone = dox(delete, env, tmp_path)
    result = json.loads(gone.stdout)
    assert sorted(result["workflows_redacted"]) == sorted([stored["workflow_id"], pending])
    assert not h.rt.storage.object_path(stored["sha256"]).exists()
    row = h.rt.state.get_workflow(stored["workflow_id"])
    assert row["current_state"] == "success" and row["result"]["redacted"] is True
    assert row["result"]["fields"] == {} and row["result"]["storage_key"] is None
    assert all(
        r["output"] == {"redacted": True}
        for r in h.rt.state.step_rows(stored["workflow_id"])
        if r["step"] == "recognize"
    )
    from sqlalchemy import text

    with h.rt.state.tx() as conn:
        actions = [
            r[0] for r in conn.execute(text("SELECT type FROM workflow_events WHERE id LIKE 'operator:%'"))
        ]
    assert sorted(actions) == ["document.delete", "quarantine.purge", "quarantine.release"]
