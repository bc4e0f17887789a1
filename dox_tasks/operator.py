"""Operator actions on workflows: cancel, retry (a new run) and the bulk-retry candidates.

Each action is recorded as an event row saying who did what, and why
(:func:`dox_tasks.audit.record_action`). The intake switch is :mod:`dox_tasks.intake_switch`.
"""

from __future__ import annotations

import uuid
from typing import Any

from .audit import actor_or_default, record_action
from .contract import LIVE_STATES, RETRYABLE_STATES, Reason, StepState, WorkflowState
from .db import queries
from .errors import DoxError, SubmissionError
from .finish import conclude
from .intake import send
from .runtime import Runtime


def cancel(rt: Runtime, app: Any, workflow_id: str, actor: str | None, reason: str | None) -> dict[str, Any]:
    """End a live workflow ``cancelled`` and revoke the step message it is waiting on.

    The terminal write is the usual first-writer-wins transition, so a step that
    finishes at the same moment either wins (the workflow ended anyway) or finds the
    workflow cancelled and stops; steps not yet started see ``cancelled`` and do nothing.
    """
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


#: Ended states an operator may retry: faults and cancellations. A rejection is an
#: answer about the document and a success is done; neither is re-run.
RETRYABLE = {s.value for s in RETRYABLE_STATES}
_NOT_RETRYABLE = {
    "queued": "is still queued: nothing to retry (cancel it first if it is stuck)",
    "running": "is still running: nothing to retry (cancel it first if it is stuck)",
    "success": "already succeeded",
    "duplicate": "already ended duplicate (the document was processed by another workflow)",
    "rejected": "was rejected ({reason}): that is an answer about the document, not a fault;"
    " submit the document again once the cause is gone",
}


def failed_step(rt: Runtime, wf: dict[str, Any]) -> str:
    """The first step, in definition order, whose latest attempt (in any run) did not succeed.

    Latest, not any: a step that succeeded in run 1 but failed in run 2 is where run 2
    stopped; a step never attempted since an earlier success keeps that success.
    """
    definition = rt.snapshot(wf["definition_hash"])
    latest: dict[str, str] = {}
    for r in rt.state.step_rows(wf["workflow_id"]):  # in insertion order: the last one wins
        latest[r["step"]] = r["state"]
    for step in definition.ordered_steps():
        if latest.get(step.name) != StepState.SUCCESS.value:
            return step.name
    raise DoxError(f"workflow {wf['workflow_id']}: every step succeeded; nothing to retry from")


def retry(
    rt: Runtime,
    workflow_id: str,
    from_failed: bool,
    actor: str | None,
    reason: str | None,
) -> dict[str, Any]:
    """Start a new run of a failed or cancelled workflow with its own stored definition.

    From the start, or with ``from_failed`` from the first step that never
    succeeded, reusing the earlier steps' recorded outputs (so ``validate`` is not
    re-run after a scan outage). The staged input must still exist. The reopening and
    its ``workflow.retry`` event commit together; then the chain is sent, and if the
    broker refuses it the workflow stays queued for the reaper to re-send.
    """
    wf = rt.state.get_workflow(workflow_id)
    state = wf["current_state"]
    if state not in RETRYABLE:
        why = _NOT_RETRYABLE.get(state, f"is {state}").format(reason=wf["reason"])
        raise DoxError(f"workflow {workflow_id} {why}; not retried")
    if wf["schedule_slot"]:
        raise DoxError(
            f"workflow {workflow_id} is a run of the scheduled job {wf['rule_name']}; start a new"
            f" run instead: dox jobs run {wf['rule_name']}"
        )
    definition = rt.snapshot(wf["definition_hash"])
    step = failed_step(rt, wf) if from_failed else definition.ordered_steps()[0].name
    if wf["sha256"] and not rt.storage.staged_path(wf["sha256"]).exists():
        raise DoxError(
            f"workflow {workflow_id}: its staged input {wf['sha256'][:12]}… no longer exists"
            " (cleaned up by maintenance); submit the document again"
        )
    event = (
        f"operator:workflow.retry:{uuid.uuid4().hex}",
        "workflow.retry",
        {
            "action": "workflow.retry",
            "actor": actor_or_default(actor),
            "reason": reason,
            "from_step": step,
            "previous_state": state,
            "previous_reason": wf["reason"],
        },
    )
    reopened = rt.state.reopen(workflow_id, RETRYABLE, step, event, hold_s=rt.settings.workflow_timeout)
    if reopened is None:
        raise DoxError(f"workflow {workflow_id} changed while retrying (retried by someone else?)")
    rt.events.fan_out(event[0], event[1], workflow_id, {**event[2], "run": reopened["run"]}, event[1])
    result = {"workflow_id": workflow_id, "status": "queued", "from_step": step, "run": reopened["run"]}
    try:
        send(rt, wf["rule_name"], workflow_id, start_at=step, run=reopened["run"])
    except SubmissionError as exc:  # recorded queued: the reaper re-sends it
        result["warning"] = str(exc)
    return result


def retryable_since(rt: Runtime, cutoff: Any, status: str, rule: str | None = None) -> list[dict[str, Any]]:
    """Workflows in ``status`` that ended at or after ``cutoff``, oldest first."""
    return queries.ended_since(rt.state, cutoff, status, rule)
