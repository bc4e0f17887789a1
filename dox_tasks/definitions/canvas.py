"""Compile a checked definition into a Celery canvas.

``process_document_upload`` becomes a ``chain`` of immutable signatures, one per
step, each routed to its step kind's queue with the step's time limits. Messages
carry references only — ``(workflow_id, step name, definition hash, run)`` — never
document bytes; each task reads what it needs from the results layer and storage.
The runner checks all four against the workflow's row before a step body runs, and
each step replaces the chain it arrived with by the rest of this one.
"""

from __future__ import annotations

from celery import Celery, chain
from celery.canvas import Signature

from .catalog import resolve
from .loader import Definition
from .schema import Step


def soft_limit(hard: int) -> int:
    """A soft limit a little below the hard one, so the step can record its own timeout."""
    return max(1, hard - max(1, hard // 20))


def _signature(
    app: Celery, definition: Definition, step: Step, workflow_id: str, default_timeout: int, run: int
) -> Signature:
    """One step's message: references only, routed to its queue, within its time limits."""
    info = resolve(step.task)
    assert info is not None  # checked when the definition was loaded
    # WORKFLOW_TIMEOUT caps every step: a definition may only lower it, so the
    # start-up check against the visibility timeout covers every step.
    hard = min(step.timeout or default_timeout, default_timeout)
    args = (workflow_id, step.name, definition.digest, run)
    return app.signature(
        info.task,
        args=args,
        # What Celery would compute for every message it sends (logs, Flower's
        # search); given here once instead of formatted again at each hop.
        argsrepr=repr(args),
        kwargsrepr="{}",
        immutable=True,
        queue=step.queue or info.queue,
        time_limit=hard,
        soft_time_limit=soft_limit(hard),
    )


def step_signatures(
    app: Celery,
    definition: Definition,
    workflow_id: str,
    default_timeout: int,
    start_at: str | None = None,
    run: int = 1,
) -> list[Signature]:
    steps = definition.ordered_steps()
    names = [step.name for step in steps]
    if start_at is not None and start_at not in names:
        raise KeyError(f"{definition.name} has no step {start_at!r}")
    first = 0 if start_at is None else names.index(start_at)
    return [_signature(app, definition, step, workflow_id, default_timeout, run) for step in steps[first:]]


def first_signature(
    app: Celery,
    definition: Definition,
    workflow_id: str,
    default_timeout: int,
    start_at: str | None = None,
    run: int = 1,
) -> Signature:
    """The message that starts (or resumes) a workflow: the step ``start_at`` (default the
    first) alone, without the rest as a chain. Each step sends the next one itself, as the
    recorded definition names it (:func:`dox_tasks.runner.follow`), and a step queue drops
    any chain a message carries (:mod:`dox_tasks.message_shape`): a chain in the first
    message is bytes to encode, publish and refuse, never followed."""
    for step in definition.ordered_steps():
        if start_at is None or step.name == start_at:
            return _signature(app, definition, step, workflow_id, default_timeout, run)
    raise KeyError(f"{definition.name} has no step {start_at!r}")


def build_chain(
    app: Celery,
    definition: Definition,
    workflow_id: str,
    default_timeout: int,
    start_at: str | None = None,
    run: int = 1,
) -> Signature:
    sigs = step_signatures(app, definition, workflow_id, default_timeout, start_at, run)
    return chain(*sigs) if len(sigs) > 1 else sigs[0]
