"""``dox flower``, ``dox health``, ``dox metrics serve | show`` and ``dox report``: watching DOX run."""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any

import click

from ..app import app
from ..errors import ConfigError
from ..health import gather
from ..report import build
from ..settings import basic_auth_from_env
from ..terminal import safe, shown, styled, table
from .common import out, parse_since, runtime


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def flower(ctx: click.Context) -> None:
    """Flower for DOX's app, behind basic auth from DOX_FLOWER_USER / DOX_FLOWER_PASSWORD.

    Refuses to start without them unless --unsafe-no-auth. The credentials reach Flower
    through its environment (FLOWER_BASIC_AUTH), never the command line (`ps` shows that).
    History persists in $DOX_STATE_DIR/flower.db across restarts. Listens on 127.0.0.1
    unless given --address (or FLOWER_ADDRESS); compose passes --address=0.0.0.0.
    """

    args = list(ctx.args)
    unsafe = "--unsafe-no-auth" in args
    args = [a for a in args if a != "--unsafe-no-auth"]
    settings = runtime().settings
    if "--help" not in args:
        auth = basic_auth_from_env(
            "DOX_FLOWER_USER", "DOX_FLOWER_PASSWORD", "Flower shows every task's arguments", unsafe
        )
        if auth:
            os.environ["FLOWER_BASIC_AUTH"] = flower_basic_auth(*auth)
        settings.state.mkdir(parents=True, exist_ok=True)
    if not any(a.startswith("--address") for a in args) and "FLOWER_ADDRESS" not in os.environ:
        args.append("--address=127.0.0.1")
    state = settings.state / "flower.db"
    _metrics_behind_auth()
    app.start(argv=["flower", "--persistent=True", f"--db={state}", "--state_save_interval=60000", *args])


def _metrics_behind_auth() -> None:
    """Flower serves ``/metrics`` (every task name and count) without asking for the
    credentials its other pages ask for; DOX puts it behind the same basic auth. Flower has
    no option for this, so its handler is wrapped with tornado's ``authenticated``, which
    calls the same ``get_current_user`` as every other page (``/healthcheck`` stays open:
    it says only "OK")."""
    import tornado.web
    from flower.views.monitor import Metrics

    if not getattr(Metrics.get, "_dox_auth", False):
        wrapped = tornado.web.authenticated(Metrics.get)
        wrapped._dox_auth = True  # type: ignore[attr-defined]
        Metrics.get = wrapped


def flower_basic_auth(user: str, password: str) -> str:
    """FLOWER_BASIC_AUTH's ``user:password``, refusing what Flower would misread.

    Flower splits the value on commas into several ``user:password`` entries, so
    ``ops:pa,ss`` would let in the password ``ss`` with an empty user; basic auth ends
    the user at the first colon; and non-ASCII is encoded differently by browsers and
    clients, so it fails in ways that look like a wrong password.
    """
    problems = []
    for env, value in (("DOX_FLOWER_USER", user), ("DOX_FLOWER_PASSWORD", password)):
        if "," in value:
            problems.append(f"{env} contains a comma (Flower reads it as a list of users)")
        if not value.isascii() or not value.isprintable():
            problems.append(f"{env} must be printable ASCII")
    if ":" in user:
        problems.append("DOX_FLOWER_USER contains a colon (basic auth ends the user name there)")
    if problems:
        raise ConfigError("refusing to start Flower: " + "; ".join(problems) + ". Choose other credentials.")
    return f"{user}:{password}"


@click.command("health")
@click.option("--json", "as_json", is_flag=True)
def health_cmd(as_json: bool) -> None:
    """The morning checklist. Exit 2: Redis/Postgres down or no worker; 1: degraded; 0: ok."""

    report = gather(runtime(), app).to_dict()
    if as_json:
        click.echo(json.dumps(report, sort_keys=True, default=str))
    else:
        _print_health(report)
    sys.exit(report["exit_code"])


def _print_health(r: dict[str, Any]) -> None:
    colour = {"ok": "green", "degraded": "yellow", "down": "red"}[r["status"]]
    down = (r.get("sync") or {}).get("services_down") or []
    # The verdict is DOX's own; the teams' services the 09:00 sync found down are shown
    # beside it, never mixed in (they do not change the exit code).
    others = f" — {len(down)} team service(s) down at the last sync, not DOX's" if down else ""
    out.print(f"[bold {colour}]DOX {r['status'].upper()}[/]{others}")
    for line in r["fatal"]:
        out.print(f"  [red]✗ {safe(line)}[/]")
    for line in r["problems"]:
        out.print(f"  [yellow]! {safe(line)}[/]")
    for name in ("redis", "postgres", "clamd", "api"):
        if name not in r:
            continue  # the API is checked only when DOX_API_URL is set
        c = r.get(name) or {}
        mark = "[green]ok[/]" if c.get("ok") else "[red]down[/]"
        out.print(f"  {name:<9} {mark} {safe(c.get('version') or c.get('note') or c.get('error') or '')}")
    workers = r.get("workers") or {}
    if workers:
        cells = [
            [q, (r.get("queues") or {}).get(q), ", ".join(hosts) or styled("none", "red")]
            for q, hosts in workers["per_queue"].items()
        ]
        out.print(table(("queue", "waiting", "consumers"), cells, title="queues"))
    y = r.get("yesterday") or {}
    if y:
        out.print(
            f"  yesterday {y['date']}: {y['total']} workflows, {y['success']} success, {y['failed']} failed,"
            f" {y['rejected']} rejected, {y['duplicate']} duplicate,"
            f" average {shown(y['average_duration_s'])} s"
        )
    b = r.get("backup") or {}
    if "age_h" in b:
        out.print(
            f"  last backup: {b['last_ok'] or 'never'} ({b['age_h']} h ago)"
            if b["last_ok"]
            else "  last backup: never"
        )
    s = r.get("sync") or {}
    if s:
        down = s.get("services_down") or []
        out.print(
            safe(
                f"  last team sync: {s.get('last_run') or 'never'} {s.get('status') or ''};"
                f" services down: {', '.join(down) or 'none'}"
            )
        )


@click.group()
def metrics() -> None:
    """Prometheus metrics (counts from Postgres; see monitoring/ for Prometheus and Grafana)."""


@metrics.command("serve")
@click.option("--port", default=9808, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--address", default=None, help="address to listen on [default: DOX_METRICS_HOST, else 127.0.0.1]"
)
@click.option("--unsafe-no-auth", is_flag=True, help="serve without basic auth (local use only)")
def metrics_serve(port: int, address: str | None, unsafe_no_auth: bool) -> None:
    """Serve the exporter behind basic auth from DOX_METRICS_USER / DOX_METRICS_PASSWORD.

    Workflow counts come from the results layer, so they are right however many
    worker processes and containers did the work. Each scrape reads Postgres and the
    broker and pings the workers (up to 1 s).
    """
    from prometheus_client import CollectorRegistry

    from ..metrics.exporter import DoxCollector
    from ..metrics.http import credentials, make_server_for

    auth = credentials(unsafe_no_auth)
    s = runtime().settings
    address = address or s.metrics_host
    registry = CollectorRegistry()
    registry.register(DoxCollector(runtime(), app))
    limits = {"request_timeout": s.metrics_timeout_s, "max_connections": s.metrics_max_connections}
    httpd = make_server_for(registry, address, port, auth, **limits)
    click.echo(f"dox metrics on http://{address}:{port}/metrics" + ("" if auth else " (no auth)"), err=True)
    httpd.serve_forever()


@metrics.command("show")
def metrics_show() -> None:
    """Print one scrape's worth of the exporter's metrics (no server)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from ..metrics.exporter import DoxCollector

    registry = CollectorRegistry()
    registry.register(DoxCollector(runtime(), app))
    click.echo(generate_latest(registry).decode(), nl=False)


def _reasons(counted: list[Any]) -> str:
    return ", ".join(f"{reason} ({n})" for reason, n in counted) or "none"


@click.command("report")
@click.argument("kind", type=click.Choice(["daily", "weekly"]), required=False)
@click.option("--since", default=None, help="from then until now instead: e.g. 24h, today, 2026-12-07")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
def report_cmd(kind: str | None, since: str | None, fmt: str) -> None:
    """Yesterday (daily, the default), the last 7 UTC days (weekly), or --since a time until
    now, against the runbook's targets. Every form says the window it covers (UTC)."""

    if kind and since:
        raise click.UsageError("give daily, weekly or --since (which reports from then until now), not both")
    r = build(runtime(), kind or ("since" if since else "daily"), since=parse_since(since) if since else None)
    if fmt == "json":
        click.echo(json.dumps(r, sort_keys=True))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["metric", "value"])
        for key, value in r.items():
            writer.writerow([key, json.dumps(value) if isinstance(value, list) else value])
        return
    mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "n/a"}
    title = "DOX report" if r["report"] == "since" else f"DOX {r['report']} report"
    out.print(f"[bold]{title}[/], {r['window']}")
    out.print(
        f"  {r['total']} documents: {r['success']} success, {r['failed']} failed, {r['rejected']} rejected,"
        f" {r['duplicate']} duplicate, {r['cancelled']} cancelled, {r['in_flight']} in flight"
    )
    rate = "n/a" if r["success_rate"] is None else f"{r['success_rate']:.1%}"
    out.print(f"  success rate {rate} (target 95%): {mark[r['success_rate_met']]}")
    out.print(
        f"  duration p50 {shown(r['p50_duration_s'])} s, p95 {shown(r['p95_duration_s'])} s (target 30 s):"
        f" {mark[r['p95_duration_met']]}"
    )
    out.print(f"  scan p95 {shown(r['p95_scan_s'])} s (target 5 s): {mark[r['p95_scan_met']]}")
    out.print(f"  top failures: {safe(_reasons(r['top_failure_reasons']))}")
    out.print(f"  top rejections: {safe(_reasons(r['top_rejection_reasons']))}")
    out.print(f"  rate-limit hits: {r['rate_limit_hits']}, infected: {r['infected']}")
