"""Step timings from the workers, in Prometheus multi-process mode.

A prefork worker runs steps in several child processes; each child writes its
observations to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and the main
process serves the sum (``MultiProcessCollector``). ``dox worker`` turns this on
when ``DOX_METRICS_PORT`` is set: :func:`prepare` must run before anything imports
``prometheus_client``, because the client picks its value storage at import time.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .names import STEP_BUCKETS, WORKER

DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
PORT_ENV = "DOX_METRICS_PORT"
_histogram: Any = None


def prepare() -> Path:
    """Give this worker (and the pool processes it forks) an empty metrics directory."""
    if "prometheus_client" in sys.modules and DIR_ENV not in os.environ:
        raise RuntimeError("prometheus_client was imported before the multi-process directory was set")
    given = os.environ.get(DIR_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):  # files of an earlier run would be summed in
            stale.unlink()
    else:
        folder = Path(tempfile.mkdtemp(prefix="dox-metrics-"))
        owner = os.getpid()

        def remove() -> None:  # pool processes inherit atexit handlers: only the parent removes it
            if os.getpid() == owner:
                shutil.rmtree(folder, ignore_errors=True)

        atexit.register(remove)
    os.environ[DIR_ENV] = str(folder)
    return folder


def observe(step: str, queue: str, outcome: str, seconds: float) -> None:
    """Record one step delivery (a no-op unless this worker serves metrics)."""
    global _histogram
    if DIR_ENV not in os.environ:
        return
    if _histogram is None:
        from prometheus_client import Histogram

        name = "dox_step_duration_seconds"
        _histogram = Histogram(
            name, WORKER[name], ["step", "queue", "outcome"], buckets=STEP_BUCKETS, registry=None
        )
    _histogram.labels(step, queue, outcome).observe(seconds)


def bind(host: str, port: int, auth: tuple[str, str] | None, **limits: Any) -> Any:
    """Bind the worker's metrics port now (a taken port stops the worker at start-up);
    ``limits`` are :func:`~dox_tasks.metrics.http.make_server_for`'s timeout and cap."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from .http import make_server_for

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return make_server_for(registry, host, port, auth, **limits)
