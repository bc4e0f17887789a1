"""The one terminal path every workflow takes, whatever ended it.

:func:`end_workflow` quarantines if asked, builds the per-document result, emits the
completion event (record first, then fan-out) and writes the terminal state —
first writer wins, so a workflow has exactly one terminal state even when two
deliveries race.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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
    detail: str | None = None,
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
        reason_detail=(detail if detail is not None else wf.get("detail"))
        if status != WorkflowState.SUCCESS
        else None,
        scan=scan,
        signature=merged.get("signature"),
        template=merged.get("template"),
        recognition=merged.get("recognition"),
        confidence=merged.get("confidence"),
        fields=merged.get("fields") or {},
        missing_fields=list(merged.get("missing_fields") or []),
        unreadable_reason=merged.get("unreadable_reason"),
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


@dataclass(frozen=True, slots=True)
class Ending:
    """How one workflow ends and who ends it: everything :func:`end_workflow` writes.

    The answer — ``state``, ``reason``, ``detail``, ``duplicate_of``, whether the bytes go
    to ``quarantine``, whether to ``escalate`` (a ``workflow.escalated`` event first), and
    ``extra`` fields for the result (the team sync's summary). The owner — a step's
    delivery closes its attempt in the same transaction (``close``); anyone else names the
    step it believes the workflow is at (``expect_step``); the write decides who wins.
    What the caller already read — the workflow row ``wf`` and the earlier steps'
    ``outputs`` (the runner reads both when it counts the attempt): nothing is read twice.
    """

    workflow_id: str
    state: WorkflowState
    reason: Reason | None = None
    detail: str | None = None
    duplicate_of: str | None = None
    quarantine: bool = False
    escalate: bool = False
    extra: dict[str, Any] | None = None
    close: StepClose | None = None
    expect_step: str | None = None
    wf: dict[str, Any] | None = None
    outputs: dict[str, dict[str, Any]] | None = None


def conclude(
    rt: Runtime,
    workflow_id: str,
    state: WorkflowState,
    *,
    reason: Reason | None = None,
    detail: str | None = None,
    expect_step: str | None = None,
) -> bool:
    """End a workflow from outside a step's body — an operator's cancel, the reaper, a
    poison message — if it is still at ``expect_step``: :func:`end_workflow` in short."""
    return end_workflow(rt, Ending(workflow_id, state, reason=reason, detail=detail, expect_step=expect_step))


def end_workflow(rt: Runtime, ending: Ending) -> bool:
    """End a workflow; returns False if this caller no longer owns it (nothing changes then).

    The step's last attempt, the terminal state and the completion event row are
    written in one transaction (:meth:`StateStore.conclude`); the Redis fan-out and
    the audit log follow the commit. A step that ends the workflow passes the row and
    the earlier outputs it read when its attempt was counted (steps do not change the
    row; whether it still owns the workflow is decided by the write itself).
    """
    wf = ending.wf
    if wf is None:
        wf = rt.state.get_workflow(ending.workflow_id)
        if wf["current_state"] not in ("queued", "running") and ending.close is None:
            return False
    result = _result(rt, ending, wf)
    run = wf.get("run", 1)
    payload = {**result, "detail": ending.detail, "rule_name": wf["rule_name"], "run": run}
    # Event ids are unique per run: a retried workflow that ends again gets new rows.
    events = _events(ending, records.run_prefix(ending.workflow_id, run))
    won = _commit(rt, ending, result, [(event_id, type_, payload) for event_id, type_, _ in events])
    if won:
        _after_commit(rt, ending, wf, payload, events)
    return won


def _result(rt: Runtime, ending: Ending, wf: dict[str, Any]) -> dict[str, Any]:
    """The workflow's result: the document's answer, or a scheduled job's report."""
    close = ending.close
    reason = ending.reason.value if ending.reason else None
    outputs = (
        dict(ending.outputs) if ending.outputs is not None else rt.state.step_outputs(ending.workflow_id)
    )
    if close is not None and close.output is not None and close.state in _CLOSES_WITH_OUTPUT:
        outputs[close.step] = close.output
    if wf.get("schedule_slot"):
        result = job_result(wf, outputs, status=ending.state.value, reason=reason)
    else:
        result = build_result(
            wf,
            outputs,
            status=ending.state.value,
            reason=reason,
            duplicate_of=ending.duplicate_of,
            detail=ending.detail,
        ).to_dict()
    if ending.duplicate_of:
        result.update(_from_original(rt, ending.duplicate_of))
    if ending.quarantine:
        result["quarantined"] = True
    if ending.extra:
        result.update(ending.extra)
    return result


#: A closing attempt whose output joins the result (a failed one has none to give).
_CLOSES_WITH_OUTPUT = (StepState.SUCCESS, StepState.REJECTED)


def _events(ending: Ending, prefix: str) -> list[tuple[str, str, str]]:
    """(event id, type, fan-out channel) of the events that announce this ending."""
    state = ending.state.value
    events = [(f"{prefix}:workflow.{state}", f"workflow.{state}", state)]
    if ending.escalate:
        events.insert(0, (f"{prefix}:workflow.escalated", "workflow.escalated", "escalated"))
    return events


def _commit(
    rt: Runtime, ending: Ending, result: dict[str, Any], events: list[tuple[str, str, dict[str, Any]]]
) -> bool:
    """The one terminal write (first writer wins): the only call into the store here."""
    return rt.state.conclude(
        ending.workflow_id,
        Conclusion(
            ending.state,
            reason=ending.reason.value if ending.reason else None,
            detail=ending.detail,
            duplicate_of=ending.duplicate_of,
            result=result,
            events=events,
            close=ending.close,
            expect_step=ending.expect_step,
        ),
    )


def _after_commit(
    rt: Runtime,
    ending: Ending,
    wf: dict[str, Any],
    payload: dict[str, Any],
    events: list[tuple[str, str, str]],
) -> None:
    """What only the winner does, after the commit: move or discard the bytes, fan out."""
    workflow_id, state = ending.workflow_id, ending.state
    sha = wf.get("sha256")
    if ending.quarantine and sha:
        rt.storage.quarantine(sha)  # after the commit: only the owner moves bytes
    elif sha and state not in NEEDS_STAGED_INPUT:
        _discard_staged(rt, workflow_id, sha)
    for event_id, type_, channel in events:
        rt.events.fan_out(event_id, type_, workflow_id, payload, channel)
    log.info(
        "workflow %s ended %s%s",
        workflow_id,
        state.value,
        f" ({ending.reason.value}: {ending.detail})" if ending.reason else "",
    )


def _discard_staged(rt: Runtime, workflow_id: str, sha256: str) -> None:
    """The staged copy is not needed once a workflow ended for good (success: the store
    has the bytes; duplicate or rejected: nothing will read them) — unless another
    workflow of the same bytes may still read it. Best effort: the weekly cleanup
    removes what is left."""
    try:
        rt.storage.discard_staged(sha256, lambda: rt.state.needs_staged_input(sha256, workflow_id))
    except Exception as exc:  # noqa: BLE001 - the workflow's end is recorded; disk is tidied later
        log.warning("workflow %s: staged copy not removed (the weekly cleanup will): %s", workflow_id, exc)
