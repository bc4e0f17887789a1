"""Which task may run on which queue — checked before a message's task is run at all.

A broker message names its task and carries its arguments; anyone who can write to
the broker chooses both. Upstream services may push onto ``intake`` (the Redis ACL in
docker-compose.yml lets their user do nothing else), so a consumer of ``intake`` runs
``dox.submit`` and nothing else. On every other queue only DOX's own tasks run, each
where it belongs; Celery's built-in canvas tasks (``celery.chain``, ``celery.group``,
``celery.chord``, …), which would run whatever a message describes, are refused —
except ``celery.chord_unlock`` on ``operations``, which the team sync's chord needs
when the result backend has no native join.

Then :mod:`dox_tasks.message_shape` checks the message's structure (headers, time
limits, ETA, arguments) and drops links and chains. A refused message is rejected
unrun (dropped, never requeued) and logged with its task name, id and queue — never
its arguments. Step tasks that pass here are checked
again by the runner against the workflow's recorded definition (see
:mod:`dox_tasks.runner`): this table decides what may run where, the runner whether
this delivery is the one the workflow expects.

The queue a message came from: kombu's Redis transport reports the routing key the
*sender* wrote into the message, not the list it was popped from. So the key counts
only if this worker consumes that queue, a worker consuming a single queue treats
every message as coming from it, and a worker may not consume ``intake`` together with
other queues (start-up refuses it; the in-process embedded broker is exempt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from celery import Task

from . import message_shape, runtime
from .contract import INTAKE_QUEUE, QUEUES
from .definitions.catalog import is_step_task
from .message_shape import MAX_ID

log = logging.getLogger("dox.queues")

SUBMIT_TASK = "dox.submit"

#: DOX's tasks that are not workflow steps, and the queue each runs on (their route).
HOME_QUEUES: dict[str, str] = {
    SUBMIT_TASK: INTAKE_QUEUE,
    "dox.sync.probe": "coordination",
    "dox.sync.collect": "operations",
    "celery.chord_unlock": "operations",
}

#: Queues a workflow step may run on (a definition's ``queue:`` may move a step there).
STEP_QUEUES = frozenset(q for q in QUEUES if q != INTAKE_QUEUE)


def refusal(task: str, queue: str | None) -> str | None:
    """Why ``task`` must not run when it arrives on ``queue``; ``None`` if it may."""
    if queue == INTAKE_QUEUE:
        if task == SUBMIT_TASK:
            return None
        return f"only {SUBMIT_TASK} runs on the {INTAKE_QUEUE!r} queue"
    if is_step_task(task):
        return None if queue in STEP_QUEUES else f"a step task arrived on the unknown queue {queue!r}"
    home = HOME_QUEUES.get(task)
    if home is None:
        return f"{task} is not a task DOX runs from a queue"
    if home == queue:
        return None
    if task == SUBMIT_TASK:
        return (
            f"{SUBMIT_TASK} arrived on the {queue!r} queue: submissions go to the {INTAKE_QUEUE!r} queue"
            f" (send_task({SUBMIT_TASK!r}, ..., queue={INTAKE_QUEUE!r}))"
        )
    return f"{task} runs only on the {home!r} queue, not {queue!r}"


def source_queue(claimed: str | None, consumed: Collection[str]) -> str | None:
    """The queue to judge a message by (see the module docstring on routing keys)."""
    if len(consumed) == 1:
        return next(iter(consumed))
    return claimed if claimed in consumed else None


def unknown_queues(consumes: Collection[str]) -> str | None:
    """Why a worker may not consume ``consumes``: a queue DOX never sends to (a typo would
    start a worker that waits for ever)."""
    unknown = sorted(set(consumes) - set(QUEUES))
    if unknown:
        return (
            f"DOX has no queue {', '.join(map(repr, unknown))}: its queues are {', '.join(QUEUES)}"
            " (dox worker -Q validation,scan,…)"
        )
    return None


def intake_mixing(consumes: Collection[str]) -> str | None:
    """Why a worker consuming ``consumes`` may not start (``intake`` must be alone)."""
    if INTAKE_QUEUE in consumes and len(consumes) > 1:
        others = ", ".join(sorted(q for q in consumes if q != INTAKE_QUEUE))
        return (
            f"the {INTAKE_QUEUE!r} queue needs a worker of its own (dox worker -Q {INTAKE_QUEUE}), not"
            f" together with {others}: upstream services can push onto {INTAKE_QUEUE!r}, and a worker"
            " consuming several queues cannot tell which one a message really came from"
        )
    return None


class GuardedTask(Task):
    """Celery's task class for every task of DOX's app (built-ins included): its
    consumer strategy refuses what :func:`refusal` refuses before a request exists."""

    def start_strategy(self, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
        handle = super().start_strategy(app, consumer, **kwargs)
        name = self.name

        def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
            queue: str | None = None
            try:
                consumed = {q.name for q in getattr(consumer.task_consumer, "queues", ())}
                claimed = (message.delivery_info or {}).get("routing_key")
                queue = source_queue(claimed, consumed)
                why = refusal(name, queue) if queue else f"it claims the queue {claimed!r}, not consumed here"
                if why is None and queue is not None:
                    settings = runtime.get().settings
                    why = message_shape.check(
                        message,
                        name,
                        queue,
                        max_time_limit=settings.workflow_timeout,
                        max_eta_s=settings.visibility_timeout,
                    )
            except Exception as exc:  # noqa: BLE001 - whatever a message holds, never the worker's end
                why = f"it cannot be read ({type(exc).__name__})"
            if why is None:
                return handle(message, body, ack, reject, callbacks, **kw)
            headers = message.headers if isinstance(message.headers, dict) else {}
            task_id = str(headers.get("id"))[:MAX_ID]
            log.error("refused task %s (id %s) from queue %s unrun: %s", name, task_id, queue, why)
            reject(log, consumer.connection_errors, False)
            return None

        return guarded
