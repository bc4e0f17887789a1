"""Weekly maintenance and daily retention on real Postgres, storage and clamd."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta

import pdfs
import pytest
from services import Clamd
from sqlalchemy import text, update

from dox_tasks.db.tables import WS
from dox_tasks.jobs import maintenance
from dox_tasks.jobs.launch import run_now
from dox_tasks.runtime import Runtime

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.clamd, pytest.mark.integration]


def age(path, seconds_ago: float) -> None:  # type: ignore[no-untyped-def]
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))


def test_weekly_maintenance_reports_what_it_did_and_keeps_stored_documents(stack, harness_factory):
    h = harness_factory(stack.model_copy(update={"freshclam_timeout_s": 3}))
    h.worker()
    old, kept = h.run(pdfs.unique(700)), h.run(pdfs.unique(701))
    with h.rt.state.tx() as conn:  # the first finished 100 days ago
        conn.execute(
            update(WS)
            .where(WS.c.workflow_id == old["workflow_id"])
            .values(finished_at=datetime.now(UTC) - timedelta(days=100))
        )
    store = h.rt.storage
    quarantined = store.quarantine_path("a" * 64)
    quarantined.parent.mkdir(parents=True, exist_ok=True)
    quarantined.write_bytes(b"old infected bytes")
    age(quarantined, 40 * 86400)
    orphan = store.staged_path("b" * 64)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"staged, never submitted")
    age(orphan, 2 * 86400)
    leftover = store.tmp / "promote-dead"
    leftover.write_bytes(b"x")
    age(leftover, 2 * 86400)

    wid = run_now(h.rt, "maintenance_weekly", actor="test").workflow_id
    row = h.wait([wid], 120)[wid]
    assert row["current_state"] == "success", row["detail"]
    r = row["result"]
    assert r["vacuumed"] == [
        "workflow_definitions",
        "workflow_states",
        "workflow_step_results",
        "workflow_events",
        "backups",
        "metric_totals",
        "api_keys",
        "beat_starts",
    ]
    assert (r["workflows_deleted"], r["quarantine_purged"], r["staging_removed"], r["tmp_removed"]) == (
        1,
        1,
        1,
        1,
    )
    # Offline here: freshclam fails (or is missing), and says so instead of failing the run.
    assert r["freshclam"] == "ok" or r["freshclam"].startswith(("failed", "skipped")), r["freshclam"]
    assert r["signature_version"] and r["rescanned"] == 2 and r["now_infected"] == []
    assert isinstance(r["disk_free_pct"], float) and r["disk_low"] is False
    assert h.rt.state.status_of([old["workflow_id"], kept["workflow_id"]]) == {kept["workflow_id"]: "success"}
    assert len(h.objects()) == 2  # stored documents are never cleaned up
    # The next run sees the same signatures: no re-scan.
    again = run_now(h.rt, "maintenance_weekly", actor="test").workflow_id
    assert h.wait([again], 120)[again]["result"]["rescan"] == "skipped: signatures unchanged"


def test_rescan_with_new_signatures_quarantines_a_stored_document(stack, harness_factory, tmp_path):
    h = harness_factory(stack)
    h.worker()
    data = pdfs.unique(702)
    row = h.run(data)
    assert row["current_state"] == "success"
    sha = row["sha256"]
    newer = Clamd(tmp_path / "clamd-new")
    db = tmp_path / "clamd-new" / "db"
    db.mkdir(parents=True)
    (db / "new.hdb").write_text(f"{hashlib.md5(data).hexdigest()}:{len(data)}:Dox.Test.NewSignature\n")  # noqa: S324
    newer.start()
    try:
        rt = Runtime(stack.model_copy(update={"clamd_url": newer.url}))
        report = maintenance.rescan(rt, previous_version="ClamAV 0.1/1/older")
        assert [i["sha256"] for i in report["now_infected"]] == [sha]
        assert "Dox.Test.NewSignature" in report["now_infected"][0]["signature"]
        assert not rt.storage.object_path(sha).exists() and rt.storage.quarantine_path(sha).exists()
        with rt.state.tx() as conn:
            events = conn.execute(
                text("SELECT payload FROM workflow_events WHERE type = 'document.quarantined'")
            ).all()
        assert len(events) == 1
        rt.close()
    finally:
        newer.stop()


def test_retention_cleanup_prunes_rows_and_logs(stack, harness_factory):
    h = harness_factory(stack.model_copy(update={"retention_days": 10}))
    h.worker()
    done = h.run(pdfs.unique(703))
    with h.rt.state.tx() as conn:
        conn.execute(
            update(WS)
            .where(WS.c.workflow_id == done["workflow_id"])
            .values(finished_at=datetime.now(UTC) - timedelta(days=11))
        )
    logs = h.rt.settings.memory_banks
    (logs / "WORKFLOW_EXECUTION_LOG.2020-01-01.jsonl").write_text("{}\n")
    wid = run_now(h.rt, "retention_cleanup", actor="test").workflow_id
    r = h.wait([wid], 60)[wid]["result"]
    assert (r["workflows_deleted"], r["execution_logs_removed"], r["retention_days"]) == (1, 1, 10)
    assert h.rt.state.events(done["workflow_id"]) == []
