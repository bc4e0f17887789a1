"""``dox run``, ``dox submit`` and ``dox status``: documents in, results out."""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..app import app
from ..contract import LIVE_STATES, WorkflowState
from ..embedded import local_worker as start_local
from ..embedded import wait_for
from ..finish import build_result
from ..intake import NOT_SENT, submit
from ..terminal import safe, shown, styled, table
from .common import COLOURS, err, full_workflow_id, iso, out, runtime, short_ids, wide_option

OK_STATES = {WorkflowState.SUCCESS, WorkflowState.DUPLICATE, WorkflowState.REJECTED}


def _from_here(path: str | Path) -> str:
    """A command-line path, absolute against the current folder.

    The CLI is the operator at a shell: ``in/x.pdf`` means ``./in/x.pdf`` even when
    DOX_INBOX_ROOT is set (intake reads a relative path as relative to the inbox).
    Nothing is normalised, so a ``..`` still meets intake's refusal.
    """
    return os.path.join(os.getcwd(), path)


def _collect(paths: tuple[str, ...]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")))
        elif path.exists() or path.is_symlink():  # a dangling link: intake says what is wrong
            files.append(path)
        else:
            folder = os.path.dirname(_from_here(p))
            raise click.UsageError(f"no such file or folder: {p} (looked in {folder})")
    if not files:
        raise click.UsageError("no files to process")
    return files


def _names(paths: tuple[str, ...], files: list[Path]) -> list[str]:
    """How each file is named in the results: its path relative to the folder given (two
    ``invoice.pdf`` in two subfolders stay apart), or the file argument as typed."""
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    names = []
    for f in files:
        inside = next((d for d in folders if f.is_relative_to(d)), None)
        names.append(str(f.relative_to(inside)) if inside is not None else str(f))
    return names


def _not_sent(rt: Any, row: dict[str, Any]) -> dict[str, Any] | None:
    """For a workflow still queued because the broker refused its message: when, and how soon
    the reaper sends it again (its queued-after wait plus its own cron's period)."""
    if row["current_state"] != "queued" or rt.state.step_rows(row["workflow_id"]):
        return None
    refused = [e for e in rt.state.events(row["workflow_id"]) if e["type"] == NOT_SENT]
    if not refused:
        return None
    import beat_schedule

    reaper = beat_schedule.build(rt.definitions.values()).get("reap_stuck_workflows")
    now = datetime.now(UTC)
    period_s = (
        (reaper.next_slot(reaper.next_slot(now)) - reaper.next_slot(now)).total_seconds() if reaper else 300
    )
    within = math.ceil((rt.settings.reaper_queued_after_s + period_s) / 60)
    return {"at": iso(refused[-1]["created_at"]), "resent_within_min": within}


def _result(row: dict[str, Any], given: str | None = None) -> dict[str, Any]:
    if row.get("result") and row["current_state"] not in LIVE_STATES:
        result = dict(row["result"])
    else:  # still live (or timed out): say so from the row, never Celery's PENDING
        result = build_result(row, {}, status=row["current_state"]).to_dict()
    if given:
        result["file"] = given
    return result


#: Fields shown first in a table: the amount due with its currency leads.
_FIRST_FIELDS = ("total", "amount", "total_amount")


def _key_fields(fields: dict[str, Any]) -> str:
    """Up to three fields, the total (with its currency) first when the template has one."""
    cur = fields.get("currency")
    keys = sorted((k for k in fields if k != "currency"), key=lambda k: k not in _FIRST_FIELDS)[:3]
    return ", ".join(f"{k}={fields[k]}{' ' + cur if cur and k in _FIRST_FIELDS else ''}" for k in keys)


def _recognition(r: dict[str, Any]) -> str | None:
    """matched / unrecognized / unreadable — with why it was unreadable (no text layer: a
    scanned image; or matching ran out of its budget) — and the declared fields not found."""
    status = r.get("recognition")
    if status == "unreadable" and r.get("unreadable_reason"):
        return f"unreadable: {str(r['unreadable_reason']).replace('_', ' ')}"
    if status == "matched" and r.get("missing_fields"):
        return f"matched, missing {', '.join(r['missing_fields'])}"
    return status


def _plain(value: Any) -> Any:
    """A result field as a person reads it: ``k=v, …`` for a mapping, ``a, b`` for a list,
    None (shown as –) for an empty one — never Python's ``{}`` or ``[]``."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or None
    if isinstance(value, list):
        return ", ".join(map(str, value)) or None
    return value


def _print_table(results: list[dict[str, Any]], wide: bool) -> None:
    short = short_ids((r["workflow_id"] for r in results), wide)
    rows = [
        [
            r["file"] or "–",
            short.get(r["workflow_id"]),
            styled(r["status"], COLOURS.get(r["status"], "white")),
            r.get("reason"),
            r.get("template"),
            _recognition(r),
            _key_fields(r.get("fields") or {}) or None,
            r.get("pages"),
            r.get("duration_ms"),
        ]
        for r in results
    ]
    columns = ("file", "workflow", "status", "reason", "template", "recognition", "key fields", "pages", "ms")
    out.print(table(columns, rows, unbroken=("workflow",)))
    for r in results:  # the sentence behind each reason code, whole (never cut by a column)
        if r.get("reason_detail") and r["status"] != "success":
            out.print(safe(f"  {r['file'] or r['workflow_id']}: {r['reason_detail']}"), soft_wrap=True)


def _summary(results: list[dict[str, Any]], scanner_note: str | None, daily_limit: int) -> None:
    counts = Counter(r["status"] for r in results)
    line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.print(safe(f"{len(results)} documents: {line}"))
    if scanner_note:
        out.print(f"[yellow]scan: skipped[/] — {safe(scanner_note)}")
    limited = sum(r.get("reason") == "rate_limited" for r in results)
    if limited:
        out.print(
            f"[yellow]{limited} rate_limited[/] — a user may submit {daily_limit} documents per UTC"
            " day (RATE_LIMIT_PER_USER_PER_DAY, counted across runs); raise it, or set it to 0 to"
            " turn the limit off, e.g. RATE_LIMIT_PER_USER_PER_DAY=0 dox run …"
        )


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--user", default="local", show_default=True, help="who submits (rate limits)")
@click.option("--json", "as_json", is_flag=True, help="one result object per line")
@click.option(
    "--local-worker/--no-local-worker",
    default=None,
    help="run a worker in this process (default: yes when embedded)",
)
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait for results")
@wide_option
def run(
    paths: tuple[str, ...], user: str, as_json: bool, local_worker: bool | None, timeout: float, wide: bool
) -> None:
    """Process files or folders and print each document's result.

    Exit 0 when every document ended success, duplicate or rejected; 1 otherwise.
    """

    files = _collect(paths)
    rt = runtime()
    use_local = rt.settings.embedded if local_worker is None else local_worker
    if rt.settings.embedded and not use_local:
        raise click.UsageError("the embedded broker only works with --local-worker")
    rt.settings.check()
    note = getattr(rt.scanner, "why", None) if rt.scanner.name == "skipped" else None

    def _go() -> list[dict[str, Any]]:
        ids: list[str] = []
        for f in files:
            ids.append(submit(_from_here(f), user=user, source="dox run"))
        show = len(files) > 5 and not as_json
        with Progress(
            TextColumn("processing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not show,
            transient=True,
        ) as bar:
            task = bar.add_task("docs", total=len(ids))
            rows = wait_for(rt.state, ids, timeout, on_progress=lambda n: bar.advance(task, n))
        return [_result(rows[i], name) for i, name in zip(ids, _names(paths, files), strict=True)]

    if use_local:
        with start_local(app):
            results = _go()
    else:
        results = _go()
    if as_json:
        for r in results:
            click.echo(json.dumps(r, sort_keys=True))
    else:
        _print_table(results, wide)
        _summary(results, note, rt.settings.rate_limit_per_user_per_day)
    bad = [r for r in results if r["status"] not in {s.value for s in OK_STATES}]
    sys.exit(1 if bad else 0)


@click.command(name="submit")
@click.argument("files", nargs=-1, required=True)
@click.option("--user", default="local", show_default=True)
@click.option("--source", default="dox submit", show_default=True)
@click.option("--idempotency-key", default=None, help="only with a single file")
@click.option("--wait", is_flag=True, help="wait for the results (a table with each workflow id)")
@click.option("--timeout", default=600.0, show_default=True)
@wide_option
@click.option("--json", "as_json", is_flag=True)
def submit_cmd(
    files: tuple[str, ...],
    user: str,
    source: str,
    idempotency_key: str | None,
    wait: bool,
    timeout: float,
    wide: bool,
    as_json: bool,
) -> None:
    """Queue files for the workers (needs DOX_BROKER_URL); prints workflow ids (in full; with
    --wait, a table of results with short ids, or --json with full ones)."""

    rt = runtime()
    if rt.settings.embedded:
        raise click.UsageError("no broker configured: set DOX_BROKER_URL, or use `dox run`")
    if idempotency_key and len(files) > 1:
        raise click.UsageError("--idempotency-key goes with a single file")
    ids = [submit(_from_here(f), user=user, source=source, idempotency_key=idempotency_key) for f in files]
    if not wait:
        for f, i in zip(files, ids, strict=True):
            line = json.dumps({"file": f, "workflow_id": i}) if as_json else safe(f"{i}  {f}", markup=False)
            click.echo(line)
        return
    rows = wait_for(rt.state, ids, timeout)
    results = [_result(rows[i], f) for i, f in zip(ids, files, strict=True)]
    if as_json:
        for r in results:
            click.echo(json.dumps(r, sort_keys=True))
    else:
        _print_table(results, wide)
    sys.exit(0 if all(r["status"] in {s.value for s in OK_STATES} for r in results) else 1)


@click.command()
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True)
def status(workflow_id: str, as_json: bool) -> None:
    """Show what happened to one workflow (its id or a unique prefix of 8+ characters)."""
    rt = runtime()
    workflow_id = full_workflow_id(workflow_id)
    row = rt.state.get_workflow(workflow_id)
    result = _result(row)
    unsent = _not_sent(rt, row)
    if as_json:
        click.echo(json.dumps({**result, **({"not_sent": unsent} if unsent else {})}, sort_keys=True))
        return
    for key, value in result.items():
        out.print(f"[bold]{key:>13}[/] {shown(_plain(value))}")
    if row.get("detail"):
        out.print(f"[bold]{'detail':>13}[/] {safe(row['detail'])}")
    if unsent:
        out.print(
            f"[bold]{'not sent':>13}[/] [yellow]the broker refused its message at {unsent['at']};"
            f" the reaper re-sends it within {unsent['resent_within_min']} minutes[/]"
        )
    for s in rt.state.step_rows(workflow_id):
        out.print(
            safe(
                f"  step {s['step']:<10} attempt {s['attempt']} {s['state']:<10}"
                f" {shown(s['duration_ms'], False):>6} ms {s['error'] or ''}"
            )
        )
