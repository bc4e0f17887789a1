"""The one terminal path every workflow takes, whatever ended it.

:func:`conclude` quarantines if asked, builds the per-document result, emits the
completion event (record first, then fan-out) and writes the terminal state —
first writer wins, so a workflow has exactly one terminal state even when two
deliveries race.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from .contract import NEEDS_STAGED_INPUT, DocumentResult, Reason, StepState, WorkflowState
from .db import records
from .db.store import Conclusion, StepClose, aware
from .runtime import Runtime

log = logging.getLogger(__name__)


def build_result(
    wf: dict[str, Any],
    outputs: dict[str, dict[str, Any]],
    *,
    status: str | None = None,
    reason: str | None = None,
    duplicate_of: str | None = None,
) -> DocumentResult:
    """The per-document result (contract) from the workflow row and its step outputs."""
    merged: dict[str, Any] = {}
    for out in outputs.values():
        merged.update(out)
    end = aware(wf["finished_at"]) if wf.get("finished_at") else datetime.now(UTC)
    status = status or wf["current_state"]
    scan = merged.get("scan")
    if scan is None and status == WorkflowState.SUCCESS:
        scan = "skipped"
    return DocumentResult(
        file=wf.get("file_name"),
        workflow_id=wf["workflow_id"],
        status=status,
        reason=reason if reason is not None else wf.get("reason"),
        scan=scan,
        signature=merged.get("signature"),
        template=merged.get("template"),
        recognition=merged.get("recognition"),
        confidence=merged.get("confidence"),
        fields=merged.get("fields") or {},
        pages=merged.get("pages"),
        flags=list(merged.get("flags") or []),
        sha256=wf.get("sha256"),
        size=wf.get("size"),
        storage_key=merged.get("storage_key"),
        duplicate_of=duplicate_of or wf.get("duplicate_of"),
        duration_ms=int((end - run_start(wf)).total_seconds() * 1000),
        user=wf.get("user_id"),
        user_display=wf.get("user_display") or wf.get("user_id"),
    )


def run_start(wf: dict[str, Any]) -> datetime:
    """When the current run began: the submission, or the operator's retry (run 2, 3, …)."""
    return aware(wf.get("run_started_at") or wf["created_at"])


def job_result(
    wf: dict[str, Any], outputs: dict[str, dict[str, Any]], *, status: str, reason: str | None
) -> dict[str, Any]:
    """A scheduled run's result: which job and slot, how it ended, and what its steps reported."""
    end = aware(wf["finished_at"]) if wf.get("finished_at") else datetime.now(UTC)
    merged: dict[str, Any] = {}
    for out in outputs.values():
        merged.update({k: v for k, v in out.items() if not k.startswith("_")})  # _keys: internal
    return {
        **merged,
        "workflow_id": wf["workflow_id"],
        "job": wf["rule_name"],
        "slot": wf["schedule_slot"],
        "status": status,
        "reason": reason,
        "duration_ms": int((end - run_start(wf)).total_seconds() * 1000),
    }


#: What a duplicate inherits from its original: where the bytes are and what they are.
_INHERITED = (
    "scan",
    "signature",
    "template",
    "recognition",
    "confidence",
    "fields",
    "pages",
    "flags",
    "storage_key",
)


def _from_original(rt: Runtime, original_id: str) -> dict[str, Any]:
    """A duplicate answers like its original did, once the original has finished."""
    try:
        original = rt.state.get_workflow(original_id)
    except Exception:  # noqa: BLE001 - best effort: the duplicate's own answer stands
        return {}
    done = original.get("result") or {}
    if original["current_state"] != WorkflowState.SUCCESS.value:
        return {}
    return {k: done[k] for k in _INHERITED if done.get(k) is not None}


def conclude(
    rt: Runtime,
    workflow_id: str,
    state: WorkflowState,
    *,
    reason: Reason | None = None,
    detail: str | None = None,
    duplicate_of: str | None = None,
    quarantine: bool = False,
    escalate: bool = False,
    close: StepClose | None = None,
    expect_step: str | None = None,
    extra: dict[str, Any] | None = None,
    wf: dict[str, Any] | None = None,
    outputs: dict[str, dict[str, Any]] | None = None,
) -> bool:
    """End a workflow; returns False if this caller no longer owns it (nothing changes then).

    The step's last attempt, the terminal state and the completion event row are
    written in one transaction (:meth:`StateStore.conclude`); the Redis fan-out and
    the audit log follow the commit. A step that ends the workflow passes the row and
    the earlier outputs it read when its attempt was counted (steps do not change the
    row; whether it still owns the workflow is decided by the write itself).
    """
    if wf is None:
        wf = rt.state.get_workflow(workflow_id)
        if wf["current_state"] not in ("queued", "running") and close is None:
            return False
    reason_value = reason.value if reason else None
    outputs = dict(outputs) if outputs is not None else rt.state.step_outputs(workflow_id)
    if (
        close is not None
        and close.output is not None
        and close.state in (StepState.SUCCESS, StepState.REJECTED)
    ):
        outputs[close.step] = close.output
    if wf.get("schedule_slot"):
        result = job_result(wf, outputs, status=state.value, reason=reason_value)
    else:
        result = build_result(
            wf, outputs, status=state.value, reason=reason_value, duplicate_of=duplicate_of
        ).to_dict()
    if duplicate_of:
        result.update(_from_original(rt, duplicate_of))
    if quarantine:
        result["quarantined"] = True
    if extra:
        result.update(extra)
    payload = {**result, "detail": detail, "rule_name": wf["rule_name"]}
    # Event ids are unique per run: a retried workflow that ends again gets new rows.
    prefix = records.run_prefix(workflow_id, wf.get("run", 1))
    payload["run"] = wf.get("run", 1)
    events = [(f"{prefix}:workflow.{state.value}", f"workflow.{state.value}", state.value)]
    if escalate:
        events.insert(0, (f"{prefix}:workflow.escalated", "workflow.escalated", "escalated"))
    won = rt.state.conclude(
        workflow_id,
        Conclusion(
            state,
            reason=reason_value,
            detail=detail,
            duplicate_of=duplicate_of,
            result=result,
            events=[(event_id, type_, payload) for event_id, type_, _ in events],
            close=close,
            expect_step=expect_step,
        ),
    )
    if won:
        sha = wf.get("sha256")
        if quarantine and sha:
            rt.storage.quarantine(sha)  # after the commit: only the owner moves bytes
        elif sha and state not in NEEDS_STAGED_INPUT:
            _discard_staged(rt, workflow_id, sha)
        for event_id, type_, channel in events:
            rt.events.fan_out(event_id, type_, workflow_id, payload, channel)
        log.info(
            "workflow %s ended %s%s",
            workflow_id,
            state.value,
            f" ({reason_value}: {detail})" if reason_value else "",
        )
    return won


def _discard_staged(rt: Runtime, workflow_id: str, sha256: str) -> None:
    """The staged copy is not needed once a workflow ended for good (success: the store
    has the bytes; duplicate or rejected: nothing will read them) — unless another
    workflow of the same bytes may still read it. Best effort: the weekly cleanup
    removes what is left."""
    try:
        rt.storage.discard_staged(sha256, lambda: rt.state.needs_staged_input(sha256, workflow_id))
    except Exception as exc:  # noqa: BLE001 - the workflow's end is recorded; disk is tidied later
        log.warning("workflow %s: staged copy not removed (the weekly cleanup will): %s", workflow_id, exc)
