"""The registered DOX step tasks a definition may name, and the queue each runs on.

Definitions are validated against this table without importing Celery, so
``dox defs validate`` is fast and a typo in ``task:`` is caught before any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    name: str
    queue: str
    summary: str
    params: frozenset[str] = frozenset()  # the step's `params:` keys it understands


STEP_TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo(
            "dox.validate",
            "validation",
            "rate limit, size, type, PDF structure, hash/duplicates",
            frozenset({"rate_limit_per_day", "max_file_size", "allowed_types"}),
        ),
        TaskInfo("dox.scan", "scan", "ClamAV INSTREAM scan; infected documents go to quarantine"),
        TaskInfo("dox.store", "storage", "promote the staged bytes into the content-addressed store"),
        TaskInfo(
            "dox.recognize",
            "recognition",
            "extract text and match templates, typed fields",
            frozenset({"max_pages"}),
        ),
        TaskInfo("dox.publish", "events", "completion event: row, Redis stream, pub/sub, JSONL log"),
        TaskInfo("dox.noop", "validation", "does nothing (benchmarks of orchestration overhead)"),
        # Scheduled operations (workflow_defs/*.yaml with a schedule trigger).
        TaskInfo("dox.jobs.sync", "operations", "team coordination sync: chord of health checks → banks"),
        TaskInfo("dox.jobs.reap", "operations", "explain and re-drive stuck workflows (reaper)"),
        TaskInfo("dox.jobs.backup_database", "operations", "pg_dump in one snapshot, verified, retained"),
        TaskInfo("dox.jobs.backup_config", "operations", "tar.gz of workflow_defs/ and the memory banks"),
        TaskInfo("dox.jobs.backup_documents", "operations", "copy stored objects the backup lacks"),
        TaskInfo(
            "dox.jobs.maintenance", "operations", "vacuum, retention, cleanup, freshclam, re-scan, disk"
        ),
        TaskInfo("dox.jobs.retention", "operations", "delete finished workflows and files past retention"),
    )
}

#: The seed's ``action:`` values are accepted as aliases of these tasks.
ALIASES: dict[str, str] = {
    "validate": "dox.validate",
    "file_validation": "dox.validate",
    "scan": "dox.scan",
    "virus_scan": "dox.scan",
    "store": "dox.store",
    "file_storage": "dox.store",
    "recognize": "dox.recognize",
    "template_recognition": "dox.recognize",
    "publish": "dox.publish",
    "publish_event": "dox.publish",
    "noop": "dox.noop",
}


def resolve(task: str) -> TaskInfo | None:
    return STEP_TASKS.get(ALIASES.get(task, task))
