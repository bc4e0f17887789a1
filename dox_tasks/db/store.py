"""StateStore: every write to the results layer goes through here.

Each transition has one owner and is written idempotently:

* :meth:`begin_step` — counts the attempt *before* the step body runs (Redis
  keeps no delivery count), refuses stale/forged/cancelled deliveries and turns
  a message delivered too often into ``failed``/``poison``.
* :meth:`finish_step` — closes the attempt; a success moves ``current_step``
  forward only if nobody else did (a redelivered duplicate becomes ``superseded``,
  so there is never a second success row).
* :meth:`conclude` — the single terminal transition (last attempt, terminal state
  and event rows in one transaction): the first writer wins; a finished workflow
  never moves backwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, DateTime, Engine, Table, bindparam, insert, or_, select, update
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..contract import LIVE_STATES, NEEDS_STAGED_INPUT, StepState, WorkflowState
from ..errors import DoxError, StateStoreUnavailable, StepStillRunning, UnknownWorkflow
from .direct import DirectConnection
from .engine import make_engine, migrate
from .tables import EV, SR, WD, WS, insert_ignore

LIVE = [s.value for s in LIVE_STATES]
_IS_LIVE = or_(*(WS.c.current_state == v for v in LIVE))

# The hot path (every step runs these) uses statements built once: constructing and
# cache-keying a statement per call cost more CPU than the database work itself.
_SEL_WF = select(WS).where(WS.c.workflow_id == bindparam("b_wid"))
_SEL_WF_LOCKED = _SEL_WF.with_for_update()
_SEL_STARTED_ATTEMPTS = select(SR.c.attempt, SR.c.run, SR.c.state, SR.c.started_at, SR.c.task_id).where(
    SR.c.workflow_id == bindparam("b_wid"), SR.c.step == bindparam("b_step")
)
_SEL_ATTEMPTS = select(SR.c.attempt, SR.c.run, SR.c.state).where(
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
    .where(WS.c.workflow_id == bindparam("b_wid"), WS.c.current_step == bindparam("b_step"), _IS_LIVE)
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
# PostgreSQL: the transitions as server-side functions (migrations 0002, 0004, 0005), each
# called as one autocommit statement over the direct connection (db/direct.py).
_PG_BEGIN = "SELECT * FROM dox_step_begin(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
_PG_FINISH = "SELECT dox_finish_step(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
_PG_CONCLUDE = "SELECT dox_conclude(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_WF_TIMES = [c.name for c in WS.columns if isinstance(c.type, DateTime)]
_PG_INSERT_WF = (
    "INSERT INTO workflow_states (workflow_id, rule_name, definition_hash, definition_version, current_state,"
    " current_step, user_id, user_display, source, file_name, sha256, size, idempotency_key, metadata,"
    " created_at, updated_at, schedule_slot) VALUES (%(workflow_id)s, %(rule_name)s, %(definition_hash)s,"
    " %(definition_version)s, %(current_state)s, %(current_step)s, %(user_id)s, %(user_display)s,"
    " %(source)s, %(file_name)s,"
    " %(sha256)s, %(size)s, %(idempotency_key)s, %(metadata)s, %(created_at)s, %(updated_at)s,"
    " %(schedule_slot)s) ON CONFLICT DO NOTHING RETURNING workflow_id"
)
_SEL_STEPS = select(SR).where(SR.c.workflow_id == bindparam("b_wid")).order_by(SR.c.id)

T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StepStart:
    """What :meth:`StateStore.begin_step` decided for one delivery."""

    run: bool
    attempt: int = 0
    why: str = ""
    poison: bool = False
    workflow: dict[str, Any] | None = None  # the row, as locked at the start of the step
    started_at: datetime | None = None
    done_before: bool = False  # an earlier delivery of this step already succeeded
    busy_for: int = 0  # > 0: another delivery may still be running it; try again in that many s
    try_no: int = 0  # this delivery's number within the workflow's current run (the retry budget)
    outputs: dict[str, dict[str, Any]] | None = None  # earlier steps' outputs, when asked for


@dataclass(frozen=True)
class StepClose:
    """How the attempt that ends a workflow is closed, in the same transaction."""

    step: str
    attempt: int
    state: StepState
    output: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    started_at: datetime | None = None


class StateStore:
    def __init__(self, url: str, pool_size: int = 2):
        self.url = url
        self.engine: Engine = make_engine(url, pool_size=pool_size)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self.direct = DirectConnection(self.engine)

    # -- plumbing -------------------------------------------------------------------
    def migrate(self) -> None:
        self._guard(lambda: migrate(self.engine))

    def dispose(self) -> None:
        """Drop pooled connections (after a fork, each worker child opens its own)."""
        self.direct.forget()
        self.engine.dispose(close=False)

    def close(self) -> None:
        self.direct.close()
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, SAInterfaceError) as exc:
            raise StateStoreUnavailable(f"results database unavailable: {exc.orig}") from exc
        except PoolTimeout as exc:
            raise StateStoreUnavailable(f"no free database connection: {exc}") from exc

    def status_of(self, ids: list[str]) -> dict[str, str]:
        """Just the states (cheap enough to poll)."""
        with self.tx() as conn:
            rows = conn.execute(
                select(WS.c.workflow_id, WS.c.current_state).where(WS.c.workflow_id.in_(ids))
            ).all()
        return {r.workflow_id: r.current_state for r in rows}

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (OperationalError, SAInterfaceError) as exc:
            raise StateStoreUnavailable(f"results database unavailable: {exc.orig}") from exc

    def _insert_ignore(self, conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        return insert_ignore(conn, table, values)

    # -- definitions ----------------------------------------------------------------
    def save_definition(self, digest: str, name: str, version: str, body: dict[str, Any]) -> None:
        with self.tx() as conn:
            self._insert_ignore(
                conn,
                WD,
                dict(definition_hash=digest, name=name, version=version, body=body, created_at=now()),
            )

    def load_definition(self, digest: str) -> dict[str, Any] | None:
        with self.tx() as conn:
            row = conn.execute(select(WD.c.body).where(WD.c.definition_hash == digest)).first()
        return dict(row.body) if row else None

    # -- workflows ------------------------------------------------------------------
    def create_workflow(
        self,
        *,
        rule_name: str,
        definition_hash: str,
        definition_version: str,
        first_step: str,
        user: str,
        source: str | None,
        file_name: str | None,
        sha256: str | None,
        size: int | None,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        over_limit: bool = False,
        schedule_slot: str | None = None,
        user_display: str | None = None,
    ) -> tuple[str, bool]:
        """Write the ``queued`` row. Returns (workflow_id, created).

        ``user`` is the normal form (:func:`dox_tasks.identity.normalise_user`),
        ``user_display`` what the caller wrote (default: ``user``). With an idempotency key
        this user used before, returns the earlier workflow and creates nothing; likewise
        for a scheduled run whose (rule_name, schedule_slot) already has a row.
        """
        if idempotency_key:
            existing = self.find_by_idempotency_key(user, idempotency_key)
            if existing:
                return existing, False
        workflow_id = str(uuid.uuid4())
        ts = now()
        values = dict(
            workflow_id=workflow_id,
            rule_name=rule_name,
            definition_hash=definition_hash,
            definition_version=definition_version,
            current_state=WorkflowState.QUEUED.value,
            current_step=first_step,
            user_id=user,
            user_display=user if user_display is None else user_display,
            source=source,
            file_name=file_name,
            sha256=sha256,
            size=size,
            idempotency_key=idempotency_key,
            metadata={**(metadata or {}), **({"over_limit": True} if over_limit else {})},
            created_at=ts,
            updated_at=ts,
            schedule_slot=schedule_slot,
        )
        # A conflict (same idempotency key or schedule slot) inserts nothing.
        if self.is_postgres:  # one statement over the step connection
            params = {**values, "metadata": json.dumps(values["metadata"])}
            created = self.direct.call(_PG_INSERT_WF, params) is not None
        else:
            with self.tx() as conn:
                created = self._insert_ignore(conn, WS, values)
        if created:
            return workflow_id, True
        existing = None
        if idempotency_key:
            existing = self.find_by_idempotency_key(user, idempotency_key)
        elif schedule_slot:
            existing = self.run_for_slot(rule_name, schedule_slot)
        if existing is None:  # neither key nor slot: only the fresh uuid is unique
            raise DoxError(f"workflow {workflow_id} was not recorded: a conflicting row exists")
        return existing, False

    def run_for_slot(self, rule_name: str, slot: str) -> str | None:
        """The scheduled run recorded for (job, slot), if any."""
        with self.tx() as conn:
            row = conn.execute(
                select(WS.c.workflow_id).where(WS.c.rule_name == rule_name, WS.c.schedule_slot == slot)
            ).first()
        return row.workflow_id if row else None

    def last_runs(self, rule_names: list[str]) -> dict[str, dict[str, Any]]:
        """Each job's most recent run (scheduled or manual): slot, state, times."""
        out: dict[str, dict[str, Any]] = {}
        with self.tx() as conn:
            for name in rule_names:
                row = (
                    conn.execute(
                        select(WS)
                        .where(WS.c.rule_name == name, WS.c.schedule_slot.is_not(None))
                        .order_by(WS.c.created_at.desc())
                        .limit(1)
                    )
                    .mappings()
                    .first()
                )
                if row is not None:
                    out[name] = dict(row)
        return out

    def find_by_idempotency_key(self, user: str, key: str) -> str | None:
        """The workflow ``user`` (normal form) started with ``key``: keys are per user."""
        with self.tx() as conn:
            row = conn.execute(
                select(WS.c.workflow_id).where(WS.c.user_id == user, WS.c.idempotency_key == key)
            ).first()
        return row.workflow_id if row else None

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        with self.tx() as conn:
            row = conn.execute(_SEL_WF, {"b_wid": workflow_id}).mappings().first()
        if row is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id}")
        return dict(row)

    def get_workflows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        with self.tx() as conn:
            rows = conn.execute(select(WS).where(WS.c.workflow_id.in_(ids))).mappings().all()
        return {r["workflow_id"]: dict(r) for r in rows}

    # -- steps ----------------------------------------------------------------------
    def begin_step(
        self,
        workflow_id: str,
        step: str,
        task_id: str | None,
        hostname: str | None,
        max_deliveries: int,
        hold_s: int = 0,
        with_outputs: bool = False,
        *,
        expect: tuple[str, int],
    ) -> StepStart:
        """Count this delivery and decide whether the step body may run.

        ``expect`` is the (definition hash, run) the message names: unless both are the
        workflow's, the delivery is refused before anything is counted.

        One transaction: lock the workflow row, mark attempts left ``running`` by a
        worker that died as ``lost``, insert this attempt (number = previous + 1).
        A ``running`` attempt younger than ``hold_s`` (the step's time limit) may still
        be alive: the delivery is told to come back later instead (``busy_for``).
        ``with_outputs`` also returns the earlier steps' outputs (the last step builds
        the result from them).
        """
        if self.is_postgres:
            return self._begin_step_pg(
                workflow_id, step, task_id, hostname, max_deliveries, hold_s, with_outputs, expect
            )
        with self.tx() as conn:
            if self.is_postgres:
                # Losing this commit in a Postgres crash only undercounts one delivery;
                # not waiting for the WAL flush saves ~1 ms per step. Terminal and
                # step-finish transitions stay fully durable.
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            found = (
                conn.execute(_SEL_WF_LOCKED if self.is_postgres else _SEL_WF, {"b_wid": workflow_id})
                .mappings()
                .first()
            )
            if found is None:
                return StepStart(False, why="unknown workflow (forged message?)")
            wf = dict(found)
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
            keys = {"b_wid": workflow_id, "b_step": step}
            previous = conn.execute(_SEL_STARTED_ATTEMPTS, keys).all()
            if task_id and any(r.task_id == task_id and r.run < wf["run"] for r in previous):
                # A delivery of an earlier run (countdown retries keep their task id).
                return StepStart(
                    False, why=f"delivery of run {wf['run'] - 1}, workflow is at run {wf['run']} (stale)"
                )
            if wf["current_step"] != step:
                return StepStart(
                    False,
                    why=f"workflow is at step {wf['current_step']!r}, not {step!r} (stale)",
                    workflow=wf,
                    done_before=any(
                        r.state == StepState.SUCCESS.value and r.run == wf["run"] for r in previous
                    ),
                )
            ts = now()
            running = [aware(r.started_at) for r in previous if r.state == StepState.RUNNING.value]
            young = [t for t in running if (ts - t).total_seconds() < hold_s]
            if young:
                wait = hold_s - (ts - max(young)).total_seconds()
                return StepStart(
                    False,
                    why="another delivery of this step is still running",
                    busy_for=max(1, int(wait) + 1),
                )
            if running:
                # An attempt still marked running belongs to a worker that died holding it.
                conn.execute(_MARK_LOST, {**keys, "b_ts": ts})
            attempt = max((r.attempt for r in previous), default=0) + 1
            # The budget counts this run's deliveries only: an operator retry starts afresh.
            in_run = sum(1 for r in previous if r.run == wf["run"]) + 1
            poison = in_run > max_deliveries
            why = f"delivered {in_run} times (limit {max_deliveries})" if poison else ""
            conn.execute(
                _INSERT_ATTEMPT,
                {
                    "workflow_id": workflow_id,
                    "step": step,
                    "attempt": attempt,
                    "run": wf["run"],
                    "task_id": task_id,
                    "worker_hostname": hostname,
                    "started_at": ts,
                    "state": (StepState.FAILED if poison else StepState.RUNNING).value,
                    "finished_at": ts if poison else None,
                    "error": why or None,
                },
            )
            if poison:
                return StepStart(False, attempt=attempt, poison=True, why=why, workflow=wf, try_no=in_run)
            if wf["current_state"] != WorkflowState.RUNNING.value:
                conn.execute(_SET_RUNNING, {"b_wid": workflow_id, "b_ts": ts})
                wf["current_state"] = WorkflowState.RUNNING.value
        outputs = self.step_outputs(workflow_id) if with_outputs else None
        return StepStart(True, attempt=attempt, workflow=wf, started_at=ts, try_no=in_run, outputs=outputs)

    def _begin_step_pg(
        self,
        workflow_id: str,
        step: str,
        task_id: str | None,
        hostname: str | None,
        max_deliveries: int,
        hold_s: int,
        with_outputs: bool,
        expect: tuple[str, int],
    ) -> StepStart:
        row = self.direct.call(
            _PG_BEGIN, (workflow_id, step, task_id, hostname, max_deliveries, hold_s, with_outputs, *expect)
        )
        assert row is not None
        run, attempt, why, poison, done_before, started, busy_for, try_no, wf, outputs = row
        if wf is not None:
            for name in _WF_TIMES:  # JSON carries timestamps as text
                if wf.get(name) is not None:
                    wf[name] = datetime.fromisoformat(wf[name])
        return StepStart(
            bool(run),
            attempt=int(attempt),
            why=str(why or ""),
            poison=bool(poison),
            workflow=wf,
            started_at=started,
            done_before=bool(done_before),
            busy_for=int(busy_for or 0),
            try_no=int(try_no or 0),
            outputs=outputs if run and with_outputs else None,
        )

    def finish_step(
        self,
        workflow_id: str,
        step: str,
        attempt: int,
        state: StepState,
        *,
        output: dict[str, Any] | None = None,
        error: str | None = None,
        traceback: str | None = None,
        next_step: str | None = None,
        started_at: datetime | None = None,
    ) -> bool:
        """Close one attempt. A success or rejection also moves the workflow past this step
        (to ``next_step``, or to no step when the workflow ends here).

        Returns False when another delivery of the same step got there first: this
        attempt is then recorded ``superseded`` (never a second success row) and the
        caller must not continue the chain.
        """
        tb = (traceback or None) and traceback[-4000:]
        if self.is_postgres:
            out = None if output is None else json.dumps(output)
            row = self.direct.call(
                _PG_FINISH, (workflow_id, step, attempt, state.value, next_step, out, error, tb, started_at)
            )
            return row is not None and row[0] == state.value
        ts = now()
        keys = {"b_wid": workflow_id, "b_step": step}
        with self.tx() as conn:
            started = started_at or conn.execute(_SEL_STARTED, {**keys, "b_attempt": attempt}).scalar()
            duration = int((ts - aware(started)).total_seconds() * 1000) if started else None
            final_state = state
            if state in (StepState.SUCCESS, StepState.REJECTED):
                moved = conn.execute(_ADVANCE, {**keys, "b_next": next_step, "b_ts": ts}).rowcount
                if not moved:
                    final_state = StepState.SUPERSEDED
            conn.execute(
                _CLOSE_ATTEMPT,
                {
                    **keys,
                    "b_attempt": attempt,
                    "b_state": final_state.value,
                    "b_ts": ts,
                    "b_duration": duration,
                    "b_output": output,
                    "b_error": error,
                    "b_traceback": (traceback or None) and traceback[-4000:],
                },
            )
        return final_state is state

    def has_attempts(self, workflow_id: str, step: str, run: int = 1) -> bool:
        """Whether ``step`` was attempted in the workflow's run ``run``."""
        with self.tx() as conn:
            rows = conn.execute(_SEL_ATTEMPTS, {"b_wid": workflow_id, "b_step": step}).all()
        return any(r.run == run for r in rows)

    def step_rows(self, workflow_id: str) -> list[dict[str, Any]]:
        with self.tx() as conn:
            rows = conn.execute(_SEL_STEPS, {"b_wid": workflow_id}).mappings().all()
        return [dict(r) for r in rows]

    def step_outputs(self, workflow_id: str) -> dict[str, dict[str, Any]]:
        """Outputs of the step attempts that answered (succeeded or rejected), by step name."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.step_rows(workflow_id):
            if row["state"] in (StepState.SUCCESS.value, StepState.REJECTED.value):
                out[row["step"]] = dict(row["output"] or {})
        return out

    # -- terminal transition --------------------------------------------------------
    def conclude(
        self,
        workflow_id: str,
        state: WorkflowState,
        *,
        reason: str | None,
        detail: str | None,
        duplicate_of: str | None,
        result: dict[str, Any],
        events: list[tuple[str, str, dict[str, Any]]],
        close: StepClose | None = None,
        expect_step: str | None = None,
    ) -> bool:
        """The terminal transition, atomically: close the last attempt, end the workflow,
        record its events. Only a delivery that still owns the workflow's current step
        (``close.step`` / ``expect_step``) may end it; the first writer wins.
        """
        step = close.step if close else expect_step
        if self.is_postgres:
            return self._conclude_pg(
                workflow_id, state, step, reason, detail, duplicate_of, result, events, close
            )
        ts = now()
        with self.tx() as conn:
            q = update(WS).where(WS.c.workflow_id == workflow_id, _IS_LIVE)
            if step is not None:
                q = q.where(WS.c.current_step == step)
            won = conn.execute(
                q.values(
                    current_state=state.value,
                    current_step=None,
                    reason=reason,
                    detail=detail,
                    duplicate_of=duplicate_of,
                    result=result,
                    updated_at=ts,
                    finished_at=ts,
                )
            ).rowcount
            if close is not None:
                started = close.started_at
                conn.execute(
                    _CLOSE_ATTEMPT,
                    {
                        "b_wid": workflow_id,
                        "b_step": close.step,
                        "b_attempt": close.attempt,
                        "b_state": (close.state if won else StepState.SUPERSEDED).value,
                        "b_ts": ts,
                        "b_duration": int((ts - aware(started)).total_seconds() * 1000) if started else None,
                        "b_output": close.output,
                        "b_error": close.error,
                        "b_traceback": (close.traceback or None) and close.traceback[-4000:],
                    },
                )
            if won:
                for event_id, type_, payload in events:
                    self._insert_ignore(
                        conn,
                        EV,
                        dict(
                            id=event_id, workflow_id=workflow_id, type=type_, payload=payload, created_at=ts
                        ),
                    )
        return bool(won)

    def _conclude_pg(
        self,
        workflow_id: str,
        state: WorkflowState,
        step: str | None,
        reason: str | None,
        detail: str | None,
        duplicate_of: str | None,
        result: dict[str, Any],
        events: list[tuple[str, str, dict[str, Any]]],
        close: StepClose | None,
    ) -> bool:
        rows = [{"id": event_id, "type": type_, "payload": payload} for event_id, type_, payload in events]
        c = close or StepClose("", 0, StepState.FAILED)  # placeholder: a NULL attempt closes nothing
        row = self.direct.call(
            _PG_CONCLUDE,
            (
                workflow_id,
                state.value,
                step,
                reason,
                detail,
                duplicate_of,
                json.dumps(result),
                json.dumps(rows),
                c.attempt if close else None,
                c.state.value,
                None if c.output is None else json.dumps(c.output),
                c.error,
                (c.traceback or None) and c.traceback[-4000:],
                c.started_at,
            ),
        )
        return bool(row and row[0])

    def reopen(
        self,
        workflow_id: str,
        from_states: set[str],
        step: str,
        event: tuple[str, str, dict[str, Any]],
        hold_s: int,
    ) -> dict[str, Any] | None:
        """Start the next run of an ended workflow at ``step`` (an operator retry).

        One transaction: the workflow goes back to ``queued`` at ``step`` with ``run``
        + 1 and its previous answer cleared, and the operator's event row is written.
        Returns the reopened row, or None when the workflow was not in ``from_states``
        (someone else retried it first, or it is not ended). A step body of the ended run
        that may still be executing (a ``running`` attempt younger than ``hold_s``, e.g.
        after a cancel) refuses the retry: its late outcome would land in the new run.
        """
        ts = now()
        event_id, type_, payload = event
        with self.tx() as conn:
            found = (
                conn.execute(_SEL_WF_LOCKED if self.is_postgres else _SEL_WF, {"b_wid": workflow_id})
                .mappings()
                .first()
            )
            if found is None:
                raise UnknownWorkflow(f"no workflow with id {workflow_id}")
            if found["current_state"] not in from_states:
                return None
            running = conn.execute(
                select(SR.c.step, SR.c.started_at).where(
                    SR.c.workflow_id == workflow_id, SR.c.state == StepState.RUNNING.value
                )
            ).all()
            young = [r for r in running if (ts - aware(r.started_at)).total_seconds() < hold_s]
            if young:
                raise StepStillRunning(
                    f"step {young[0].step} of workflow {workflow_id} is still running (started"
                    f" {aware(young[0].started_at).isoformat(timespec='seconds')}); retry once it"
                    f" has ended or after its time limit ({hold_s} s)"
                )
            if running:  # older than any time limit: their workers died
                conn.execute(
                    update(SR)
                    .where(SR.c.workflow_id == workflow_id, SR.c.state == StepState.RUNNING.value)
                    .values(state=StepState.LOST.value, finished_at=ts, error="worker lost (before a retry)")
                )
            run = int(found["run"]) + 1
            conn.execute(
                update(WS)
                .where(WS.c.workflow_id == workflow_id)
                .values(
                    current_state=WorkflowState.QUEUED.value,
                    current_step=step,
                    run=run,
                    run_started_at=ts,
                    reason=None,
                    detail=None,
                    duplicate_of=None,
                    result=None,
                    finished_at=None,
                    updated_at=ts,
                )
            )
            self._insert_ignore(
                conn,
                EV,
                dict(
                    id=event_id,
                    workflow_id=workflow_id,
                    type=type_,
                    payload={**payload, "run": run},
                    created_at=ts,
                ),
            )
        return {
            **dict(found),
            "run": run,
            "run_started_at": ts,
            "current_step": step,
            "current_state": WorkflowState.QUEUED.value,
        }

    def find_duplicate(self, sha256: str, user: str | None, exclude: str, before: datetime) -> str | None:
        """The earliest earlier workflow with the same bytes that succeeded or is still live.

        Counting live ones too makes the answer independent of which of two
        concurrent copies finishes first: the one submitted first is the original.
        """
        states = [WorkflowState.SUCCESS.value, *LIVE]
        q = select(WS.c.workflow_id).where(
            WS.c.sha256 == sha256,
            WS.c.current_state.in_(states),
            WS.c.workflow_id != exclude,
            WS.c.created_at <= before,
        )
        if user is not None:
            q = q.where(WS.c.user_id == user)
        with self.tx() as conn:
            rows = conn.execute(
                q.add_columns(WS.c.created_at).order_by(WS.c.created_at, WS.c.workflow_id)
            ).all()
        for row in rows:
            if aware(row.created_at) < aware(before) or row.workflow_id < exclude:
                return str(row.workflow_id)
        return None

    def needs_staged_input(self, sha256: str, exclude: str) -> bool:
        """Whether a workflow other than ``exclude`` may still read these staged bytes
        (it is live, or ended in a state an operator may retry)."""
        states = [s.value for s in NEEDS_STAGED_INPUT]
        with self.tx() as conn:
            row = conn.execute(
                select(WS.c.workflow_id)
                .where(WS.c.sha256 == sha256, WS.c.current_state.in_(states), WS.c.workflow_id != exclude)
                .limit(1)
            ).first()
        return row is not None

    def known_infected(self, sha256: str) -> str | None:
        """Signature of an earlier infected verdict on these bytes, if any."""
        q = (
            select(WS.c.detail)
            .where(
                WS.c.sha256 == sha256,
                WS.c.current_state == WorkflowState.REJECTED.value,
                WS.c.reason == "infected",
            )
            .limit(1)
        )
        with self.tx() as conn:
            row = conn.execute(q).first()
        return (row.detail or "known infected") if row else None

    # -- events ---------------------------------------------------------------------
    def events(self, workflow_id: str) -> list[dict[str, Any]]:
        with self.tx() as conn:
            rows = (
                conn.execute(select(EV).where(EV.c.workflow_id == workflow_id).order_by(EV.c.created_at))
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]


def aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
