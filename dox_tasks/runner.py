"""The thin layer between a Celery task and a step function.

For every delivery of a step message:

1. find the definition snapshot the workflow runs (messages carry its hash);
2. count the attempt in the database *before* the body runs, and skip stale,
   forged or cancelled deliveries (the workflow is not running at this step);
   a message delivered more than ``retries + 2`` times ends the workflow
   ``failed``/``poison``;
3. run the step; record the outcome; move the workflow on, end it, or retry
   with exponential backoff and jitter; after the retries, apply ``on_failure``.

Nothing a step does can crash the worker: every exception ends in a recorded state.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task
from celery.exceptions import Retry

from . import runtime
from .contract import OnFailure, Reason, StepState, WorkflowState
from .db.store import StepClose, StepDelivery
from .definitions.canvas import step_signatures
from .definitions.loader import Definition
from .definitions.schema import Step
from .errors import IntegrityFault, StateStoreUnavailable, TransientError
from .finish import conclude
from .logs import step_context
from .metrics import worker as worker_metrics
from .runtime import Runtime
from .settings import RETRY_JITTER, retry_wait
from .steps.base import Outcome, StepContext
from .steps.registry import resolve

log = logging.getLogger("dox.step")

StepFn = Callable[[StepContext], Outcome]
#: Retry budget when the results database itself is down (no attempt can be counted).
DB_RETRY_DELAY_S = 2.0
DB_RETRY_MAX_DELAY_S = 30.0


class StepLog(logging.LoggerAdapter):
    """Prefixes ``[workflow step]`` for people reading text logs; the structured fields
    come from :func:`dox_tasks.logs.step_context`, set around every delivery."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('workflow_id')} {extra.get('step')}] {msg}", kwargs


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


def retry_policy(rt: Runtime, step: Step) -> tuple[int, float, float]:
    s = rt.settings
    r = step.retry
    attempts = r.attempts if r and r.attempts is not None else s.workflow_retry_attempts
    backoff = r.backoff if r and r.backoff is not None else s.workflow_retry_backoff
    delay = r.delay if r and r.delay is not None else s.workflow_retry_delay
    return attempts, backoff, delay


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
            outcome = _outcome(result)
            return summary(result)
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


def summary(result: dict[str, Any]) -> str:
    """``next: scan``, ``end: success``, ``failed: timeout``, ``skipped: <why>``, …"""
    for key in ("next", "end", "failed", "skipped", "resent"):
        if key in result:
            return f"{key}: {result[key]}"
    if "superseded" in result:
        return "superseded: another delivery finished this step first"
    return "handoff" if result.get("handoff") else "done"


def _outcome(result: dict[str, Any]) -> str:
    """ok | rejected | failed | skipped (stale, forged or superseded deliveries)."""
    if "skipped" in result or "superseded" in result:
        return "skipped"
    if "failed" in result:
        return "failed"
    if result.get("end") == WorkflowState.REJECTED.value:
        return "rejected"
    return "ok"


def _deliver(
    task: Task, fn: StepFn, workflow_id: str, step_name: str, digest: str, run: int
) -> dict[str, Any]:
    rt = runtime.get()
    slog = StepLog(log, {"workflow_id": workflow_id, "step": step_name, "task_id": task.request.id})
    try:
        definition = rt.snapshot(digest)
        step = definition.step(step_name)
    except KeyError:
        slog.warning(
            "ignored: no definition %s with step %r (forged or stale message)",
            digest[:12],
            step_name,
        )
        stop_chain(task)
        return {"skipped": "unknown definition or step"}
    expected = resolve(step.task)
    if expected is None or expected.name != task.name:
        # A message is a request: only the task the definition names may run this step
        # (the workflow's own definition: begin_step compares the hash with its row).
        why = f"task {task.name} is not the step's task {expected.name if expected else step.task} (forged?)"
        slog.warning("ignored delivery: %s", why)
        stop_chain(task)
        return {"skipped": why}
    attempts, backoff, delay = retry_policy(rt, step)
    try:
        next_step = definition.next_of(step_name)
        result = _run(
            task, rt, fn, next_step, step, (workflow_id, digest, run), attempts, backoff, delay, slog
        )
        if "next" in result or "resent" in result:
            assert next_step is not None
            follow(task, rt, definition, workflow_id, next_step, run)
        else:
            stop_chain(task)
        return result
    except Retry:
        raise
    except StateStoreUnavailable as exc:
        # The database is down: nothing can be recorded. Wait for it (not an attempt).
        # Keep waiting however long it takes: a message dropped here would be a lost workflow.
        countdown = min(DB_RETRY_MAX_DELAY_S, DB_RETRY_DELAY_S * (1 + task.request.retries))
        slog.warning("results database unavailable, retrying in %.0fs: %s", countdown, exc)
        raise task.retry(exc=exc, countdown=countdown, max_retries=None) from exc
    except Exception as exc:  # noqa: BLE001 - bookkeeping failed outside the step body
        # Never let the message be acked with the workflow half-recorded: deliver it
        # again. The next delivery is counted, so a fault that always recurs ends as poison.
        countdown = min(DB_RETRY_MAX_DELAY_S, DB_RETRY_DELAY_S * (1 + task.request.retries))
        slog.exception("bookkeeping failed (%s); delivering again in %.0fs", exc, countdown)
        raise task.retry(exc=exc, countdown=countdown, max_retries=None) from exc


def _run(
    task: Task,
    rt: Runtime,
    fn: StepFn,
    next_step: str | None,
    step: Step,
    message: tuple[str, str, int],
    attempts: int,
    backoff: float,
    delay: float,
    slog: StepLog,
) -> dict[str, Any]:
    workflow_id, digest, run = message
    start = rt.state.begin_step(
        StepDelivery(
            workflow_id,
            step.name,
            task.request.id,
            task.request.hostname,
            (digest, run),
            max_deliveries=attempts + 2,
            hold_s=min(step.timeout or rt.settings.workflow_timeout, rt.settings.workflow_timeout),
            with_outputs=next_step is None,  # the last step builds the result from them
        )
    )
    if start.busy_for:
        # An overlapping delivery is (maybe) still running this step: come back after its
        # time limit instead of running the body twice at once.
        slog.warning("%s; checking again in %ds", start.why, start.busy_for)
        raise task.retry(countdown=start.busy_for, max_retries=None)
    if not start.run:
        wf = start.workflow or {}
        if (
            start.done_before
            and wf.get("current_state") in ("queued", "running")
            and wf.get("current_step") == next_step
            and next_step is not None
            and not rt.state.has_attempts(workflow_id, next_step, wf.get("run", 1))
        ):
            # An earlier delivery finished this step but its worker died before the
            # chain sent the next one, which has not started. Let this delivery's chain
            # send it (should the original also be queued, its guard absorbs the copy).
            slog.warning("step already done; re-sending the rest of the chain")
            return {"resent": next_step}
        if start.poison:
            slog.error("poison message: %s; failing the workflow", start.why)
            conclude(
                rt,
                workflow_id,
                WorkflowState.FAILED,
                reason=Reason.POISON,
                detail=f"step {step.name} {start.why}",
                expect_step=step.name,
            )
        else:
            slog.warning("ignored delivery: %s", start.why)
        return {"skipped": start.why}

    assert start.workflow is not None
    ctx = StepContext(start.workflow, step.params, rt, start.attempt)
    if start.outputs is not None:
        ctx.__dict__["earlier"] = start.outputs  # fills the cached property: no second read
    try:
        outcome = fn(ctx)
    except StateStoreUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - every fault must end in a recorded state
        reason, retryable = classify(exc)
        return _fault(
            task,
            rt,
            step,
            workflow_id,
            (start.attempt, start.try_no),
            exc,
            reason,
            retryable,
            (attempts, backoff, delay),
            slog,
        )

    if outcome.handoff:
        rt.state.finish_step(
            workflow_id,
            StepClose(
                step.name, start.attempt, StepState.SUCCESS, outcome.output, started_at=start.started_at
            ),
            next_step=step.name,  # stays at this step until the chord concludes the workflow
        )
        stop_chain(task)
        if outcome.after is not None:
            try:
                outcome.after()
            except Exception as exc:  # noqa: BLE001 - the reaper finishes a chord that never started
                slog.error("could not start the work this step hands over to: %s", exc)
        return {"workflow_id": workflow_id, "step": step.name, "handoff": True}

    if outcome.end is not None or next_step is None:
        end = outcome.end or WorkflowState.SUCCESS
        state = StepState.REJECTED if end is WorkflowState.REJECTED else StepState.SUCCESS
        conclude(
            rt,
            workflow_id,
            end,
            reason=outcome.reason,
            detail=outcome.detail,
            duplicate_of=outcome.duplicate_of,
            quarantine=outcome.quarantine,
            close=StepClose(step.name, start.attempt, state, outcome.output, started_at=start.started_at),
            wf=start.workflow,
            outputs=start.outputs,
        )
        stop_chain(task)
        return {"workflow_id": workflow_id, "step": step.name, "end": end.value}

    if not rt.state.finish_step(
        workflow_id,
        StepClose(step.name, start.attempt, StepState.SUCCESS, outcome.output, started_at=start.started_at),
        next_step=next_step,
    ):
        slog.warning("another delivery of this step finished first; not continuing")
        stop_chain(task)
        return {"superseded": True}
    return {"workflow_id": workflow_id, "step": step.name, "next": next_step}


def classify(exc: BaseException) -> tuple[Reason, bool]:
    """(reason recorded if retries run out, whether to retry) for a step's exception."""
    if isinstance(exc, IntegrityFault):
        return Reason.INTERNAL_ERROR, False  # the bytes changed: retrying cannot help
    if isinstance(exc, TransientError):
        return Reason(exc.reason), True
    if isinstance(exc, SoftTimeLimitExceeded):
        return Reason.TIMEOUT, True
    return Reason.INTERNAL_ERROR, True  # a bug or an unexpected error: retry, then record


def _fault(
    task: Task,
    rt: Runtime,
    step: Step,
    workflow_id: str,
    numbers: tuple[int, int],
    exc: BaseException,
    reason: Reason,
    retryable: bool,
    policy: tuple[int, float, float],
    slog: StepLog,
) -> dict[str, Any]:
    attempts, backoff, delay = policy
    attempt, try_no = numbers  # the attempt row's number; the delivery's number in this run
    tb = traceback.format_exc(limit=20)
    message = f"{type(exc).__name__}: {exc}"
    if retryable and try_no <= attempts:
        countdown = retry_wait(try_no - 1, backoff, delay) * random.uniform(1.0, RETRY_JITTER)
        rt.state.finish_step(
            workflow_id, StepClose(step.name, attempt, StepState.RETRY, error=message, traceback=tb)
        )
        slog.warning(
            "attempt %d failed (%s); retry %d/%d in %.1fs",
            try_no,
            message,
            try_no,
            attempts,
            countdown,
        )
        # DOX counts attempts itself (in the database), so Celery's own cap is off.
        raise task.retry(exc=exc, countdown=countdown, max_retries=None)
    stop_chain(task)
    on_failure = OnFailure(step.on_failure)
    slog.error("step failed after %d attempt(s): %s; on_failure=%s", try_no, message, on_failure.value)
    detail = f"step {step.name} failed after {try_no} attempt(s): {message}"[:2000]
    close = StepClose(step.name, attempt, StepState.FAILED, error=message, traceback=tb)
    if on_failure is OnFailure.QUARANTINE:
        won = conclude(
            rt,
            workflow_id,
            WorkflowState.REJECTED,
            reason=reason,
            detail=detail,
            quarantine=True,
            close=close,
        )
    else:
        won = conclude(
            rt,
            workflow_id,
            WorkflowState.FAILED,
            reason=reason,
            detail=detail,
            escalate=on_failure is OnFailure.ESCALATE,
            close=close,
        )
    if not won:  # another delivery owns the workflow now; just close this attempt
        rt.state.finish_step(
            workflow_id, StepClose(step.name, attempt, StepState.FAILED, error=message, traceback=tb)
        )
    return {"workflow_id": workflow_id, "step": step.name, "failed": reason.value}
