"""``dox schedule``, ``beat``, ``jobs run``, ``sync run`` and ``backup``: the scheduled side."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..app import app
from ..audit import record_action
from ..db import records
from ..embedded import wait_for
from ..jobs import backup as bk
from ..jobs.launch import run_now
from ..jobs.sync import SYNC_JOB
from ..terminal import shown, styled, table
from .common import actor_option, iso, out, reason_option, runtime, short_ids, wide_option


@click.command("schedule")
@wide_option
@click.option("--json", "as_json", is_flag=True, help="one object per job")
def schedule_cmd(wide: bool, as_json: bool) -> None:
    """List the scheduled jobs: cron, timezone, catch-up policy, the last run's slot and when it
    ran, and the next run."""
    import beat_schedule

    rt = runtime()
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
                    "started_at": iso(run["created_at"]),
                    "workflow_id": run["workflow_id"],
                },
                "next_run": iso(job.next_slot(now)),
            }
        )
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    short = short_ids(((r["last_run"] or {}).get("workflow_id") for r in rows), wide)
    cells = [
        [
            r["name"],
            r["cron"],
            r["timezone"],
            r["catch_up"],
            (r["last_run"] or {}).get("slot") or "never",
            (r["last_run"] or {}).get("started_at"),
            (r["last_run"] or {}).get("status"),
            short.get((r["last_run"] or {}).get("workflow_id") or ""),
            r["next_run"],
        ]
        for r in rows
    ]
    # A run's slot (the cron time it belongs to) and when it actually started can differ:
    # a catch-up after an outage, a manual run. Both are shown.
    columns = ("job", "cron", "tz", "catch-up", "last slot", "ran at", "status", "workflow", "next run")
    out.print(table(columns, cells, unbroken=("workflow",)))


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Start Celery Beat with DOX's scheduler (run two for availability: one sends)."""

    if "--help" not in ctx.args and runtime().redis is None:
        raise click.UsageError(
            "dox beat needs Redis for its lock: set DOX_BROKER_URL=redis://… or DOX_REDIS_URL"
        )

    app.start(argv=["beat", "--loglevel=INFO", "-S", "dox_tasks.jobs.beat:DoxScheduler", *ctx.args])


def _start(name: str, actor: str | None, wait: bool, timeout: float, as_json: bool) -> dict[str, Any]:
    rt = runtime()
    if rt.settings.embedded:
        raise click.UsageError("jobs run on the workers: set DOX_BROKER_URL (and start `dox worker`)")
    launch = run_now(rt, name, actor)
    result: dict[str, Any] = {"job": name, "workflow_id": launch.workflow_id, "slot": launch.slot}
    if wait:
        row = wait_for(rt.state, [launch.workflow_id], timeout)[launch.workflow_id]
        # The job's own result, and the run's state as "status": what the exit code follows
        # (a sync that ran and found services down succeeded; one that could not run failed).
        result = {**result, **(row.get("result") or {}), "status": row["current_state"]}
        if row.get("detail"):
            result.setdefault("detail", row["detail"])
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
    else:
        for key, value in result.items():
            if not isinstance(value, dict | list):
                out.print(f"[bold]{key:>12}[/] {shown(value)}")
    return result


def _exit_for(results: list[dict[str, Any]], waited: bool) -> None:
    if waited and any(r.get("status") != "success" for r in results):
        sys.exit(1)


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

    result = _start(SYNC_JOB, actor, wait, timeout, as_json)
    if wait and not as_json:
        _print_sync(result)
    _exit_for([result], wait)


def _print_sync(result: dict[str, Any]) -> None:
    colours = {"up": "green", "degraded": "yellow", "down": "red"}
    services = [
        [name, styled(s["status"], colours.get(s["status"], "white")), s["latency_ms"], s["cause"]]
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
    rows = records.backups(runtime().state, kind, limit)
    if as_json:
        for r in rows:
            click.echo(
                json.dumps({**r, "created_at": iso(r["created_at"]), "verified_at": iso(r["verified_at"])})
            )
        return
    cells = [
        [
            r["id"],
            r["kind"],
            iso(r["created_at"]),
            r["status"],
            r["verified"],
            r["size"],
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

    rt = runtime()
    bk.verify_readback(file, rt.settings.db_url)
    click.echo(f"{file}: checksum ok, reads back")
    if full:
        counts = bk.verify_by_restore(file, rt.settings.db_url)
        click.echo(f"{file}: restored into a scratch database; row counts match the recorded ones: {counts}")


@backup.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--into", "into", required=True, help="a NEW database to create and restore into")
@actor_option
@reason_option
def backup_restore(file: Path, into: str, actor: str | None, reason: str | None) -> None:
    """Restore a database archive into a new database (never over an existing one)."""

    rt = runtime()
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
