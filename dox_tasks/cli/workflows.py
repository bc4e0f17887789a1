"""``dox workflows list | show | retry | cancel``: document workflows and scheduled runs."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from ..app import app
from ..contract import WorkflowState
from ..db import queries
from ..db.store import aware
from ..errors import DoxError
from ..operator import RETRYABLE, cancel, retry, retryable_since
from ..terminal import safe, shown, styled
from ..terminal import table as _table
from .common import (
    COLOURS,
    actor_option,
    full_workflow_id,
    iso,
    out,
    parse_duration,
    parse_since,
    reason_option,
    runtime,
    short_ids,
    wide_option,
)


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
        "created_at": iso(r["created_at"]),
        "finished_at": iso(r["finished_at"]),
        "duration_s": duration,
    }


@click.group()
def workflows() -> None:
    """List and inspect workflows (document workflows and scheduled runs)."""


@workflows.command("list")
@click.option("--status", type=click.Choice([s.value for s in WorkflowState]), default=None)
@click.option("--rule", default=None, help="definition name, e.g. process_document_upload")
@click.option("--since", default="24h", show_default=True, help="e.g. 30m, 24h, 7d, or 2026-12-07T09:00Z")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@wide_option
@click.option("--json", "as_json", is_flag=True, help="one object per line")
def list_cmd(status: str | None, rule: str | None, since: str, limit: int, wide: bool, as_json: bool) -> None:
    """Newest first; workflow ids as short as stays unique (``--wide``: in full)."""
    cutoff = parse_since(since)
    found = queries.list_workflows(runtime().state, status=status, rule=rule, since=cutoff, limit=limit)
    rows = [_row(r) for r in found]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        return
    short = short_ids((r["workflow_id"] for r in rows), wide)
    cells = [
        [
            short[r["workflow_id"]],
            r["rule_name"],
            styled(r["status"], COLOURS.get(r["status"], "white")),
            r["reason"],
            r["step"],
            r["file"] or r["slot"],
            iso(f["created_at"], "seconds"),
            r["duration_s"],
        ]
        for r, f in zip(rows, found, strict=True)
    ]
    columns = ("workflow", "rule", "status", "reason", "step", "file / slot", "created", "s")
    out.print(_table(columns, cells, unbroken=("workflow",)))
    out.print(f"{len(rows)} workflow(s) since {cutoff.isoformat(timespec='seconds')}")


@workflows.command("show")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True)
def show_cmd(workflow_id: str, as_json: bool) -> None:
    """One workflow (its id or a unique prefix of 8+ characters): its row, every step attempt
    (timings, errors) and its events."""
    detail = queries.workflow_detail(runtime().state, full_workflow_id(workflow_id))
    row = detail.workflow
    steps = [
        {
            "step": s["step"],
            "attempt": _attempt_in_run(detail.steps, s),
            "run": s.get("run", 1),
            "state": s["state"],
            "worker": s["worker_hostname"],
            "started_at": iso(s["started_at"]),
            "duration_ms": s["duration_ms"],
            "error": s["error"],
        }
        for s in detail.steps
    ]
    events = [{"type": e["type"], "created_at": iso(e["created_at"]), "id": e["id"]} for e in detail.events]
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


def _attempt_in_run(rows: list[dict[str, Any]], row: dict[str, Any]) -> int:
    """The attempt's number within its run (a retry's run 2 starts again at attempt 1); the
    stored number counts every delivery of the step, across runs, for the poison bound."""
    run = row.get("run", 1)
    return sum(
        1
        for r in rows
        if r["step"] == row["step"] and r.get("run", 1) == run and r["attempt"] <= row["attempt"]
    )


def _retried(result: dict[str, Any]) -> str:
    step = shown(result["from_step"], False)
    line = f"{result['workflow_id']} queued again from step {step} (run {result['run']})"
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
@actor_option
@reason_option
@wide_option
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
    wide: bool,
    as_json: bool,
) -> None:
    """Run a failed or cancelled workflow again (same stored definition, same staged input).

    One workflow by id (or a unique prefix of 8+ characters), or in bulk with --status
    (e.g. --status failed --since 1h), which lists what it would retry and asks first unless
    --yes.
    """
    rt = runtime()
    if workflow_id and (status or since or rule):
        raise click.UsageError("give a workflow id or --status/--since/--rule, not both")
    if workflow_id:
        result = retry(rt, full_workflow_id(workflow_id), from_failed, actor, reason)
        click.echo(json.dumps(result, sort_keys=True) if as_json else _retried(result))
        return
    if not status:
        raise click.UsageError("give a workflow id, or --status failed|cancelled [--since 1h] (bulk)")
    cutoff = datetime.now(UTC) - parse_duration(since or "1h")
    targets = retryable_since(rt, cutoff, status, rule)
    if not targets:
        click.echo(f"no {status} workflows ended since {iso(cutoff)}; nothing to retry")
        return
    if not yes:
        if not as_json:
            short = short_ids((t["workflow_id"] for t in targets), wide)
            rows = [
                [short[t["workflow_id"]], t["rule_name"], t["reason"], iso(t["finished_at"])] for t in targets
            ]
            out.print(_table(("workflow", "rule", "reason", "ended"), rows, unbroken=("workflow",)))
        if not click.confirm(f"retry these {len(targets)} workflow(s)?", err=True):
            click.echo("nothing retried")  # the operator's answer, not a failure
            return
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
@actor_option
@reason_option
@click.option("--json", "as_json", is_flag=True)
def cancel_cmd(workflow_id: str, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Cancel a queued or running workflow (its id or a unique prefix of 8+ characters); its
    remaining steps do nothing."""

    workflow_id = full_workflow_id(workflow_id)
    result = cancel(runtime(), app, workflow_id, actor, reason)
    click.echo(
        json.dumps(result, sort_keys=True)
        if as_json
        else safe(f"{workflow_id} cancelled at step {shown(result['step'], False)}", markup=False)
    )
