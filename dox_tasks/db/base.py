"""The StateStore interface and the code both backends share (import it from :mod:`.store`).

The transitions that differ by backend — :meth:`StateStore.begin_step`,
:meth:`StateStore.finish_step`, :meth:`StateStore.conclude` and the insert of a new
workflow row — are abstract here: :mod:`.sqlite` writes them as SQLAlchemy statements,
:mod:`.postgres` calls one PL/pgSQL function each. Everything else (the reads the hot
path needs, :meth:`StateStore.reopen`, definitions, the duplicate and idempotency
look-ups) is one SQLAlchemy implementation for both. ``tests/test_state_store.py``
runs one contract suite against both backends.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, Select, bindparam, or_, select, update

from ..contract import LIVE_STATES, NEEDS_STAGED_INPUT, StepState, WorkflowState
from ..errors import DoxError, StepStillRunning, UnknownWorkflow
from .engine import make_engine, migrate
from .guard import translated
from .tables import EV, SR, WD, WS, insert_ignore

LIVE = [s.value for s in LIVE_STATES]
IS_LIVE = or_(*(WS.c.current_state == v for v in LIVE))

# The hot path (every step runs these) uses statements built once: constructing and
# cache-keying a statement per call cost more CPU than the database work itself.
SEL_WF = select(WS).where(WS.c.workflow_id == bindparam("b_wid"))
SEL_WF_LOCKED = SEL_WF.with_for_update()
_SEL_ATTEMPTS = select(SR.c.attempt, SR.c.run, SR.c.state).where(
    SR.c.workflow_id == bindparam("b_wid"), SR.c.step == bindparam("b_step")
)
_SEL_STEPS = select(SR).where(SR.c.workflow_id == bindparam("b_wid")).order_by(SR.c.id)

#: An event row to write with a transition: (event id, type, payload).
Event = tuple[str, str, dict[str, Any]]


def now() -> datetime:
    return datetime.now(UTC)


def aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def clip_traceback(tb: str | None) -> str | None:
    """What an attempt row keeps of a traceback: its last 4000 characters (None for none)."""
    return (tb or None) and tb[-4000:]


@dataclass(frozen=True, kw_only=True)
class NewWorkflow:
    """The ``queued`` row :meth:`StateStore.create_workflow` writes (intake and the scheduler).

    ``user`` is the normal form (:func:`dox_tasks.identity.normalise_user`),
    ``user_display`` what the caller wrote (default: ``user``). An idempotency key is
    per user; a scheduled run has one row per (rule_name, schedule_slot).
    """

    rule_name: str
    definition_hash: str
    definition_version: str
    first_step: str
    user: str
    source: str | None = None
    file_name: str | None = None
    sha256: str | None = None
    size: int | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None
    over_limit: bool = False
    schedule_slot: str | None = None
    user_display: str | None = None


@dataclass(frozen=True)
class StepDelivery:
    """One delivery of a step message, as :meth:`StateStore.begin_step` counts it.

    ``expect`` is the (definition hash, run) the message names. ``hold_s`` is the step's
    time limit: a ``running`` attempt younger than that may still be alive.
    ``with_outputs`` asks for the earlier steps' outputs (the last step builds the
    result from them).
    """

    workflow_id: str
    step: str
    task_id: str | None
    hostname: str | None
    expect: tuple[str, int]
    _: KW_ONLY
    max_deliveries: int
    hold_s: int = 0
    with_outputs: bool = False


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
    """How one attempt is closed: by :meth:`StateStore.finish_step`, or by
    :meth:`StateStore.conclude` in the transaction that ends the workflow."""

    step: str
    attempt: int
    state: StepState
    output: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    started_at: datetime | None = None


@dataclass(frozen=True)
class Conclusion:
    """How :meth:`StateStore.conclude` ends a workflow.

    Only a delivery that still owns the workflow's current step (``close.step``, or
    ``expect_step`` when no attempt is closed) may end it; with neither, any live
    workflow may be ended (an operator's cancel).
    """

    state: WorkflowState
    _: KW_ONLY
    reason: str | None = None
    detail: str | None = None
    duplicate_of: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    close: StepClose | None = None
    expect_step: str | None = None

    @property
    def step(self) -> str | None:
        """The step this delivery must still own."""
        return self.close.step if self.close else self.expect_step


class StateStore(ABC):
    """Every write to the results layer's workflow and step rows goes through here.

    Open one with :func:`dox_tasks.db.store.open_store`, which picks the backend.
    """

    #: How :meth:`reopen` reads the workflow row it changes (PostgreSQL locks it).
    _sel_for_update: ClassVar[Select[Any]] = SEL_WF
    #: For the read model's few dialect-specific statements (VACUUM, snapshot reads).
    is_postgres: ClassVar[bool] = False

    def __init__(self, url: str, pool_size: int = 2):
        self.url = url
        self.engine: Engine = make_engine(url, pool_size=pool_size)

    # -- plumbing -------------------------------------------------------------------
    def migrate(self) -> tuple[str | None, str | None]:
        """The schema at the newest revision: the revisions before (None: empty) and after."""
        with translated():
            return migrate(self.engine)

    def dispose(self) -> None:
        """Drop pooled connections (after a fork, each worker child opens its own)."""
        self.engine.dispose(close=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One transaction; database errors leave it as DOX's own exceptions."""
        with translated(), self.engine.begin() as conn:
            yield conn

    # -- the transitions each backend writes -----------------------------------------
    @abstractmethod
    def begin_step(self, delivery: StepDelivery) -> StepStart:
        """Count this delivery and decide whether the step body may run.

        Unless the message's ``expect`` (definition hash, run) is the workflow's, the
        delivery is refused before anything is counted. Otherwise, in one transaction:
        lock the workflow row, mark attempts left ``running`` by a worker that died as
        ``lost``, insert this attempt (number = previous + 1). A ``running`` attempt
        younger than ``hold_s`` may still be alive: the delivery is told to come back
        later instead (``busy_for``). A delivery past ``max_deliveries`` in this run is
        recorded ``failed`` and returned as ``poison``.
        """

    @abstractmethod
    def finish_step(self, workflow_id: str, close: StepClose, next_step: str | None = None) -> bool:
        """Close one attempt. A success or rejection also moves the workflow past this step
        (to ``next_step``, or to no step when the workflow ends here).

        Returns False when another delivery of the same step got there first: this
        attempt is then recorded ``superseded`` (never a second success row) and the
        caller must not continue the chain.
        """

    @abstractmethod
    def conclude(self, workflow_id: str, end: Conclusion) -> bool:
        """The terminal transition, atomically: close the last attempt, end the workflow,
        record its events. The first writer wins; a finished workflow never moves
        backwards. A closed attempt that lost is recorded ``superseded``."""

    @abstractmethod
    def _insert_workflow(self, values: dict[str, Any]) -> bool:
        """INSERT the row unless it conflicts (idempotency key, schedule slot); True if written."""

    # -- definitions ----------------------------------------------------------------
    def save_definition(self, digest: str, name: str, version: str, body: dict[str, Any]) -> None:
        with self.tx() as conn:
            insert_ignore(
                conn,
                WD,
                dict(definition_hash=digest, name=name, version=version, body=body, created_at=now()),
            )

    def load_definition(self, digest: str) -> dict[str, Any] | None:
        with self.tx() as conn:
            row = conn.execute(select(WD.c.body).where(WD.c.definition_hash == digest)).first()
        return dict(row.body) if row else None

    # -- workflows ------------------------------------------------------------------
    def create_workflow(self, new: NewWorkflow) -> tuple[str, bool]:
        """Write the ``queued`` row. Returns (workflow_id, created).

        With an idempotency key this user used before, returns the earlier workflow and
        creates nothing; likewise for a scheduled run whose (rule_name, schedule_slot)
        already has a row.
        """
        if new.idempotency_key:
            existing = self.find_by_idempotency_key(new.user, new.idempotency_key)
            if existing:
                return existing, False
        workflow_id = str(uuid.uuid4())
        ts = now()
        values = dict(
            workflow_id=workflow_id,
            rule_name=new.rule_name,
            definition_hash=new.definition_hash,
            definition_version=new.definition_version,
            current_state=WorkflowState.QUEUED.value,
            current_step=new.first_step,
            user_id=new.user,
            user_display=new.user if new.user_display is None else new.user_display,
            source=new.source,
            file_name=new.file_name,
            sha256=new.sha256,
            size=new.size,
            idempotency_key=new.idempotency_key,
            metadata={**(new.metadata or {}), **({"over_limit": True} if new.over_limit else {})},
            created_at=ts,
            updated_at=ts,
            schedule_slot=new.schedule_slot,
        )
        if self._insert_workflow(values):  # a conflict (same key or slot) inserts nothing
            return workflow_id, True
        existing = None
        if new.idempotency_key:
            existing = self.find_by_idempotency_key(new.user, new.idempotency_key)
        elif new.schedule_slot:
            existing = self.run_for_slot(new.rule_name, new.schedule_slot)
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
            row = conn.execute(SEL_WF, {"b_wid": workflow_id}).mappings().first()
        if row is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id}")
        return dict(row)

    def get_workflows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        with self.tx() as conn:
            rows = conn.execute(select(WS).where(WS.c.workflow_id.in_(ids))).mappings().all()
        return {r["workflow_id"]: dict(r) for r in rows}

    def status_of(self, ids: list[str]) -> dict[str, str]:
        """Just the states (cheap enough to poll)."""
        with self.tx() as conn:
            rows = conn.execute(
                select(WS.c.workflow_id, WS.c.current_state).where(WS.c.workflow_id.in_(ids))
            ).all()
        return {r.workflow_id: r.current_state for r in rows}

    # -- steps ----------------------------------------------------------------------
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

    # -- an operator's retry -----------------------------------------------------------
    def reopen(
        self,
        workflow_id: str,
        from_states: set[str],
        step: str,
        event: Event,
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
            found = conn.execute(self._sel_for_update, {"b_wid": workflow_id}).mappings().first()
            if found is None:
                raise UnknownWorkflow(f"no workflow with id {workflow_id}")
            if found["current_state"] not in from_states:
                return None
            self._end_running_attempts(conn, workflow_id, hold_s, ts)
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
            insert_ignore(
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

    @staticmethod
    def _end_running_attempts(conn: Connection, workflow_id: str, hold_s: int, ts: datetime) -> None:
        """Before a retry: refuse while an attempt may still run; mark older ones ``lost``."""
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

    # -- look-ups intake and the steps make ----------------------------------------------
    def find_duplicate(
        self,
        sha256: str,
        user: str | None,
        exclude: str,
        before: datetime,
        rules: Collection[str] | None = None,
    ) -> str | None:
        """The earliest earlier workflow with the same bytes that succeeded or is still live
        (of one of ``rules``, when given: the workflows that keep their document).

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
        if rules is not None:
            q = q.where(WS.c.rule_name.in_(sorted(rules)))
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
