"""``dox`` commands for the scheduled side: schedule, beat, jobs, backups.

Added to the main ``dox`` group by :func:`register` (called from :mod:`dox_tasks.cli`).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .cli import _iso, _rt, out
from .errors import ConfigError
from .terminal import safe, styled, table


@click.command("schedule")
@click.option("--json", "as_json", is_flag=True, help="one object per job")
def schedule_cmd(as_json: bool) -> None:
    """List the scheduled jobs: cron, timezone, catch-up policy, last and next run."""
    import beat_schedule

    rt = _rt()
    jobs = beat_schedule.build(rt.definitions.values())
    last = rt.state.last_runs(list(jobs))
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for name, job in sorted(jobs.items()):
        run = last.get(name)
        rows.append(
            {
                "name": name,
                "cron": job.cron,
                "timezone": job.timezone,
                "catch_up": job.catch_up.value,
                "deadline_s": job.deadline_s,
                "last_run": None
                if run is None
                else {
                    "slot": run["schedule_slot"],
                    "status": run["current_state"],
                    "started_at": _iso(run["created_at"]),
                    "workflow_id": run["workflow_id"],
                },
                "next_run": _iso(job.next_slot(now)),
            }
        )
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    cells = [
        [
            r["name"],
            r["cron"],
            r["timezone"],
            r["catch_up"],
            (r["last_run"] or {}).get("slot") or "never",
            (r["last_run"] or {}).get("status"),
            r["next_run"],
        ]
        for r in rows
    ]
    out.print(table(("job", "cron", "tz", "catch-up", "last run", "status", "next run"), cells))


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Start Celery Beat with DOX's scheduler (run two for availability: one sends)."""
    from .app import app

    if "--help" not in ctx.args and _rt().redis is None:
        raise click.UsageError(
            "dox beat needs Redis for its lock: set DOX_BROKER_URL=redis://… or DOX_REDIS_URL"
        )

    app.start(argv=["beat", "--loglevel=INFO", "-S", "dox_tasks.jobs.beat:DoxScheduler", *ctx.args])


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
    import os

    from .app import app
    from .settings import basic_auth_from_env

    args = list(ctx.args)
    unsafe = "--unsafe-no-auth" in args
    args = [a for a in args if a != "--unsafe-no-auth"]
    settings = _rt().settings
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
    app.start(argv=["flower", "--persistent=True", f"--db={state}", "--state_save_interval=60000", *args])


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


def _start(name: str, actor: str | None, wait: bool, timeout: float, as_json: bool) -> dict[str, Any]:
    from .embedded import wait_for
    from .jobs.launch import run_now

    rt = _rt()
    if rt.settings.embedded:
        raise click.UsageError("jobs run on the workers: set DOX_BROKER_URL (and start `dox worker`)")
    launch = run_now(rt, name, actor)
    result: dict[str, Any] = {"job": name, "workflow_id": launch.workflow_id, "slot": launch.slot}
    if wait:
        row = wait_for(rt.state, [launch.workflow_id], timeout)[launch.workflow_id]
        result = dict(row.get("result") or {**result, "status": row["current_state"]})
        if row.get("detail"):
            result.setdefault("detail", row["detail"])
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
    else:
        for key, value in result.items():
            if not isinstance(value, dict | list):
                out.print(f"[bold]{key:>12}[/] {safe(value)}")
    return result


def _exit_for(results: list[dict[str, Any]], waited: bool) -> None:
    if waited and any(r.get("status") != "success" for r in results):
        sys.exit(1)


@click.command("health")
@click.option("--json", "as_json", is_flag=True)
def health_cmd(as_json: bool) -> None:
    """The morning checklist. Exit 2: Redis/Postgres down or no worker; 1: degraded; 0: ok."""
    from .app import app
    from .health import gather

    report = gather(_rt(), app).to_dict()
    if as_json:
        click.echo(json.dumps(report, sort_keys=True, default=str))
    else:
        _print_health(report)
    sys.exit(report["exit_code"])


def _print_health(r: dict[str, Any]) -> None:
    colour = {"ok": "green", "degraded": "yellow", "down": "red"}[r["status"]]
    out.print(f"[bold {colour}]DOX {r['status'].upper()}[/]")
    for line in r["fatal"]:
        out.print(f"  [red]✗ {safe(line)}[/]")
    for line in r["problems"]:
        out.print(f"  [yellow]! {safe(line)}[/]")
    for name in ("redis", "postgres", "clamd"):
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
            f" {y['rejected']} rejected, {y['duplicate']} duplicate, average {y['average_duration_s']} s"
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
def jobs() -> None:
    """Scheduled jobs, run by hand (recorded with slot manual:<time>)."""


@jobs.command("run")
@click.argument("name")
@click.option("--actor", default=None, help="who runs it (default: the OS user)")
@click.option("--wait", is_flag=True, help="wait for the result")
@click.option("--timeout", default=900.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_run(name: str, actor: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Run a scheduled job now; it does not use up its next scheduled slot."""
    _exit_for([_start(name, actor, wait, timeout, as_json)], wait)


@click.group()
def sync() -> None:
    """The team coordination sync (daily at 09:00 UTC under Beat)."""


@sync.command("run")
@click.option("--actor", default=None)
@click.option("--wait", is_flag=True, help="wait and print per service and per team")
@click.option("--timeout", default=900.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def sync_run(actor: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Run the sync now (recorded with slot manual:<time>; the 09:00 slot stays free)."""
    from .jobs.sync import SYNC_JOB

    result = _start(SYNC_JOB, actor, wait, timeout, as_json)
    if wait and not as_json:
        _print_sync(result)
    _exit_for([result], wait)


def _print_sync(result: dict[str, Any]) -> None:
    colours = {"up": "green", "degraded": "yellow", "down": "red"}
    services = [
        [name, styled(s["status"], colours.get(s["status"], "white")), s["latency_ms"] or "", s["cause"]]
        for name, s in sorted((result.get("services") or {}).items())
    ]
    out.print(table(("service", "status", "ms", "cause"), services, title="services"))
    teams = [
        [
            name,
            "yes" if t["blocked"] else "",
            "YES" if t["escalated"] else "",
            ", ".join(b["service"] for b in t["blockers"]),
        ]
        for name, t in sorted((result.get("teams") or {}).items())
    ]
    out.print(table(("team", "blocked", "escalated", "blocked by"), teams, title="teams"))


@click.group()
def backup() -> None:
    """Backups of the database, the configuration and the documents."""


@backup.command("run")
@click.option(
    "--kind",
    type=click.Choice(["database", "config", "documents", "all"]),
    default="all",
    show_default=True,
)
@click.option("--actor", default=None)
@click.option("--wait", is_flag=True)
@click.option("--timeout", default=900.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def backup_run(kind: str, actor: str | None, wait: bool, timeout: float, as_json: bool) -> None:
    """Back up now (the workers do it; recorded like the nightly run)."""
    kinds = ["database", "config", "documents"] if kind == "all" else [kind]
    _exit_for([_start(f"backup_{k}", actor, wait, timeout, as_json) for k in kinds], wait)


@backup.command("list")
@click.option("--kind", default=None)
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def backup_list(kind: str | None, limit: int, as_json: bool) -> None:
    """The recorded backups, newest first."""
    from .jobs import records

    rows = records.backups(_rt().state, kind, limit)
    if as_json:
        for r in rows:
            click.echo(
                json.dumps({**r, "created_at": _iso(r["created_at"]), "verified_at": _iso(r["verified_at"])})
            )
        return
    cells = [
        [
            r["id"],
            r["kind"],
            _iso(r["created_at"]),
            r["status"],
            r["verified"],
            r["size"] or "",
            r["path"] if r["status"] == "ok" else (r["detail"] or r["path"]),
        ]
        for r in rows
    ]
    out.print(table(("id", "kind", "created", "status", "verified", "size", "path / detail"), cells))


@backup.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--restore", "full", is_flag=True, help="also restore into a scratch database and compare")
def backup_verify(file: Path, full: bool) -> None:
    """Check an archive: checksum and read-back (and a scratch restore with --restore)."""
    from .jobs import backup as bk

    rt = _rt()
    bk.verify_readback(file, rt.settings.db_url)
    click.echo(f"{file}: checksum ok, reads back")
    if full:
        counts = bk.verify_by_restore(file, rt.settings.db_url)
        click.echo(f"{file}: restored into a scratch database; row counts match the recorded ones: {counts}")


@backup.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--into", "into", required=True, help="a NEW database to create and restore into")
@click.option("--actor", default=None, help="who (default: the OS user)")
@click.option("--reason", default=None, help="why (kept with the action)")
def backup_restore(file: Path, into: str, actor: str | None, reason: str | None) -> None:
    """Restore a database archive into a new database (never over an existing one)."""
    from .jobs import backup as bk
    from .operator import record_action

    rt = _rt()
    counts = bk.restore(file, rt.settings.db_url, into)
    record_action(rt, "backup.restore", actor, reason, None, file=str(file), into=into, row_counts=counts)
    try:
        expected = bk.recorded_counts(file)
    except bk.BackupError:
        expected = None
    click.echo(json.dumps({"restored_into": into, "row_counts": counts, "recorded_row_counts": expected}))
    if expected is not None and counts != expected:
        click.echo("row counts differ from the ones recorded at backup time", err=True)
        sys.exit(1)


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

    from .app import app
    from .metrics.exporter import DoxCollector
    from .metrics.http import credentials, make_server_for

    auth = credentials(unsafe_no_auth)
    s = _rt().settings
    address = address or s.metrics_host
    registry = CollectorRegistry()
    registry.register(DoxCollector(_rt(), app))
    limits = {"request_timeout": s.metrics_timeout_s, "max_connections": s.metrics_max_connections}
    httpd = make_server_for(registry, address, port, auth, **limits)
    click.echo(f"dox metrics on http://{address}:{port}/metrics" + ("" if auth else " (no auth)"), err=True)
    httpd.serve_forever()


@metrics.command("show")
def metrics_show() -> None:
    """Print one scrape's worth of the exporter's metrics (no server)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from .app import app
    from .metrics.exporter import DoxCollector

    registry = CollectorRegistry()
    registry.register(DoxCollector(_rt(), app))
    click.echo(generate_latest(registry).decode(), nl=False)


def register(group: click.Group) -> None:
    from .cli_workflows import documents, intake, quarantine, report_cmd, workflows

    for command in (
        flower,
        health_cmd,
        schedule_cmd,
        beat,
        jobs,
        sync,
        backup,
        workflows,
        intake,
        report_cmd,
        quarantine,
        documents,
        metrics,
    ):
        group.add_command(command)
