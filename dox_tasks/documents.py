"""Operator actions on stored bytes: the quarantine and deletion requests.

``release`` moves a quarantined document into the object store (an operator
judged the detection false); the rejected workflow's record stays as it was.
``purge`` deletes quarantined files past an age. ``delete`` removes a stored
document everywhere (objects, staging, quarantine) and redacts the fields DOX
extracted from it, keeping each workflow's record (who, when, status) — what a
deletion request needs. Each is an operator event with actor and reason.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from .db.store import SR, WS
from .errors import DoxError
from .operator import record_action
from .runtime import Runtime
from .storage import storage_key

REDACTED = {"redacted": True}


def quarantined(rt: Runtime) -> list[dict[str, Any]]:
    items = []
    for path in sorted(rt.storage.quarantine_dir.glob("sha256/*")):
        with rt.state.tx() as conn:
            wf = conn.execute(
                select(WS.c.workflow_id, WS.c.reason, WS.c.detail, WS.c.result)
                .where(WS.c.sha256 == path.name)
                .order_by(WS.c.created_at.desc())
                .limit(1)
            ).first()
        st = path.stat()
        items.append(
            {
                "sha256": path.name,
                "size": st.st_size,
                "quarantined_at": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(),
                "workflow_id": wf.workflow_id if wf else None,
                "reason": wf.reason if wf else None,
                "signature": (wf.result or {}).get("signature") if wf else None,
            }
        )
    return items


def release(rt: Runtime, sha256: str, actor: str | None, reason: str | None) -> str:
    source = rt.storage.quarantine_path(sha256)
    if not source.exists():
        raise DoxError(f"{sha256}: not in quarantine (see `dox quarantine list`)")
    target = rt.storage.object_path(sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
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


def delete(rt: Runtime, sha256: str, actor: str | None, reason: str | None) -> dict[str, Any]:
    """Remove the bytes everywhere and redact what was extracted; keep the records.

    Refused while a workflow of this document is still queued or running: its later
    steps would store the bytes again or record fresh extracted fields.
    """
    with rt.state.tx() as conn:
        live = conn.execute(
            select(WS.c.workflow_id, WS.c.current_state).where(
                WS.c.sha256 == sha256, WS.c.current_state.in_(["queued", "running"])
            )
        ).first()
    if live is not None:
        raise DoxError(
            f"workflow {live.workflow_id} of this document is still {live.current_state}: wait for it"
            f" to end or `dox workflows cancel {live.workflow_id}` first; nothing was deleted"
        )
    removed = []
    for path in (
        rt.storage.object_path(sha256),
        rt.storage.staged_path(sha256),
        rt.storage.quarantine_path(sha256),
    ):
        if path.exists():
            path.unlink()
            removed.append(str(path.relative_to(rt.storage.root)))
    with rt.state.tx() as conn:
        rows = conn.execute(select(WS.c.workflow_id, WS.c.result).where(WS.c.sha256 == sha256)).all()
        for row in rows:
            result = dict(row.result or {})
            if result:
                result.update(fields={}, template=None, confidence=None, storage_key=None, redacted=True)
            conn.execute(update(WS).where(WS.c.workflow_id == row.workflow_id).values(result=result or None))
            conn.execute(
                update(SR)
                .where(SR.c.workflow_id == row.workflow_id, SR.c.step.in_(["recognize", "store"]))
                .values(output=REDACTED)
            )
    ids = [r.workflow_id for r in rows]
    if not removed and not ids:
        raise DoxError(f"{sha256}: no stored document or workflow has this SHA-256")
    record_action(rt, "document.delete", actor, reason, None, sha256=sha256, removed=removed, workflows=ids)
    return {"sha256": sha256, "removed": removed, "workflows_redacted": ids}
