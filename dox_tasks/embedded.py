"""The embedded default: a real Celery worker inside this process.

``dox run`` with no configuration uses kombu's in-memory broker and an
in-process worker with the ``solo`` pool — the same task code path a production
worker runs (task ids, hostnames, acks, retries), never Celery's eager mode.
Untrusted parsing still happens in sandboxed child processes, so a hostile PDF
cannot take this process down even though the solo pool has no time limits.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker

from .contract import INTAKE_QUEUE, LIVE_STATES, QUEUES
from .db.store import StateStore

POLL_S = 0.05


@contextmanager
def local_worker(app: Celery, loglevel: str = "WARNING") -> Iterator[Any]:
    """Run a solo-pool worker in a thread of this process, consuming every DOX queue but
    ``intake`` (this process submits in-process; intake needs a worker of its own)."""
    with start_worker(
        app,
        queues=[q for q in QUEUES if q != INTAKE_QUEUE],
        pool="solo",
        concurrency=1,
        perform_ping_check=False,
        loglevel=loglevel,
        shutdown_timeout=30.0,
        hostname=f"dox-local@{socket.gethostname()}",
    ) as worker:
        yield worker


def wait_for(
    state: StateStore,
    workflow_ids: list[str],
    timeout: float,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Poll the results layer (the truth, not Celery's results) until all ids end or time runs out."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    pending = list(dict.fromkeys(workflow_ids))
    interval = POLL_S
    while pending and time.monotonic() < deadline:
        states = state.status_of(pending)
        finished = [i for i, st in states.items() if st not in LIVE_STATES]
        if finished:
            done.update(state.get_workflows(finished))
            pending = [i for i in pending if i not in done]
            if on_progress:
                on_progress(len(finished))
            interval = POLL_S
        else:  # back off while nothing happens, so polling never competes with the work
            interval = min(interval * 1.5, 0.5)
        if pending:
            time.sleep(interval)
    if pending:
        done.update(state.get_workflows(pending))
    return done
