"""``dox worker``: a Celery worker, and its step-timing metrics endpoint when asked for one."""

from __future__ import annotations

import os
from typing import Any

import click
from celery.signals import worker_process_init, worker_ready

from ..app import app
from ..metrics import worker as worker_metrics
from .common import runtime


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker (extra arguments go to `celery worker`, e.g. -Q scan -c 4)."""

    argv = ["worker", "--loglevel=INFO", *ctx.args]
    port = os.environ.get(worker_metrics.PORT_ENV)
    if port and "--help" not in ctx.args:
        _serve_worker_metrics(int(port))
    app.worker_main(argv=argv)


def _serve_worker_metrics(port: int) -> None:
    """Step timings at :port (DOX_METRICS_PORT), summed over the pool's processes.

    The port is bound now, so a taken port stops the worker before it takes work;
    serving starts once the pool has forked (``worker_ready``).
    """

    worker_metrics.prepare()  # before prometheus_client is imported (it picks its storage then)
    from ..metrics.http import credentials, serve_in_background

    auth = credentials(unsafe_no_auth=os.environ.get("DOX_METRICS_UNSAFE_NO_AUTH") == "1")
    s = runtime().settings
    limits = {"request_timeout": s.metrics_timeout_s, "max_connections": s.metrics_max_connections}
    httpd = worker_metrics.bind(s.metrics_host, port, auth, **limits)  # DOX_METRICS_HOST, else loopback

    @worker_ready.connect(weak=False)
    def _start(**_: Any) -> None:
        serve_in_background(httpd)

    @worker_process_init.connect(weak=False)
    def _not_in_children(**_: Any) -> None:
        httpd.socket.close()  # pool processes inherit the listening socket; only the parent serves
