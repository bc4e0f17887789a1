"""Backups on real Postgres: made by the schedule, verified, restored with the recorded counts."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta

import pdfs
import pytest
from services import ROOT, create_database, dox, drop_database, server_env
from sqlalchemy import text

from dox_tasks.db import records
from dox_tasks.jobs import backup
from dox_tasks.jobs.beat import DoxScheduler

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.integration]


def test_a_scheduled_backup_restores_into_a_scratch_database_with_the_recorded_counts(
    stack, harness_factory, tmp_path
):
    # Only the document workflow and the nightly database backup: Beat at 02:00 on a
    # Sunday would otherwise also start the weekly maintenance and catch up the sync.
    defs = tmp_path / "defs"
    defs.mkdir()
    for name in ("process_document_upload.yaml", "backup_database.yaml"):
        shutil.copy(ROOT / "workflow_defs" / name, defs / name)
    shutil.copytree(ROOT / "workflow_defs" / "templates", defs / "templates")
    h = harness_factory(stack.model_copy(update={"defs_dir": defs}))
    h.worker()
    ids = [h.submit(pdfs.unique(500 + n)) for n in range(3)]
    h.wait(ids, 60)
    # Beat at 02:00:05 UTC today (a controlled clock, no waiting for 2 AM).
    two_am = datetime.now(UTC).replace(hour=2, minute=0, second=5, microsecond=0)
    scheduler = DoxScheduler(h.app, clock=lambda: two_am)
    try:
        scheduler.tick()
    finally:
        scheduler.close()
    slot = two_am.strftime("%Y-%m-%dT02:00:00Z")
    wid = h.rt.state.run_for_slot("backup_database", slot)
    assert wid is not None
    row = h.wait([wid], 180)[wid]
    assert row["current_state"] == "success", row["detail"]
    result = row["result"]
    assert result["job"] == "backup_database" and result["slot"] == slot
    assert result["verified"] == "restore"  # the first backup gets the weekly full check
    counts = result["row_counts"]
    assert counts["workflow_states"] >= 4 and counts["workflow_step_results"] >= 15
    (recorded,) = [b for b in records.backups(h.rt.state, "database") if b["workflow_id"] == wid]
    assert recorded["status"] == "ok" and recorded["row_counts"] == counts

    # An operator restores it (CLI only) into a new database: the counts match the record.
    scratch_url = create_database(prefix="dox_restore")
    scratch = scratch_url.rsplit("/", 1)[1]
    drop_database(scratch_url)  # restore creates it: it must not exist
    env = server_env(tmp_path, stack, DOX_HOME=str(stack.home), DOX_DEFS_DIR=str(defs))
    try:
        restore = [
            "backup",
            "restore",
            result["backup"],
            "--into",
            scratch,
            "--actor",
            "ops-cara",
            "--reason",
            "drill",
        ]
        done = dox(restore, env, tmp_path)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["row_counts"] == report["recorded_row_counts"] == counts
        with h.rt.state.tx() as conn:
            (action,) = conn.execute(
                text("SELECT payload FROM workflow_events WHERE type = 'backup.restore'")
            ).all()
        assert (action[0]["actor"], action[0]["reason"], action[0]["into"]) == ("ops-cara", "drill", scratch)
        again = dox(["backup", "restore", result["backup"], "--into", scratch], env, tmp_path)
        assert again.returncode == 2 and "already exists" in again.stderr
    finally:
        drop_database(scratch_url)


def test_a_damaged_archive_fails_verification(stack, harness_factory, tmp_path):
    harness_factory(stack)  # creates the DOX tables the dump counts
    archive = backup.dump_database(stack.db_url, tmp_path / "b", datetime.now(UTC))
    backup.verify_readback(archive.path, stack.db_url)
    data = bytearray(archive.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.path.write_bytes(bytes(data))
    with pytest.raises(backup.BackupError, match="checksum mismatch"):
        backup.verify_readback(archive.path, stack.db_url)
    env = server_env(tmp_path, stack)
    done = dox(["backup", "verify", str(archive.path)], env, tmp_path)
    assert done.returncode == 2 and "checksum mismatch" in done.stderr


def test_retention_removes_only_old_archives(tmp_path):
    folder = tmp_path / "database"
    folder.mkdir()
    now = datetime.now(UTC)
    old = folder / "dox_x_old.dump"
    new = folder / "dox_x_new.dump"
    for p in (old, new):
        p.write_bytes(b"x")
        (folder / f"{p.name}.sha256").write_text("x")
    stamp = (now - timedelta(days=31)).timestamp()
    os.utime(old, (stamp, stamp))
    assert backup.expire(folder, 30, now) == [old]
    assert sorted(p.name for p in folder.iterdir()) == ["dox_x_new.dump", "dox_x_new.dump.sha256"]


def test_document_backup_is_incremental(stack, harness_factory, tmp_path):
    h = harness_factory(stack)
    h.worker()
    h.wait([h.submit(pdfs.unique(600)), h.submit(pdfs.unique(601))], 60)
    target = tmp_path / "docs"
    assert backup.copy_new_documents(h.rt.storage, target)["copied"] == 2
    h.wait([h.submit(pdfs.unique(602))], 60)
    second = backup.copy_new_documents(h.rt.storage, target)
    assert (second["copied"], second["already_backed_up"]) == (1, 2)


def test_a_failed_backup_is_a_failed_workflow_an_alert_and_a_row(
    stack, harness_factory, tmp_path, monkeypatch
):
    defs = tmp_path / "defs"
    defs.mkdir()
    text = (ROOT / "workflow_defs" / "backup_database.yaml").read_text()
    (defs / "backup_database.yaml").write_text(
        text.replace("retry: {attempts: 2, backoff: 2, delay: 60}", "retry: {attempts: 0}")
    )
    h = harness_factory(stack.model_copy(update={"defs_dir": defs}))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no pg_dump on this worker
    h.worker()
    from dox_tasks.jobs.launch import run_now

    wid = run_now(h.rt, "backup_database", actor="test").workflow_id
    row = h.wait([wid], 60)[wid]
    assert row["current_state"] == "failed" and "pg_dump is not installed" in row["detail"]
    assert "workflow.escalated" in {e["type"] for e in h.rt.state.events(wid)}
    (failed,) = records.backups(h.rt.state, "database")
    assert failed["status"] == "failed" and "pg_dump" in failed["detail"]
