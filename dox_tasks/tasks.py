"""Celery tasks: one thin wrapper per step of the step catalog, the sync's chord tasks,
and the intake task.

The step tasks are built here, once per :class:`~dox_tasks.definitions.catalog.StepKind`,
and each one's function is resolved from the catalog's reference: this module sits at
the top of the layering (it may import every step, the scheduled jobs included), and a
reference that names nothing fails this import, so a worker never starts with a step a
definition may name but no task runs.

Step tasks have ``max_retries=None``: DOX counts attempts itself, in the database
(Celery's ``retry(max_retries=None)`` falls back to the task's own cap, which
would silently end a workflow's retries at three).

Each step task only hands its arguments to :func:`dox_tasks.runner.run_step`
with the plain-Python step function. Upstream services may call ``dox.submit``
(and nothing else): a step message for a workflow that is not running at that
step is ignored and logged.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from celery import Task

from . import runtime
from .app import app
from .definitions.catalog import STEPS, StepKind
from .errors import DoxError, SubmissionError
from .intake import submit
from .jobs.sync.run import finish_sync, run_probe
from .runner import StepFn, run_step

log = logging.getLogger(__name__)


def step_function(kind: StepKind) -> StepFn:
    """The plain function a step's catalog entry names (``"module:function"``)."""
    module, _, name = kind.function.partition(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise RuntimeError(f"step {kind.task}: {kind.function} is not a function")
    return fn


def _step_task(kind: StepKind) -> Task:
    fn = step_function(kind)

    def run(self: Task, workflow_id: str, step: str, definition_hash: str, run: int = 0) -> str:
        # run 0: a message without a run number, which no DOX sender writes (refused).
        return run_step(self, fn, workflow_id, step, definition_hash, run)

    run.__name__ = run.__qualname__ = kind.name + "_task"
    run.__doc__ = f"Step task {kind.task}: runs {kind.function} under the runner."
    return app.task(bind=True, name=kind.task, max_retries=None)(run)


step_tasks: dict[str, Task] = {name: _step_task(kind) for name, kind in STEPS.items()}


@app.task(name="dox.sync.probe", ignore_result=False)
def probe_task(workflow_id: str, service: str) -> dict[str, Any]:
    """One health check of the team sync's chord; its answer is recorded in Postgres."""
    health = run_probe(runtime.get(), workflow_id, service)
    if health is None:
        log.warning(
            "ignored health check of %r for workflow %s: not a running sync's service", service, workflow_id
        )
        return {"skipped": True}
    return health.to_dict()


@app.task(name="dox.sync.collect")
def collect_task(workflow_id: str) -> bool:
    """The chord body: every check answered; finish the sync."""
    return finish_sync(runtime.get(), workflow_id, deadline_passed=False, only_if_complete=True)


@app.task(bind=True, name="dox.submit", acks_late=True)
def submit_task(
    self: Task,
    path: str,
    user: str = "anonymous",
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    workflow: str = "process_document_upload",
) -> dict[str, Any]:
    """Intake for services that cannot import DOX: ``path`` must lie under DOX_INBOX_ROOT.

    Its guarantee starts when a worker accepts the message: a message lost before
    that (e.g. Redis flushed) leaves no trace in DOX. Pass an idempotency key and
    re-send when in doubt.
    """
    try:
        _check_types(path, user, source, metadata, idempotency_key, workflow)
        workflow_id = submit(
            path,
            user=user,
            source=source,
            metadata=metadata,
            idempotency_key=idempotency_key,
            workflow=workflow,
            from_service=True,
        )
    except DoxError as exc:
        # Results are not stored, so say it where an operator looks: the worker log.
        log.error("dox.submit refused %r from user %r: %s", path, user, exc)
        return {"error": str(exc)}
    except OSError as exc:  # e.g. an unreadable inbox file: an answer, not a crash
        log.error("dox.submit could not read %r from user %r: %s", path, user, exc)
        return {"error": f"could not read {path!r}: {exc.strerror or exc}"}
    return {"workflow_id": workflow_id}


def _check_types(
    path: Any, user: Any, source: Any, metadata: Any, idempotency_key: Any, workflow: Any
) -> None:
    """A broker message's JSON can hold anything: refuse what ``submit`` cannot take."""
    for name, value, optional in (
        ("path", path, False),
        ("user", user, False),
        ("source", source, True),
        ("idempotency_key", idempotency_key, True),
        ("workflow", workflow, False),
    ):
        if not isinstance(value, str) and not (optional and value is None):
            raise SubmissionError(f"{name} must be a string, not {type(value).__name__}")
    if metadata is not None and not isinstance(metadata, dict):
        raise SubmissionError(f"metadata must be an object, not {type(metadata).__name__}")
