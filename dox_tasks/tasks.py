"""Celery tasks: one thin wrapper per step (built from a table), the sync's chord tasks,
and the intake task.

Step tasks have ``max_retries=None``: DOX counts attempts itself, in the database
(Celery's ``retry(max_retries=None)`` falls back to the task's own cap, which
would silently end a workflow's retries at three).

Each step task only hands its arguments to :func:`dox_tasks.runner.run_step`
with the plain-Python step function. Upstream services may call ``dox.submit``
(and nothing else): a step message for a workflow that is not running at that
step is ignored and logged.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from .app import app
from .jobs import steps as jobs
from .jobs.sync.run import start_sync
from .runner import StepFn, run_step
from .steps.publish import noop, publish
from .steps.recognize import recognize
from .steps.registry import STEP_TASKS
from .steps.scan import scan
from .steps.store import store
from .steps.validate import validate

log = logging.getLogger(__name__)

#: Every registered step task (steps/registry.py) and the plain function it runs.
STEP_FUNCTIONS: dict[str, StepFn] = {
    "dox.validate": validate,
    "dox.scan": scan,
    "dox.store": store,
    "dox.recognize": recognize,
    "dox.publish": publish,
    "dox.noop": noop,
    "dox.jobs.reap": jobs.reap_stuck_workflows,
    "dox.jobs.backup_database": jobs.backup_database,
    "dox.jobs.backup_config": jobs.backup_config,
    "dox.jobs.backup_documents": jobs.backup_documents,
    "dox.jobs.maintenance": jobs.maintenance_weekly,
    "dox.jobs.retention": jobs.retention_cleanup,
    "dox.jobs.sync": start_sync,
}
if set(STEP_FUNCTIONS) != set(STEP_TASKS):  # a definition could name a task no worker runs
    raise RuntimeError(f"step tasks without a function: {set(STEP_TASKS) ^ set(STEP_FUNCTIONS)}")


def _step_task(name: str, fn: StepFn) -> Task:
    def run(self: Task, workflow_id: str, step: str, definition_hash: str, run: int = 0) -> str:
        # run 0: a message without a run number, which no DOX sender writes (refused).
        return run_step(self, fn, workflow_id, step, definition_hash, run)

    run.__name__ = run.__qualname__ = name.rsplit(".", 1)[-1] + "_task"
    run.__doc__ = f"Step task {name}: runs {fn.__module__}.{fn.__name__} under the runner."
    return app.task(bind=True, name=name, max_retries=None)(run)


step_tasks: dict[str, Task] = {name: _step_task(name, fn) for name, fn in STEP_FUNCTIONS.items()}


@app.task(name="dox.sync.probe", ignore_result=False)
def probe_task(workflow_id: str, service: str) -> dict[str, Any]:
    """One health check of the team sync's chord; its answer is recorded in Postgres."""
    from . import runtime
    from .jobs.sync.run import run_probe

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
    from . import runtime
    from .jobs.sync.run import finish_sync

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
    from .errors import DoxError
    from .intake import submit

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
    from .errors import SubmissionError

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
