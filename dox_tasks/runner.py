"""The thin layer between a Celery task and a step function.

For every delivery of a step message (:func:`run_step`):

1. find the definition snapshot the workflow runs (messages carry its hash) and check
   that the task is the one it names for the step (:func:`_find_step`);
2. then :func:`_execute`, the one function that owns the delivery's outcome, reads top
   to bottom: count the attempt in the database *before* the body runs; check that it
   may run — skip stale, forged or cancelled deliveries (the workflow is not running at
   this step), end the workflow ``failed``/``poison`` after ``retries + 2`` deliveries;
   run the body within its time limits; record the outcome — move the workflow on, hand
   it over, end it, or retry with exponential backoff and jitter and, after the retries,
   apply ``on_failure``;
3. send the next step as the recorded definition names it, or nothing (:func:`_send_on`).

What became of the delivery is a :class:`StepResult`; the Celery task returns its
one-line :meth:`~StepResult.summary`. Nothing a step does can crash the worker: every
exception ends in a recorded state.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task
from celery.exceptions import Retry

from . import runtime
from .contract import OnFailure, Reason, StepState, WorkflowState
from .db.store import StepClose, StepDelivery, StepStart
from .definitions.canvas import step_signatures
from .definitions.catalog import resolve
from .definitions.loader import Definition
from .definitions.schema import RetryBudget, Step, retry_budget
from .errors import IntegrityFault, StateStoreUnavailable, TransientError
from .finish import Ending, conclude, end_workflow
from .logs import step_context
from .metrics import worker as worker_metrics
from .runtime import Runtime
from .settings import RETRY_JITTER, retry_wait
from .steps.base import Outcome, StepContext

log = logging.getLogger("dox.step")

StepFn = Callable[[StepContext], Outcome]
#: Retry budget when the results database itself is down (no attempt can be counted).
DB_RETRY_DELAY_S = 2.0
DB_RETRY_MAX_DELAY_S = 30.0


class Verdict(Enum):
    """What became of one delivery of a step message."""

    NEXT = "next"  # recorded; the next step is sent
    RESENT = "resent"  # done by an earlier delivery whose next step was never sent: send it
    HANDOFF = "handoff"  # recorded; work elsewhere (the sync's chord) ends the workflow
    END = "end"  # the workflow ended at this step
    FAILED = "failed"  # a fault that outlived its retries; on_failure applied
    SKIPPED = "skipped"  # not run: stale, forged, cancelled or poison
    SUPERSEDED = "superseded"  # another delivery of this step finished it first


@dataclass(frozen=True, slots=True)
class StepResult:
    """A delivery's verdict, and what it names: the next step (``NEXT``, ``RESENT``), the
    workflow's end state (``END``), the reason (``FAILED``) or why not (``SKIPPED``)."""

    verdict: Verdict
    detail: str = ""

    def summary(self) -> str:
        """``next: scan``, ``end: success``, ``failed: timeout``, ``skipped: <why>``, …:
        the task's result (what Flower shows; Celery formats it for its log and events)."""
        if self.verdict is Verdict.HANDOFF:
            return "handoff"
        if self.verdict is Verdict.SUPERSEDED:
            return "superseded: another delivery finished this step first"
        return f"{self.verdict.value}: {self.detail}"

    @property
    def outcome(self) -> str:
        """The step timing's ``outcome`` label: ok | rejected | failed | skipped."""
        if self.verdict in (Verdict.SKIPPED, Verdict.SUPERSEDED):
            return "skipped"
        if self.verdict is Verdict.FAILED:
            return "failed"
        if self.verdict is Verdict.END and self.detail == WorkflowState.REJECTED.value:
            return "rejected"
        return "ok"

    @property
    def sends_next(self) -> bool:
        return self.verdict in (Verdict.NEXT, Verdict.RESENT)


class StepLog(logging.LoggerAdapter):
    """Prefixes ``[workflow step]`` for people reading text logs; the structured fields
    come from :func:`dox_tasks.logs.step_context`, set around every delivery."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('workflow_id')} {extra.get('step')}] {msg}", kwargs


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a step message, once its definition and step are found."""

    task: Task
    rt: Runtime
    log: StepLog
    workflow_id: str
    digest: str  # the definition hash the message carries
    run: int
    definition: Definition
    step: Step
    next_step: str | None  # None: the workflow ends after this step
    budget: RetryBudget


def stop_chain(task: Task) -> None:
    """Send nothing after this delivery: no chain, no links, no chord bookkeeping.

    Whatever a message carries besides its arguments is the sender's choice, so none of
    it is followed; the next step comes from the recorded definition (:func:`follow`).
    """
    request = task.request
    request.chain = request.callbacks = request.errbacks = request.chord = request.group = None


def follow(
    task: Task, rt: Runtime, definition: Definition, workflow_id: str, start_at: str, run: int
) -> None:
    """Make Celery send the rest of the workflow from ``start_at`` as the recorded
    definition names it, in place of the chain the message came with."""
    stop_chain(task)
    sigs = step_signatures(task.app, definition, workflow_id, rt.settings.workflow_timeout, start_at, run)
    task.request.chain = list(reversed(sigs))  # Celery pops the next step from the end


def run_step(task: Task, fn: StepFn, workflow_id: str, step_name: str, digest: str, run: int) -> str:
    """Run one delivery of a step and time it for the worker's metrics (when served).

    Returns a one-line summary (what Flower shows as the task's result): Celery formats
    every return value for its log and events, and the record is in Postgres anyway.
    """
    started = time.perf_counter()
    outcome = "error"
    with step_context(workflow_id, step_name, task.request.id):
        try:
            result = _deliver(task, fn, workflow_id, step_name, digest, run)
            outcome = result.outcome
            return result.summary()
        except Retry:
            outcome = "retry"
            raise
        finally:
            elapsed = time.perf_counter() - started
            queue = (task.request.delivery_info or {}).get("routing_key") or "unknown"
            try:
                worker_metrics.observe(step_name, queue, outcome, elapsed)
            except Exception as exc:  # noqa: BLE001 - timings must never change a step's outcome
                log.debug("step timing not recorded: %s", exc)
            log.info("step %s: %s in %.0f ms", step_name, outcome, elapsed * 1000)


def _deliver(task: Task, fn: StepFn, workflow_id: str, step_name: str, digest: str, run: int) -> StepResult:
    """Find the step, execute the delivery, send what follows; when the bookkeeping itself
    fails (the database is down, or anything outside the body), deliver it again later."""
    rt = runtime.get()
    slog = StepLog(log, {"workflow_id": workflow_id, "step": step_name, "task_id": task.request.id})
    found = _find_step(task, rt, slog, digest, step_name)
    if isinstance(found, StepResult):
        stop_chain(task)
        return found
    definition, step = found
    next_step = definition.next_of(step_name)
    d = Delivery(
        task, rt, slog, workflow_id, digest, run, definition, step, next_step, retry_budget(step, rt.settings)
    )
    try:
        result = _execute(d, fn)
        _send_on(d, result)
        return result
    except Retry:
        raise
    except StateStoreUnavailable as exc:
        _wait_for_database(d, exc)
    except Exception as exc:  # noqa: BLE001 - bookkeeping failed outside the step body
        _deliver_again(d, exc)


def _find_step(
    task: Task, rt: Runtime, slog: StepLog, digest: str, step_name: str
) -> tuple[Definition, Step] | StepResult:
    """The recorded definition and step the message names, if its task is the step's."""
    try:
        definition = rt.snapshot(digest)
        step = definition.step(step_name)
    except KeyError:
        slog.warning(
            "ignored: no definition %s with step %r (forged or stale message)", digest[:12], step_name
        )
        return StepResult(Verdict.SKIPPED, "unknown definition or step")
    expected = resolve(step.task)
    if expected is None or expected.task != task.name:
        # A message is a request: only the task the definition names may run this step
        # (the workflow's own definition: begin_step compares the hash with its row).
        why = f"task {task.name} is not the step's task {expected.task if expected else step.task} (forged?)"
        slog.warning("ignored delivery: %s", why)
        return StepResult(Verdict.SKIPPED, why)
    return definition, step


def _execute(d: Delivery, fn: StepFn) -> StepResult:
    """The one owner of a delivery's outcome: count the attempt, check that it may run,
    run the body within its limits, record what came of it."""
    start = _count_attempt(d)
    refused = _refusal(d, start)
    if refused is not None:
        return refused
    assert start.workflow is not None
    try:
        # Within the step's time limits: the soft one raises here (a fault, retried).
        outcome = fn(StepContext(start.workflow, d.step.params, d.rt, start.attempt, start.outputs))
    except StateStoreUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - every fault must end in a recorded state
        return _fault(d, start, exc)
    if outcome.handoff:
        return _hand_over(d, start, outcome)
    if outcome.end is not None or d.next_step is None:
        return _end(d, start, outcome)
    return _advance(d, start, outcome, d.next_step)


def _send_on(d: Delivery, result: StepResult) -> None:
    """The rest of the workflow as the recorded definition names it, or nothing."""
    if result.sends_next:
        assert d.next_step is not None
        follow(d.task, d.rt, d.definition, d.workflow_id, d.next_step, d.run)
    else:
        stop_chain(d.task)


# -- count the attempt, and check that it may run --------------------------------------
def _count_attempt(d: Delivery) -> StepStart:
    """Count this delivery in the database before anything runs (the one ``begin_step``)."""
    settings = d.rt.settings
    return d.rt.state.begin_step(
        StepDelivery(
            d.workflow_id,
            d.step.name,
            d.task.request.id,
            d.task.request.hostname,
            (d.digest, d.run),
            max_deliveries=d.budget.attempts + 2,
            hold_s=min(d.step.timeout or settings.workflow_timeout, settings.workflow_timeout),
            with_outputs=d.next_step is None,  # the last step builds the result from them
        )
    )


def _refusal(d: Delivery, start: StepStart) -> StepResult | None:
    """Why this delivery does not run the body (``None``: it does)."""
    if start.busy_for:
        # An overlapping delivery is (maybe) still running this step: come back after its
        # time limit instead of running the body twice at once.
        d.log.warning("%s; checking again in %ds", start.why, start.busy_for)
        raise d.task.retry(countdown=start.busy_for, max_retries=None)
    if start.run:
        return None
    if d.next_step is not None and _next_never_sent(d, start, d.next_step):
        # An earlier delivery finished this step but its worker died before the chain
        # sent the next one, which has not started. Let this delivery's chain send it
        # (should the original also be queued, its guard absorbs the copy).
        d.log.warning("step already done; re-sending the rest of the chain")
        return StepResult(Verdict.RESENT, d.next_step)
    if start.poison:
        d.log.error("poison message: %s; failing the workflow", start.why)
        conclude(
            d.rt,
            d.workflow_id,
            WorkflowState.FAILED,
            reason=Reason.POISON,
            detail=f"step {d.step.name} {start.why}",
            expect_step=d.step.name,
        )
    else:
        d.log.warning("ignored delivery: %s", start.why)
    return StepResult(Verdict.SKIPPED, start.why)


def _next_never_sent(d: Delivery, start: StepStart, next_step: str) -> bool:
    """This step is done and the workflow waits at the next one, which never started."""
    wf = start.workflow or {}
    return (
        start.done_before
        and wf.get("current_state") in ("queued", "running")
        and wf.get("current_step") == next_step
        and not d.rt.state.has_attempts(d.workflow_id, next_step, wf.get("run", 1))
    )


# -- record the outcome: hand over, end, or move on ------------------------------------
def _hand_over(d: Delivery, start: StepStart, outcome: Outcome) -> StepResult:
    """Done, and the workflow stays at this step until the work it started concludes it."""
    _close_attempt(d, _closing(d, start, StepState.SUCCESS, outcome), next_step=d.step.name)
    stop_chain(d.task)
    if outcome.after is not None:
        try:
            outcome.after()
        except Exception as exc:  # noqa: BLE001 - the reaper finishes a chord that never started
            d.log.error("could not start the work this step hands over to: %s", exc)
    return StepResult(Verdict.HANDOFF)


def _end(d: Delivery, start: StepStart, outcome: Outcome) -> StepResult:
    """The step ends the workflow (its answer, or the last step's success)."""
    end = outcome.end or WorkflowState.SUCCESS
    state = StepState.REJECTED if end is WorkflowState.REJECTED else StepState.SUCCESS
    ending = Ending(
        d.workflow_id,
        end,
        reason=outcome.reason,
        detail=outcome.detail,
        duplicate_of=outcome.duplicate_of,
        quarantine=outcome.quarantine,
        close=_closing(d, start, state, outcome),
        wf=start.workflow,
        outputs=start.outputs,
    )
    end_workflow(d.rt, ending)
    stop_chain(d.task)
    return StepResult(Verdict.END, end.value)


def _advance(d: Delivery, start: StepStart, outcome: Outcome, next_step: str) -> StepResult:
    """Record the success and move the workflow to the next step (unless another
    delivery of this step got there first)."""
    if not _close_attempt(d, _closing(d, start, StepState.SUCCESS, outcome), next_step=next_step):
        d.log.warning("another delivery of this step finished first; not continuing")
        stop_chain(d.task)
        return StepResult(Verdict.SUPERSEDED)
    return StepResult(Verdict.NEXT, next_step)


def _closing(d: Delivery, start: StepStart, state: StepState, outcome: Outcome) -> StepClose:
    return StepClose(d.step.name, start.attempt, state, outcome.output, started_at=start.started_at)


def _close_attempt(d: Delivery, close: StepClose, next_step: str | None = None) -> bool:
    """Close this delivery's attempt (the one ``finish_step``); False if superseded."""
    return d.rt.state.finish_step(d.workflow_id, close, next_step=next_step)


# -- record a fault: retry later, or give up -------------------------------------------
def classify(exc: BaseException) -> tuple[Reason, bool]:
    """(reason recorded if retries run out, whether to retry) for a step's exception."""
    if isinstance(exc, IntegrityFault):
        return Reason.INTERNAL_ERROR, False  # the bytes changed: retrying cannot help
    if isinstance(exc, TransientError):
        return Reason(exc.reason), True
    if isinstance(exc, SoftTimeLimitExceeded):
        return Reason.TIMEOUT, True
    return Reason.INTERNAL_ERROR, True  # a bug or an unexpected error: retry, then record


def _fault(d: Delivery, start: StepStart, exc: Exception) -> StepResult:
    """The body raised (called while the exception is being handled: its traceback)."""
    reason, retryable = classify(exc)
    message = f"{type(exc).__name__}: {exc}"
    tb = traceback.format_exc(limit=20)
    name, attempt = d.step.name, start.attempt  # the attempt row's number
    if retryable and start.try_no <= d.budget.attempts:  # try_no: this delivery's number in the run
        _retry_later(
            d, start.try_no, exc, StepClose(name, attempt, StepState.RETRY, error=message, traceback=tb)
        )
    stop_chain(d.task)
    return _give_up(
        d, start.try_no, reason, StepClose(name, attempt, StepState.FAILED, error=message, traceback=tb)
    )


def _retry_later(d: Delivery, try_no: int, exc: Exception, close: StepClose) -> NoReturn:
    """Record the attempt ``retry`` and have Celery deliver the step again after a
    growing, jittered wait."""
    budget = d.budget
    countdown = retry_wait(try_no - 1, budget.backoff, budget.delay) * random.uniform(1.0, RETRY_JITTER)
    _close_attempt(d, close)
    d.log.warning(
        "attempt %d failed (%s); retry %d/%d in %.1fs",
        try_no,
        close.error,
        try_no,
        budget.attempts,
        countdown,
    )
    # DOX counts attempts itself (in the database), so Celery's own cap is off.
    raise d.task.retry(exc=exc, countdown=countdown, max_retries=None)


def _give_up(d: Delivery, try_no: int, reason: Reason, close: StepClose) -> StepResult:
    """No retries left: end the workflow as the step's ``on_failure`` says."""
    on_failure = OnFailure(d.step.on_failure)
    d.log.error("step failed after %d attempt(s): %s; on_failure=%s", try_no, close.error, on_failure.value)
    quarantine = on_failure is OnFailure.QUARANTINE
    ending = Ending(
        d.workflow_id,
        WorkflowState.REJECTED if quarantine else WorkflowState.FAILED,
        reason=reason,
        detail=f"step {d.step.name} failed after {try_no} attempt(s): {close.error}"[:2000],
        quarantine=quarantine,
        escalate=on_failure is OnFailure.ESCALATE,
        close=close,
    )
    if not end_workflow(d.rt, ending):  # another delivery owns the workflow now; just close this attempt
        _close_attempt(d, close)
    return StepResult(Verdict.FAILED, reason.value)


# -- the bookkeeping itself failed -------------------------------------------------------
def _wait_for_database(d: Delivery, exc: StateStoreUnavailable) -> NoReturn:
    """The database is down: nothing can be recorded. Wait for it (not an attempt), however
    long it takes: a message dropped here would be a lost workflow."""
    countdown = min(DB_RETRY_MAX_DELAY_S, DB_RETRY_DELAY_S * (1 + d.task.request.retries))
    d.log.warning("results database unavailable, retrying in %.0fs: %s", countdown, exc)
    raise d.task.retry(exc=exc, countdown=countdown, max_retries=None) from exc


def _deliver_again(d: Delivery, exc: Exception) -> NoReturn:
    """Never let the message be acked with the workflow half-recorded: deliver it again.
    The next delivery is counted, so a fault that always recurs ends as poison."""
    countdown = min(DB_RETRY_MAX_DELAY_S, DB_RETRY_DELAY_S * (1 + d.task.request.retries))
    d.log.exception("bookkeeping failed (%s); delivering again in %.0fs", exc, countdown)
    raise d.task.retry(exc=exc, countdown=countdown, max_retries=None) from exc
