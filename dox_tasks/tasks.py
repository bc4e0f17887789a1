"""Celery tasks: one thin wrapper per step, plus the intake task.

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
from .runner import run_step
from .steps.publish import noop, publish
from .steps.recognize import recognize
from .steps.scan import scan
from .steps.store import store
from .steps.validate import validate

log = logging.getLogger(__name__)


@app.task(bind=True, name="dox.validate", max_retries=None)
def validate_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, validate, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.scan", max_retries=None)
def scan_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, scan, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.store", max_retries=None)
def store_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, store, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.recognize", max_retries=None)
def recognize_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, recognize, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.publish", max_retries=None)
def publish_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, publish, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.noop", max_retries=None)
def noop_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, noop, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.jobs.reap", max_retries=None)
def reap_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, jobs.reap_stuck_workflows, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.jobs.backup_database", max_retries=None)
def backup_database_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, jobs.backup_database, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.jobs.backup_config", max_retries=None)
def backup_config_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, jobs.backup_config, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.jobs.backup_documents", max_retries=None)
def backup_documents_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, jobs.backup_documents, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.jobs.maintenance", max_retries=None)
def maintenance_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, jobs.maintenance_weekly, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.jobs.retention", max_retries=None)
def retention_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    return run_step(self, jobs.retention_cleanup, workflow_id, step, definition_hash)


@app.task(bind=True, name="dox.jobs.sync", max_retries=None)
def sync_task(self: Task, workflow_id: str, step: str, definition_hash: str) -> dict[str, Any]:
    from .jobs.sync.run import start_sync

    return run_step(self, start_sync, workflow_id, step, definition_hash)


@app.task(name="dox.sync.probe", ignore_result=False)
def probe_task(
    workflow_id: str, service: str, url: str, timeout_s: float, slow_ms: int, deadline: float
) -> dict[str, Any]:
    """One health check of the team sync's chord; its answer is recorded in Postgres."""
    from . import runtime
    from .jobs.sync.probe import check
    from .jobs.sync.run import record_check

    rt = runtime.get()
    if rt.state.status_of([workflow_id]).get(workflow_id) not in ("queued", "running"):
        log.warning("ignored health check of %s for workflow %s: not a running sync", service, workflow_id)
        return {"skipped": True}
    health = check(service, url, float(timeout_s), int(slow_ms), float(deadline))
    record_check(rt, workflow_id, health)
    return health.to_dict()


@app.task(name="dox.sync.collect")
def collect_task(workflow_id: str) -> bool:
    """The chord body: every check answered; finish the sync."""
    from . import runtime
    from .jobs.sync.run import finish_sync

    return finish_sync(runtime.get(), workflow_id, deadline_passed=False)


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
