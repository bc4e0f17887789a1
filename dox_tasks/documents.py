"""Operator actions on stored bytes: the quarantine and deletion requests.

``release`` moves a quarantined document into the object store (an operator
judged the detection false); the rejected workflow's record stays as it was.
``purge`` deletes quarantined files past an age. ``delete`` removes a stored
document everywhere (objects, staging, quarantine, the documents backup) and
redacts the fields DOX extracted from it wherever DOX copied them (the workflow
row, step outputs, event rows, the execution log, the Redis event stream),
keeping each workflow's record (who, when, status) — what a deletion request
needs. Each is an operator event with actor and reason.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from .audit import record_action
from .db import queries
from .db.redaction import redact_document
from .errors import DoxError, TransientError
from .runtime import Runtime
from .storage import document_copy, storage_key

REDACTED = {"redacted": True}
#: What DOX extracted from (or says about where it keeps) a document's content; a
#: deletion clears these everywhere and keeps the rest (who, when, status, reason).
EXTRACTED = ("fields", "template", "confidence", "storage_key")
#: Steps whose whole output is the document's content.
CONTENT_STEPS = ("recognize", "store")
#: Copies DOX cannot edit: they age out with DOX_BACKUP_RETENTION_DAYS.
NOT_REDACTED = (
    "database backups (pg_dump archives) and config backups (which include the execution log)"
    " made before this deletion keep the fields until they expire (DOX_BACKUP_RETENTION_DAYS);"
    " consumers that already read an event keep their copy"
)


def quarantined(rt: Runtime) -> list[dict[str, Any]]:
    items = []
    paths = sorted(rt.storage.quarantine_dir.glob("sha256/*"))
    workflows = queries.latest_workflows_of(rt.state, [p.name for p in paths])
    for path in paths:
        wf = workflows.get(path.name)
        st = path.stat()
        items.append(
            {
                "sha256": path.name,
                "size": st.st_size,
                "quarantined_at": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(),
                "workflow_id": wf["workflow_id"] if wf else None,
                "reason": wf["reason"] if wf else None,
                "signature": (wf["result"] or {}).get("signature") if wf else None,
            }
        )
    return items


def release(rt: Runtime, sha256: str, actor: str | None, reason: str | None) -> str:
    source = rt.storage.quarantine_path(sha256)
    if not source.exists():
        raise DoxError(f"{sha256}: not in quarantine (see `dox quarantine list`)")
    target = rt.storage.object_path(sha256)
    rt.storage.make_dirs(target.parent)
    with contextlib.suppress(FileExistsError):
        os.link(source, target)
    source.unlink()
    record_action(rt, "quarantine.release", actor, reason, None, sha256=sha256)
    return storage_key(sha256)


def purge(rt: Runtime, older_than: timedelta, actor: str | None, reason: str | None) -> list[str]:
    gone = rt.storage.purge_quarantine((datetime.now(UTC) - older_than).timestamp())
    record_action(
        rt, "quarantine.purge", actor, reason, None, sha256=gone, older_than_s=older_than.total_seconds()
    )
    return gone


def redact_extracted(data: dict[str, Any]) -> dict[str, Any] | None:
    """``data`` (a result or an event payload) with the extracted values cleared and
    ``redacted: true``; None when it carries none of them (nothing to change)."""
    if not any(data.get(k) not in (None, {}) for k in EXTRACTED):
        return None
    return {**data, "fields": {}, "template": None, "confidence": None, "storage_key": None, "redacted": True}


def delete(rt: Runtime, sha256: str, actor: str | None, reason: str | None) -> dict[str, Any]:
    """Remove the bytes everywhere and redact what was extracted; keep the records.

    Refused while a workflow of this document is still queued or running: its later
    steps would store the bytes again or record fresh extracted fields. The database
    part (check and redaction) is one transaction and comes first, so a failure later
    (a file, Redis) leaves nothing extracted in Postgres, and running the command
    again finishes the job: every part is idempotent. The result says what was
    removed where; a part that could not be done is in ``errors`` (non-empty: run it again).
    """
    storage_key(sha256)  # a clear error for anything that is not a SHA-256
    db = redact_document(rt.state, sha256, redact_extracted, CONTENT_STEPS, REDACTED)
    ids = db.workflows
    removed = []
    backups = rt.settings.backups / "documents"
    for path, base in (
        (rt.storage.object_path(sha256), rt.storage.root),
        (rt.storage.staged_path(sha256), rt.storage.root),
        (rt.storage.quarantine_path(sha256), rt.storage.root),
        (document_copy(backups, sha256), rt.settings.backups),
    ):
        if path.exists():
            path.unlink()
            removed.append(str(path.relative_to(base)) if base == rt.storage.root else str(path))
    if not removed and not ids:
        raise DoxError(f"{sha256}: no stored document or workflow has this SHA-256")
    errors: list[str] = []
    log_lines: dict[str, int] = {}
    try:
        log_lines = rt.events.execution_log.redact(ids, redact_extracted)
    except OSError as exc:
        errors.append(f"execution log: {exc}")
    stream = 0
    try:
        stream = rt.events.fanout.forget(ids)
    except TransientError as exc:
        errors.append(str(exc))
    result = {
        "sha256": sha256,
        "removed": removed,
        "workflows_redacted": ids,
        "step_outputs_redacted": db.step_outputs,
        "events_redacted": db.events,
        "execution_log_lines_redacted": log_lines,
        "stream_entries_deleted": stream,
        "not_redacted": NOT_REDACTED,
        "errors": errors,
    }
    record_action(
        rt,
        "document.delete",
        actor,
        reason,
        None,
        **{k: v for k, v in result.items() if k != "not_redacted"},
    )
    return result
