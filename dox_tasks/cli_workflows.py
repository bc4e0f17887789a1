"""``dox workflows list | show | retry | cancel``, ``dox intake``, ``dox report``, ``dox quarantine``."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy import select

from .cli import COLOURS, _iso, _rt, out
from .contract import WorkflowState
from .db.store import WS, aware
from .errors import DoxError
from .operator import RETRYABLE, retry, retryable_since
from .terminal import safe, styled
from .terminal import table as _table

DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d`` → a timedelta (a clear error for anything else)."""
    m = DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: use a number and a unit, e.g. 30m, 24h, 7d")
    return timedelta(**{UNITS[m.group(2)]: int(m.group(1))})


def _row(r: dict[str, Any]) -> dict[str, Any]:
    duration = None
    if r["finished_at"]:
        duration = round((aware(r["finished_at"]) - aware(r["created_at"])).total_seconds(), 3)
    return {
        "workflow_id": r["workflow_id"],
        "rule_name": r["rule_name"],
        "status": r["current_state"],
        "reason": r["reason"],
        "step": r["current_step"],
        "file": r["file_name"],
        "user": r["user_id"],
        "slot": r["schedule_slot"],
        "run": r.get("run", 1),
        "created_at": _iso(r["created_at"]),
        "finished_at": _iso(r["finished_at"]),
        "duration_s": duration,
    }


@click.group()
def workflows() -> None:
    """List and inspect workflows (document workflows and scheduled runs)."""


@workflows.command("list")
@click.option("--status", type=click.Choice([s.value for s in WorkflowState]), default=None)
@click.option("--rule", default=None, help="definition name, e.g. process_document_upload")
@click.option("--since", default="24h", show_default=True, help="e.g. 30m, 24h, 7d")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="one object per line")
def list_cmd(status: str | None, rule: str | None, since: str, limit: int, as_json: bool) -> None:
    """Newest first."""
    cutoff = datetime.now(UTC) - parse_duration(since)
    q = select(WS).where(WS.c.created_at >= cutoff).order_by(WS.c.created_at.desc()).limit(limit)
    if status:
        q = q.where(WS.c.current_state == status)
    if rule:
        q = q.where(WS.c.rule_name == rule)
    with _rt().state.tx() as conn:
        rows = [_row(dict(r)) for r in conn.execute(q).mappings()]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    cells = [
        [
            r["workflow_id"],
            r["rule_name"],
            styled(r["status"], COLOURS.get(r["status"], "white")),
            r["reason"],
            r["step"],
            r["file"] or r["slot"],
            r["created_at"],
            r["duration_s"] or "",
        ]
        for r in rows
    ]
    out.print(_table(("workflow", "rule", "status", "reason", "step", "file / slot", "created", "s"), cells))
    out.print(f"{len(rows)} workflow(s) since {cutoff.isoformat(timespec='seconds')}")


@workflows.command("show")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True)
def show_cmd(workflow_id: str, as_json: bool) -> None:
    """One workflow: its row, every step attempt (timings, errors) and its events."""
    rt = _rt()
    row = rt.state.get_workflow(workflow_id)
    steps = [
        {
            "step": s["step"],
            "attempt": s["attempt"],
            "run": s.get("run", 1),
            "state": s["state"],
            "worker": s["worker_hostname"],
            "started_at": _iso(s["started_at"]),
            "duration_ms": s["duration_ms"],
            "error": s["error"],
        }
        for s in rt.state.step_rows(workflow_id)
    ]
    events = [
        {"type": e["type"], "created_at": _iso(e["created_at"]), "id": e["id"]}
        for e in rt.state.events(workflow_id)
    ]
    report = {**_row(row), "detail": row["detail"], "steps": steps, "events": events, "result": row["result"]}
    if as_json:
        click.echo(json.dumps(report, sort_keys=True, default=str))
        return
    for key in (
        "workflow_id",
        "rule_name",
        "status",
        "reason",
        "detail",
        "file",
        "slot",
        "run",
        "created_at",
        "finished_at",
    ):
        if report.get(key) is not None:
            out.print(f"[bold]{key:>12}[/] {safe(report[key])}")
    cols = ("step", "run", "attempt", "state", "worker", "started", "ms", "error")
    keys = ("step", "run", "attempt", "state", "worker", "started_at", "duration_ms", "error")
    table = _table(cols, [[st[k] for k in keys] for st in steps], title="steps")
    out.print(table)
    for e in events:
        out.print(safe(f"  event {e['created_at']} {e['type']}"))


def _retried(result: dict[str, Any]) -> str:
    line = f"{result['workflow_id']} queued again from step {result['from_step']} (run {result['run']})"
    return safe(line + (f"; {result['warning']}" if result.get("warning") else ""), markup=False)


@workflows.command("retry")
@click.argument("workflow_id", required=False)
@click.option("--from-failed", is_flag=True, help="resume at the step that failed (default: from the start)")
@click.option(
    "--status",
    type=click.Choice(sorted(RETRYABLE)),
    default=None,
    help="bulk: every workflow that ended in this state within --since",
)
@click.option("--since", default=None, help="bulk: ended within, e.g. 1h (default 1h)")
@click.option("--rule", default=None, help="bulk: only this definition")
@click.option("--yes", is_flag=True, help="bulk: do not ask first")
@click.option("--actor", default=None, help="who (default: the OS user)")
@click.option("--reason", default=None, help="why (kept with the action)")
@click.option("--json", "as_json", is_flag=True)
def retry_cmd(
    workflow_id: str | None,
    from_failed: bool,
    status: str | None,
    since: str | None,
    rule: str | None,
    yes: bool,
    actor: str | None,
    reason: str | None,
    as_json: bool,
) -> None:
    """Run a failed or cancelled workflow again (same stored definition, same staged input).

    One workflow by id, or in bulk with --status (e.g. --status failed --since 1h), which
    lists what it would retry and asks first unless --yes.
    """
    rt = _rt()
    if workflow_id and (status or since or rule):
        raise click.UsageError("give a workflow id or --status/--since/--rule, not both")
    if workflow_id:
        result = retry(rt, workflow_id, from_failed, actor, reason)
        click.echo(json.dumps(result, sort_keys=True) if as_json else _retried(result))
        return
    if not status:
        raise click.UsageError("give a workflow id, or --status failed|cancelled [--since 1h] (bulk)")
    cutoff = datetime.now(UTC) - parse_duration(since or "1h")
    targets = retryable_since(rt, cutoff, status, rule)
    if not targets:
        click.echo(f"no {status} workflows ended since {_iso(cutoff)}; nothing to retry")
        return
    if not yes:
        if not as_json:
            rows = [[t["workflow_id"], t["rule_name"], t["reason"], _iso(t["finished_at"])] for t in targets]
            out.print(_table(("workflow", "rule", "reason", "ended"), rows))
        if not click.confirm(f"retry these {len(targets)} workflow(s)?", err=True):
            sys.exit(1)
    failures = 0
    for t in targets:
        try:
            result = retry(rt, t["workflow_id"], from_failed, actor, reason)
        except DoxError as exc:
            failures += 1
            result = {"workflow_id": t["workflow_id"], "status": "not retried", "error": str(exc)}
        if as_json:
            click.echo(json.dumps(result, sort_keys=True))
        elif "error" in result:
            click.echo(safe(f"{t['workflow_id']}: {result['error']}", markup=False), err=True)
        else:
            click.echo(_retried(result))
    if failures:
        sys.exit(1)


@workflows.command("cancel")
@click.argument("workflow_id")
@click.option("--actor", default=None, help="who (default: the OS user)")
@click.option("--reason", default=None, help="why (kept with the action)")
@click.option("--json", "as_json", is_flag=True)
def cancel_cmd(workflow_id: str, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Cancel a queued or running workflow; its remaining steps do nothing."""
    from .app import app
    from .operator import cancel

    result = cancel(_rt(), app, workflow_id, actor, reason)
    click.echo(
        json.dumps(result, sort_keys=True)
        if as_json
        else safe(f"{workflow_id} cancelled at step {result['step']}", markup=False)
    )


@click.command("report")
@click.argument("kind", type=click.Choice(["daily", "weekly"]))
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True
)
def report_cmd(kind: str, fmt: str) -> None:
    """Yesterday (daily) or the last 7 days (weekly) against the runbook's targets."""
    from .report import build

    r = build(_rt(), kind)
    if fmt == "json":
        click.echo(json.dumps(r, sort_keys=True))
        return
    if fmt == "csv":
        import csv
        import sys

        writer = csv.writer(sys.stdout)
        writer.writerow(["metric", "value"])
        for key, value in r.items():
            writer.writerow([key, json.dumps(value) if isinstance(value, list) else value])
        return
    mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "n/a"}
    out.print(f"[bold]DOX {kind} report[/] {r['from']} → {r['to']}")
    out.print(
        f"  {r['total']} documents: {r['success']} success, {r['failed']} failed, {r['rejected']} rejected,"
        f" {r['duplicate']} duplicate, {r['cancelled']} cancelled, {r['in_flight']} in flight"
    )
    rate = "n/a" if r["success_rate"] is None else f"{r['success_rate']:.1%}"
    out.print(f"  success rate {rate} (target 95%): {mark[r['success_rate_met']]}")
    out.print(
        f"  duration p50 {r['p50_duration_s']} s, p95 {r['p95_duration_s']} s (target 30 s):"
        f" {mark[r['p95_duration_met']]}"
    )
    out.print(f"  scan p95 {r['p95_scan_s']} s (target 5 s): {mark[r['p95_scan_met']]}")
    out.print(f"  top failures: {safe(r['top_failure_reasons'] or 'none')}")
    out.print(f"  top rejections: {safe(r['top_rejection_reasons'] or 'none')}")
    out.print(f"  rate-limit hits: {r['rate_limit_hits']}, infected: {r['infected']}")


@click.group()
def intake() -> None:
    """Pause and resume new submissions (work in flight continues)."""


def _print_intake(state: Any, as_json: bool) -> None:
    from dataclasses import asdict

    if as_json:
        click.echo(json.dumps(asdict(state), sort_keys=True))
    elif state.paused:
        out.print(
            f"[yellow]intake PAUSED[/] since {state.since} by {safe(state.actor)}:"
            f" {safe(state.reason or '(no reason)')}"
        )
    else:
        out.print("[green]intake open[/]")


_actor = click.option("--actor", default=None, help="who (default: the OS user)")
_reason = click.option("--reason", default=None, help="why (kept with the action)")


@intake.command("pause")
@_actor
@_reason
@click.option("--json", "as_json", is_flag=True)
def intake_pause(actor: str | None, reason: str | None, as_json: bool) -> None:
    from .operator import set_paused

    _print_intake(set_paused(_rt(), True, actor, reason), as_json)


@intake.command("resume")
@_actor
@_reason
@click.option("--json", "as_json", is_flag=True)
def intake_resume(actor: str | None, reason: str | None, as_json: bool) -> None:
    from .operator import set_paused

    _print_intake(set_paused(_rt(), False, actor, reason), as_json)


@intake.command("status")
@click.option("--json", "as_json", is_flag=True)
def intake_status(as_json: bool) -> None:
    from .operator import intake_state

    _print_intake(intake_state(_rt()), as_json)


@click.group()
def quarantine() -> None:
    """Quarantined documents: list, release a false positive, purge old ones."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True)
def quarantine_list(as_json: bool) -> None:
    from .documents import quarantined

    items = quarantined(_rt())
    if as_json:
        for item in items:
            click.echo(json.dumps(item, sort_keys=True))
        return
    keys = ("sha256", "size", "quarantined_at", "reason", "signature", "workflow_id")
    table = _table(
        ("sha256", "size", "since", "reason", "signature", "workflow"), [[i[k] for k in keys] for i in items]
    )
    out.print(table)


@quarantine.command("release")
@click.argument("sha256")
@_actor
@_reason
def quarantine_release(sha256: str, actor: str | None, reason: str | None) -> None:
    """Move a quarantined document into the store (its workflow's record is unchanged)."""
    from .documents import release

    click.echo(f"released to {release(_rt(), sha256, actor, reason)}")


@quarantine.command("purge")
@click.option("--older-than", "older_than", default="30d", show_default=True, help="e.g. 30d, 12h")
@_actor
@_reason
def quarantine_purge(older_than: str, actor: str | None, reason: str | None) -> None:
    from .documents import purge

    gone = purge(_rt(), parse_duration(older_than), actor, reason)
    click.echo(f"purged {len(gone)} quarantined document(s) older than {older_than}")


@click.group()
def documents() -> None:
    """Stored documents."""


@documents.command("delete")
@click.argument("sha256")
@_actor
@_reason
@click.option("--json", "as_json", is_flag=True)
def documents_delete(sha256: str, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Delete a document's bytes and redact its extracted fields; workflow records stay.

    Says what went where: files removed, rows, event payloads, execution-log lines and
    stream entries redacted or deleted, and the copies DOX cannot edit. Exit 1 when a
    part failed (Redis down, say): running it again finishes the job.
    """
    from .documents import delete

    r = delete(_rt(), sha256, actor, reason)
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))
    else:
        log_lines = r["execution_log_lines_redacted"]
        lines = [
            f"deleted {len(r['removed'])} file(s): {', '.join(r['removed']) or 'none left'}",
            f"redacted {len(r['workflows_redacted'])} workflow row(s), {r['step_outputs_redacted']}"
            f" step output(s), {len(r['events_redacted'])} event payload(s) in workflow_events",
            f"redacted {sum(log_lines.values())} line(s) of the execution log"
            + (f" ({', '.join(sorted(log_lines))})" if log_lines else ""),
            f"deleted {r['stream_entries_deleted']} entr(y/ies) from the Redis event stream",
            f"not redacted: {r['not_redacted']}",
        ]
        for line in lines:
            click.echo(safe(line, markup=False))
        for problem in r["errors"]:
            click.echo(safe(f"NOT DONE: {problem} (run the command again)", markup=False), err=True)
    if r["errors"]:
        sys.exit(1)
