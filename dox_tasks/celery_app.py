"""The Celery application and its configuration.

Choices that matter (see docs/ARCHITECTURE.md):

* JSON only — a pickle message is refused (pickle in a broker is remote code execution).
* ``acks_late`` + ``reject_on_worker_lost`` — a killed worker's step is redelivered;
  DOX counts deliveries in the database and fails a poison message instead of looping.
* One queue per step kind, so scanning scales on its own.
* ``prefetch_multiplier=1`` — a worker holds one message per process, so the
  visibility timeout only runs for messages actually being worked on.
* Start-up refuses configurations where a time limit or retry delay reaches the
  Redis visibility timeout, an invalid definition, or a scan worker without clamd.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, bootsteps
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init
from kombu import Queue

from . import runtime
from .contract import INTAKE_QUEUE, QUEUES
from .db.schema import schema_behind
from .definitions.catalog import STEPS, resolve
from .definitions.schema import retry_budget
from .errors import DoxError, StateStoreUnavailable
from .inbox import pin_root
from .logs import install
from .queue_policy import HOME_QUEUES, GuardedTask, intake_mixing, unknown_queues
from .settings import Settings, load, longest_retry_wait

log = logging.getLogger(__name__)


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.broker_key_prefix:
        transport["global_keyprefix"] = settings.broker_key_prefix
    if settings.embedded:
        # kombu's in-memory transport is polled; its 1 s default would add a second per step.
        transport["polling_interval"] = 0.01
    routes = {name: {"queue": kind.queue} for name, kind in STEPS.items()}
    routes.update({name: {"queue": queue} for name, queue in HOME_QUEUES.items()})
    return {
        "broker_url": settings.broker_url,
        # A queue item that is not a message is dropped, not the worker's end. (Not for
        # rediss://: naming the transport would lose kombu's TLS defaults for that scheme.)
        "broker_transport": (
            "dox_tasks.broker_transport:Transport" if settings.broker_url.startswith("redis://") else None
        ),
        # Results are ignored except where a chord needs them (the team sync's checks).
        "result_backend": settings.result_backend or _default_backend(settings),
        "result_expires": 86400,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A step that raised is acked (DOX recorded why); one killed by the hard time
        # limit is requeued, so its next delivery is counted and can end as poison.
        "task_acks_on_failure": True,
        "task_acks_on_timeout": False,
        "task_ignore_result": True,
        "task_track_started": False,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.workflow_concurrency,
        "worker_max_memory_per_child": settings.worker_max_memory_mib * 1024,  # KiB
        "task_time_limit": settings.workflow_timeout,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_default_queue": "validation",
        "task_routes": routes,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        # Task events cost several Redis writes per task; Flower switches them on at
        # run time (enable_events), so they are off unless someone is watching.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def _default_backend(settings: Settings) -> str | None:
    if settings.embedded:
        return "cache+memory://"
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return None


def check_step_retries(settings: Settings, consumes: set[str] | None = None) -> None:
    """A definition's own `retry:` must also stay below the visibility timeout
    (for the steps this worker runs: those on the queues it ``consumes``)."""
    rt = runtime.get()
    for definition in rt.definitions.values():
        for step in definition.model.steps:
            info = resolve(step.task)
            queue = step.queue or (info.queue if info else None)
            if consumes is not None and queue not in consumes:
                continue
            attempts, backoff, delay = retry_budget(step, rt.settings)
            longest = longest_retry_wait(attempts, backoff, delay)
            if longest >= settings.visibility_timeout:
                raise DoxError(
                    f"{definition.source}: step {step.name!r} may wait {longest:.0f}s before a retry"
                    f" (retry: attempts={attempts}, backoff={backoff}, delay={delay}), which reaches"
                    f" the broker visibility_timeout DOX_VISIBILITY_TIMEOUT={settings.visibility_timeout}s"
                )


def check_schema() -> None:
    """Refuse to run steps against a schema older than this code's (its functions would be
    missing and every delivery would fail); a database that is down is the steps' problem."""
    try:
        behind = schema_behind(runtime.get().state)
    except StateStoreUnavailable as exc:
        log.warning("could not check the results database's schema at start-up: %s", exc)
        return
    if behind:
        raise DoxError(f"the results database's schema is at revision {behind}: run `dox db upgrade` first")


class StartupChecks(bootsteps.Step):
    """Refuse to start a worker that cannot work, with a message naming the problem."""

    def __init__(self, worker: Any, **kwargs: Any):
        settings = runtime.get().settings
        try:
            settings.check()
            queues = worker.app.amqp.queues
            if getattr(queues, "_consume_from", ()) is None:
                # No -Q (Celery would consume every queue): every queue but intake, which
                # needs a worker of its own.
                queues.select([q for q in QUEUES if q != INTAKE_QUEUE])
            consumes = set(queues.consume_from)
            unknown = unknown_queues(consumes)
            if unknown:
                raise DoxError(unknown)
            mixing = intake_mixing(consumes)
            if mixing and not settings.embedded:
                raise DoxError(mixing)
            check_step_retries(settings, consumes)  # also loads and validates every definition
            if settings.inbox_root is not None:
                pin_root(settings.inbox_root)  # resolved now: a symlink swapped in later fails closed
            runtime.get().templates  # noqa: B018
            if (
                "scan" in consumes
                and settings.clamav_enabled
                and not settings.clamd_url
                and not settings.embedded
            ):
                raise DoxError(
                    "this worker consumes the scan queue with CLAMAV_ENABLED=true but no"
                    " DOX_CLAMD_URL is set: set DOX_CLAMD_URL=tcp://host:3310 (or"
                    " unix:///path), or CLAMAV_ENABLED=false to store documents unscanned"
                )
            if not settings.embedded:
                check_schema()  # last: configuration problems are reported first
        except DoxError as exc:
            print(f"dox worker refused to start:\n{exc}", file=sys.stderr)
            raise SystemExit(1) from exc
        super().__init__(worker, **kwargs)


def create_app(settings: Settings | None = None) -> Celery:
    app = Celery("dox", task_cls=GuardedTask)
    app.conf.update(celery_config(settings or load()))
    app.steps["worker"].add(StartupChecks)
    return app


def reconfigure(app: Celery, settings: Settings) -> None:
    """Point the app and the runtime at new settings (tests, benchmarks).

    Pooled broker connections made with the old settings are closed first.
    """
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    # The remote-control mailbox caches the producer pool it first saw (kombu cached_property).
    app.control.mailbox.__dict__.pop("producer_pool", None)
    app.conf.update(celery_config(settings))
    # The result backend is cached (per thread unless thread-safe): build it again on first use.
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)
    runtime.configure(settings)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    runtime.get().after_fork()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _structured_logs(logger: logging.Logger, **_: Any) -> None:
    """JSON lines with workflow_id/step/task_id (see :mod:`dox_tasks.logs`)."""

    install(logger)
