"""The StateStore on SQLite (embedded mode): each transition as SQLAlchemy statements.

The engine opens every transaction with ``BEGIN IMMEDIATE`` (:mod:`.engine`), so a
transition holds the database's write lock from its first read: that is what
``SELECT … FOR UPDATE`` does on PostgreSQL. The logic mirrors the PL/pgSQL functions
of :mod:`.postgres`; ``tests/test_state_store.py`` runs one contract against both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update

from ..contract import StepState, WorkflowState
from .base import (
    IS_LIVE,
    LIVE,
    SEL_WF,
    Conclusion,
    StateStore,
    StepClose,
    StepDelivery,
    StepStart,
    aware,
    clip_traceback,
    now,
)
from .tables import EV, SR, WS, insert_ignore

_SEL_STARTED_ATTEMPTS = select(SR.c.attempt, SR.c.run, SR.c.state, SR.c.started_at, SR.c.task_id).where(
    SR.c.workflow_id == bindparam("b_wid"), SR.c.step == bindparam("b_step")
)
_MARK_LOST = (
    update(SR)
    .where(
        SR.c.workflow_id == bindparam("b_wid"),
        SR.c.step == bindparam("b_step"),
        SR.c.state == StepState.RUNNING.value,
    )
    .values(
        state=StepState.LOST.value,
        finished_at=bindparam("b_ts"),
        error="worker lost (message redelivered)",
    )
)
_INSERT_ATTEMPT = insert(SR)
_SET_RUNNING = (
    update(WS)
    .where(WS.c.workflow_id == bindparam("b_wid"))
    .values(current_state=WorkflowState.RUNNING.value, updated_at=bindparam("b_ts"))
)
_ADVANCE = (
    update(WS)
    .where(WS.c.workflow_id == bindparam("b_wid"), WS.c.current_step == bindparam("b_step"), IS_LIVE)
    .values(current_step=bindparam("b_next"), updated_at=bindparam("b_ts"))
)
_CLOSE_ATTEMPT = (
    update(SR)
    .where(
        SR.c.workflow_id == bindparam("b_wid"),
        SR.c.step == bindparam("b_step"),
        SR.c.attempt == bindparam("b_attempt"),
    )
    .values(
        state=bindparam("b_state"),
        finished_at=bindparam("b_ts"),
        duration_ms=bindparam("b_duration"),
        output=bindparam("b_output", type_=SR.c.output.type),
        error=bindparam("b_error"),
        traceback=bindparam("b_traceback"),
    )
)
_SEL_STARTED = select(SR.c.started_at).where(
    SR.c.workflow_id == bindparam("b_wid"),
    SR.c.step == bindparam("b_step"),
    SR.c.attempt == bindparam("b_attempt"),
)
#: This step's earlier attempts (rows of ``_SEL_STARTED_ATTEMPTS``).
Attempts = Sequence[Row[Any, Any, Any, Any, Any]]
_ANSWERS = (StepState.SUCCESS, StepState.REJECTED)  # the outcomes that move the workflow on


class SQLiteStateStore(StateStore):
    """:meth:`reopen`, the reads and the definitions are the shared ones (:mod:`.base`)."""

    def _insert_workflow(self, values: dict[str, Any]) -> bool:
        with self.tx() as conn:
            return insert_ignore(conn, WS, values)

    # -- count a delivery ---------------------------------------------------------------
    def begin_step(self, delivery: StepDelivery) -> StepStart:
        d = delivery
        with self.tx() as conn:
            found = conn.execute(SEL_WF, {"b_wid": d.workflow_id}).mappings().first()
            if found is None:
                return StepStart(False, why="unknown workflow (forged message?)")
            wf = dict(found)
            refused = _refuse_message(wf, d.expect)
            if refused is not None:
                return refused
            previous = conn.execute(_SEL_STARTED_ATTEMPTS, {"b_wid": d.workflow_id, "b_step": d.step}).all()
            ts = now()
            refused = _refuse_stale(wf, d, previous) or _busy(previous, d.hold_s, ts)
            if refused is not None:
                return refused
            start = self._count(conn, d, wf, previous, ts)
        if start.run and d.with_outputs:
            return replace(start, outputs=self.step_outputs(d.workflow_id))
        return start

    @staticmethod
    def _count(
        conn: Connection, d: StepDelivery, wf: dict[str, Any], previous: Attempts, ts: datetime
    ) -> StepStart:
        """Insert this delivery's attempt (``failed`` when it is one delivery too many)."""
        keys = {"b_wid": d.workflow_id, "b_step": d.step}
        if any(r.state == StepState.RUNNING.value for r in previous):
            # An attempt still marked running belongs to a worker that died holding it.
            conn.execute(_MARK_LOST, {**keys, "b_ts": ts})
        attempt = max((r.attempt for r in previous), default=0) + 1
        # The budget counts this run's deliveries only: an operator retry starts afresh.
        in_run = sum(1 for r in previous if r.run == wf["run"]) + 1
        poison = in_run > d.max_deliveries
        why = f"delivered {in_run} times (limit {d.max_deliveries})" if poison else ""
        conn.execute(
            _INSERT_ATTEMPT,
            {
                "workflow_id": d.workflow_id,
                "step": d.step,
                "attempt": attempt,
                "run": wf["run"],
                "task_id": d.task_id,
                "worker_hostname": d.hostname,
                "started_at": ts,
                "state": (StepState.FAILED if poison else StepState.RUNNING).value,
                "finished_at": ts if poison else None,
                "error": why or None,
            },
        )
        if poison:
            return StepStart(False, attempt=attempt, poison=True, why=why, workflow=wf, try_no=in_run)
        if wf["current_state"] != WorkflowState.RUNNING.value:
            conn.execute(_SET_RUNNING, {"b_wid": d.workflow_id, "b_ts": ts})
            wf["current_state"] = WorkflowState.RUNNING.value
        return StepStart(True, attempt=attempt, workflow=wf, started_at=ts, try_no=in_run)

    # -- close an attempt ---------------------------------------------------------------
    def finish_step(self, workflow_id: str, close: StepClose, next_step: str | None = None) -> bool:
        ts = now()
        keys = {"b_wid": workflow_id, "b_step": close.step}
        with self.tx() as conn:
            started = (
                close.started_at or conn.execute(_SEL_STARTED, {**keys, "b_attempt": close.attempt}).scalar()
            )
            final_state = close.state
            if close.state in _ANSWERS:
                moved = conn.execute(_ADVANCE, {**keys, "b_next": next_step, "b_ts": ts}).rowcount
                if not moved:
                    final_state = StepState.SUPERSEDED
            conn.execute(_CLOSE_ATTEMPT, _close_params(workflow_id, close, final_state, ts, started))
        return final_state is close.state

    # -- end the workflow ---------------------------------------------------------------
    def conclude(self, workflow_id: str, end: Conclusion) -> bool:
        ts = now()
        with self.tx() as conn:
            q = update(WS).where(WS.c.workflow_id == workflow_id, IS_LIVE)
            if end.step is not None:
                q = q.where(WS.c.current_step == end.step)
            won = conn.execute(
                q.values(
                    current_state=end.state.value,
                    current_step=None,
                    reason=end.reason,
                    detail=end.detail,
                    duplicate_of=end.duplicate_of,
                    result=end.result,
                    updated_at=ts,
                    finished_at=ts,
                )
            ).rowcount
            close = end.close
            if close is not None:
                state = close.state if won else StepState.SUPERSEDED
                conn.execute(_CLOSE_ATTEMPT, _close_params(workflow_id, close, state, ts, close.started_at))
            if won:
                for event_id, type_, payload in end.events:
                    insert_ignore(
                        conn,
                        EV,
                        dict(
                            id=event_id, workflow_id=workflow_id, type=type_, payload=payload, created_at=ts
                        ),
                    )
        return bool(won)


def _refuse_message(wf: dict[str, Any], expect: tuple[str, int]) -> StepStart | None:
    """A message is a request: it must name the workflow's own definition and current run,
    or it is refused before anything is counted (a forged one cannot use up a budget)."""
    digest, run = expect
    if wf["definition_hash"] != digest:
        return StepStart(
            False,
            why=f"message names definition {digest[:12]}, the workflow runs"
            f" {str(wf['definition_hash'])[:12]} (forged?)",
        )
    if wf["run"] != run:
        return StepStart(False, why=f"delivery of run {run}, workflow is at run {wf['run']} (stale)")
    if wf["current_state"] not in LIVE:
        return StepStart(False, why=f"workflow is already {wf['current_state']}")
    return None


def _refuse_stale(wf: dict[str, Any], d: StepDelivery, previous: Attempts) -> StepStart | None:
    """A delivery of an earlier run, or of a step the workflow is no longer at."""
    if d.task_id and any(r.task_id == d.task_id and r.run < wf["run"] for r in previous):
        # A delivery of an earlier run (countdown retries keep their task id).
        return StepStart(
            False, why=f"delivery of run {wf['run'] - 1}, workflow is at run {wf['run']} (stale)"
        )
    if wf["current_step"] != d.step:
        return StepStart(
            False,
            why=f"workflow is at step {wf['current_step']!r}, not {d.step!r} (stale)",
            workflow=wf,
            done_before=any(r.state == StepState.SUCCESS.value and r.run == wf["run"] for r in previous),
        )
    return None


def _busy(previous: Attempts, hold_s: int, ts: datetime) -> StepStart | None:
    """A ``running`` attempt younger than the step's time limit may still be alive (an
    overlapping delivery): come back later rather than run the body twice at once."""
    young = [
        t
        for t in (aware(r.started_at) for r in previous if r.state == StepState.RUNNING.value)
        if (ts - t).total_seconds() < hold_s
    ]
    if not young:
        return None
    wait = hold_s - (ts - max(young)).total_seconds()
    return StepStart(
        False, why="another delivery of this step is still running", busy_for=max(1, int(wait) + 1)
    )


def _close_params(
    workflow_id: str, close: StepClose, state: StepState, ts: datetime, started: datetime | None
) -> dict[str, Any]:
    return {
        "b_wid": workflow_id,
        "b_step": close.step,
        "b_attempt": close.attempt,
        "b_state": state.value,
        "b_ts": ts,
        "b_duration": int((ts - aware(started)).total_seconds() * 1000) if started else None,
        "b_output": close.output,
        "b_error": close.error,
        "b_traceback": clip_traceback(close.traceback),
    }
