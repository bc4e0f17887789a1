"""The scheduled jobs as plain step functions ``(StepContext) -> Outcome``.

They run under the same runner as document steps: attempts counted before the
body, retries with backoff, ``on_failure`` after the retries, one terminal
transition. An exception here is a fault (retried, then the workflow fails and,
with ``on_failure: escalate``, a ``workflow.escalated`` event is the alert).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from celery import current_task

from ..app import app
from ..db import records
from ..db.store import aware
from ..runtime import Runtime
from ..steps.base import Outcome, StepContext, complete
from . import backup, maintenance
from .reaper import inspect_workers, reap

#: A full restore check runs when none succeeded within this long (weekly by default).
RESTORE_CHECK_EVERY = timedelta(days=7)


def reap_stuck_workflows(ctx: StepContext) -> Outcome:
    me = current_task.request.hostname if current_task else None
    workers = inspect_workers(app, me, set(app.amqp.queues.consume_from or app.amqp.queues))
    findings = reap(ctx.rt, app, datetime.now(UTC), workers, exclude=ctx.workflow_id)
    by_cause: dict[str, int] = {}
    for f in findings:
        by_cause[f.cause.value] = by_cause.get(f.cause.value, 0) + 1
    return complete(stuck=len(findings), causes=by_cause, findings=[asdict(f) for f in findings][:100])


def backup_database(ctx: StepContext) -> Outcome:
    rt = ctx.rt
    s = rt.settings
    now = datetime.now(UTC)
    try:
        archive = backup.dump_database(s.db_url, s.backups / "database", now)
    except backup.BackupError as exc:
        records.add_backup(
            rt.state, kind="database", workflow_id=ctx.workflow_id, path="", status="failed", detail=str(exc)
        )
        raise
    backup_id = records.add_backup(
        rt.state,
        kind="database",
        workflow_id=ctx.workflow_id,
        path=str(archive.path),
        sha256=archive.sha256,
        size=archive.size,
        row_counts=archive.row_counts,
        status="unverified",
        created_at=now,
    )
    verified = "readback"
    try:
        backup.verify_readback(archive.path, s.db_url)
        if _restore_check_due(rt, now):
            backup.verify_by_restore(archive.path, s.db_url)
            verified = "restore"
    except backup.BackupError as exc:
        records.update_backup(rt.state, backup_id, status="failed", detail=str(exc))
        raise
    records.update_backup(rt.state, backup_id, status="ok", verified=verified, verified_at=datetime.now(UTC))
    expired = len(backup.expire(s.backups / "database", s.backup_retention_days, now))
    return complete(
        backup=str(archive.path),
        sha256=archive.sha256,
        size=archive.size,
        row_counts=archive.row_counts,
        verified=verified,
        expired=expired,
    )


def _restore_check_due(rt: Runtime, now: datetime) -> bool:
    for row in records.backups(rt.state, "database", limit=200):
        if row["verified"] == "restore" and row["verified_at"] is not None:
            return now - aware(row["verified_at"]) >= RESTORE_CHECK_EVERY
    return True


def backup_config(ctx: StepContext) -> Outcome:
    rt = ctx.rt
    s = rt.settings
    now = datetime.now(UTC)
    archive = backup.archive_config(s.definitions, s.memory_banks, s.backups / "config", now)
    backup.verify_readback(archive.path, s.db_url)
    records.add_backup(
        rt.state,
        kind="config",
        workflow_id=ctx.workflow_id,
        path=str(archive.path),
        sha256=archive.sha256,
        size=archive.size,
        status="ok",
        verified="readback",
        verified_at=datetime.now(UTC),
        created_at=now,
    )
    expired = len(backup.expire(s.backups / "config", s.backup_retention_days, now))
    return complete(backup=str(archive.path), sha256=archive.sha256, size=archive.size, expired=expired)


def backup_documents(ctx: StepContext) -> Outcome:
    rt = ctx.rt
    folder = rt.settings.backups / "documents"
    counts = backup.copy_new_documents(rt.storage, folder)
    records.add_backup(
        rt.state,
        kind="documents",
        workflow_id=ctx.workflow_id,
        path=str(folder),
        size=counts["copied_bytes"],
        status="ok",
        verified="hash",
        verified_at=datetime.now(UTC),
        detail=f"{counts['copied']} new, {counts['already_backed_up']} already there",
    )
    return complete(**counts)


def maintenance_weekly(ctx: StepContext) -> Outcome:
    rt = ctx.rt
    now = datetime.now(UTC)
    report: dict[str, object] = {}
    report.update(maintenance.vacuum_analyze(rt))
    report.update(maintenance.expire_workflows(rt, now))
    report.update(maintenance.purge_quarantine(rt, now))
    report.update(maintenance.clean_staging(rt))
    report.update(maintenance.freshclam(rt.settings.freshclam_timeout_s))
    previous = records.last_success(rt.state, "maintenance_weekly", exclude=ctx.workflow_id)
    report.update(maintenance.rescan(rt, previous.get("signature_version")))
    report.update(maintenance.disk_check(rt, now))
    return complete(**report)


def retention_cleanup(ctx: StepContext) -> Outcome:
    rt = ctx.rt
    now = datetime.now(UTC)
    report: dict[str, object] = {}
    report.update(maintenance.expire_workflows(rt, now))
    report.update(maintenance.purge_quarantine(rt, now))
    logs = maintenance.prune_execution_logs(rt.settings.memory_banks, rt.settings.retention_days, now)
    report["execution_logs_removed"] = logs
    return complete(**report)
