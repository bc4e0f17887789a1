"""Operator actions: each one a ``workflow_events`` row saying who did what, and why.

The intake switch lives here too: ``dox intake pause`` records ``intake.paused``,
``resume`` records ``intake.resumed``, and the latest of the two is the state — in
Postgres, so a Redis flush cannot silently reopen a paused intake. Submitting
processes read it at most once a second.
"""

from __future__ import annotations

import getpass
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from .contract import LIVE_STATES, Reason, WorkflowState
from .db.store import EV, aware
from .errors import DoxError, SubmissionError
from .jobs import records
from .runtime import Runtime

PAUSED, RESUMED = "intake.paused", "intake.resumed"
CACHE_S = 1.0


def actor_or_default(actor: str | None) -> str:
    return actor or getpass.getuser()


def record_action(
    rt: Runtime,
    action: str,
    actor: str | None,
    reason: str | None,
    workflow_id: str | None = None,
    **extra: Any,
) -> str:
    event_id = f"operator:{action}:{uuid.uuid4().hex}"
    payload = {"action": action, "actor": actor_or_default(actor), "reason": reason, **extra}
    records.emit(rt, event_id, workflow_id, action, payload)
    return event_id


@dataclass(frozen=True)
class IntakeState:
    paused: bool
    since: str | None = None
    actor: str | None = None
    reason: str | None = None


def intake_state(rt: Runtime) -> IntakeState:
    with rt.state.tx() as conn:
        row = conn.execute(
            select(EV.c.type, EV.c.payload, EV.c.created_at)
            .where(EV.c.type.in_([PAUSED, RESUMED]))
            .order_by(EV.c.created_at.desc())
            .limit(1)
        ).first()
    if row is None or row.type == RESUMED:
        return IntakeState(False)
    payload = dict(row.payload or {})
    return IntakeState(True, aware(row.created_at).isoformat(), payload.get("actor"), payload.get("reason"))


_cache: dict[str, tuple[float, IntakeState]] = {}
_lock = threading.Lock()


def refuse_if_paused(rt: Runtime) -> None:
    """Raise a clear :class:`SubmissionError` while the intake is paused (cached ≤ 1 s)."""
    key = rt.settings.db_url
    with _lock:
        hit = _cache.get(key)
    if hit is None or time.monotonic() - hit[0] > CACHE_S:
        hit = (time.monotonic(), intake_state(rt))
        with _lock:
            _cache[key] = hit
    state = hit[1]
    if state.paused:
        why = f": {state.reason}" if state.reason else ""
        raise SubmissionError(
            f"intake is paused (since {state.since}, by {state.actor}{why}); nothing was queued."
            " Work already in flight continues. `dox intake resume` reopens it."
        )


def set_paused(rt: Runtime, paused: bool, actor: str | None, reason: str | None) -> IntakeState:
    record_action(rt, PAUSED if paused else RESUMED, actor, reason)
    with _lock:
        _cache.pop(rt.settings.db_url, None)
    return intake_state(rt)


def cancel(rt: Runtime, app: Any, workflow_id: str, actor: str | None, reason: str | None) -> dict[str, Any]:
    """End a live workflow ``cancelled`` and revoke the step message it is waiting on.

    The terminal write is the usual first-writer-wins transition, so a step that
    finishes at the same moment either wins (the workflow ended anyway) or finds the
    workflow cancelled and stops; steps not yet started see ``cancelled`` and do nothing.
    """
    from .finish import conclude

    who = actor_or_default(actor)
    detail = f"cancelled by {who}" + (f": {reason}" if reason else "")
    for _ in range(3):  # the workflow may move to its next step while we look
        wf = rt.state.get_workflow(workflow_id)
        if wf["current_state"] not in LIVE_STATES:
            raise DoxError(f"workflow {workflow_id} already ended {wf['current_state']}: nothing to cancel")
        step = wf["current_step"]
        revoked = [
            r["task_id"] for r in rt.state.step_rows(workflow_id) if r["step"] == step and r["task_id"]
        ]
        if conclude(
            rt, workflow_id, WorkflowState.CANCELLED, reason=Reason.CANCELLED, detail=detail, expect_step=step
        ):
            if revoked:
                app.control.revoke(revoked)
            record_action(rt, "workflow.cancel", actor, reason, workflow_id, step=step, revoked=revoked)
            return {"workflow_id": workflow_id, "status": "cancelled", "step": step, "revoked": revoked}
    raise DoxError(f"workflow {workflow_id} kept moving; try again")
