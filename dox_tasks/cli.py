"""``dox`` — the command line for people and scripts.

Every command prints a one-line error and exits non-zero on bad input; a
traceback never reaches the user (``DOX_DEBUG=1`` shows it). ``--json`` output is
one object per line, in the contract's field names.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .contract import LIVE_STATES, WorkflowState
from .errors import DoxError
from .metrics import worker as worker_metrics
from .terminal import safe, styled, table

out = Console(emoji=False)  # ":cross_mark:" in a file name stays text
err = Console(stderr=True, emoji=False)

OK_STATES = {WorkflowState.SUCCESS, WorkflowState.DUPLICATE, WorkflowState.REJECTED}


def _rt() -> Any:
    from . import runtime

    return runtime.get()


def _iso(ts: Any) -> str | None:
    """A database timestamp as ISO 8601 UTC with a Z (None stays None)."""
    from .db.store import aware

    return aware(ts).isoformat().replace("+00:00", "Z") if ts else None


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
        elif path.exists():
            files.append(path)
        else:
            folder = os.path.dirname(_from_here(p))
            raise click.UsageError(f"no such file or folder: {p} (looked in {folder})")
    if not files:
        raise click.UsageError("no files to process")
    return files


def _result(row: dict[str, Any], given: str | None = None) -> dict[str, Any]:
    from .finish import build_result

    if row.get("result") and row["current_state"] not in LIVE_STATES:
        result = dict(row["result"])
    else:  # still live (or timed out): say so from the row, never Celery's PENDING
        result = build_result(row, {}, status=row["current_state"]).to_dict()
    if given:
        result["file"] = given
    return result


def _key_fields(fields: dict[str, Any]) -> str:
    keys = [k for k in fields if k != "currency"][:3]
    cur = fields.get("currency")
    parts = []
    for k in keys:
        v = fields[k]
        parts.append(f"{k}={v}{' ' + cur if cur and k in ('total', 'amount') else ''}")
    return ", ".join(parts)


COLOURS = {"success": "green", "duplicate": "cyan", "rejected": "yellow", "failed": "red"}


def _print_table(results: list[dict[str, Any]]) -> None:
    rows = [
        [
            Path(r["file"] or "").name,
            styled(r["status"], COLOURS.get(r["status"], "white")),
            r.get("reason"),
            r.get("template"),
            _key_fields(r.get("fields") or {}),
            r.get("pages") or "",
            r.get("duration_ms") or "",
        ]
        for r in results
    ]
    out.print(table(("file", "status", "reason", "template", "key fields", "pages", "ms"), rows))


def _summary(results: list[dict[str, Any]], scanner_note: str | None) -> None:
    counts = Counter(r["status"] for r in results)
    line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.print(safe(f"{len(results)} documents: {line}"))
    if scanner_note:
        out.print(f"[yellow]scan: skipped[/] — {safe(scanner_note)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True, help="log what workers do")
def cli(verbose: bool) -> None:
    """DOX: validate, scan, store and recognize documents with Celery."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s %(message)s",
    )


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--user", default="local", show_default=True, help="who submits (rate limits)")
@click.option("--json", "as_json", is_flag=True, help="one result object per line")
@click.option(
    "--local-worker/--no-local-worker",
    default=None,
    help="run a worker in this process (default: yes when embedded)",
)
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait for results")
def run(paths: tuple[str, ...], user: str, as_json: bool, local_worker: bool | None, timeout: float) -> None:
    """Process files or folders and print each document's result.

    Exit 0 when every document ended success, duplicate or rejected; 1 otherwise.
    """
    from .app import app
    from .embedded import local_worker as start_local
    from .embedded import wait_for
    from .intake import submit

    files = _collect(paths)
    rt = _rt()
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
        return [_result(rows[i], str(f)) for i, f in zip(ids, files, strict=True)]

    if use_local:
        with start_local(app):
            results = _go()
    else:
        results = _go()
    if as_json:
        for r in results:
            click.echo(json.dumps(r, sort_keys=True))
    else:
        _print_table(results)
        _summary(results, note)
    bad = [r for r in results if r["status"] not in {s.value for s in OK_STATES}]
    sys.exit(1 if bad else 0)


@cli.command(name="submit")
@click.argument("files", nargs=-1, required=True)
@click.option("--user", default="local", show_default=True)
@click.option("--source", default="dox submit", show_default=True)
@click.option("--idempotency-key", default=None, help="only with a single file")
@click.option("--wait", is_flag=True, help="wait for the results")
@click.option("--timeout", default=600.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def submit_cmd(
    files: tuple[str, ...],
    user: str,
    source: str,
    idempotency_key: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Queue files for the workers (needs DOX_BROKER_URL); prints workflow ids."""
    from .embedded import wait_for
    from .intake import submit

    rt = _rt()
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
        _print_table(results)
    sys.exit(0 if all(r["status"] in {s.value for s in OK_STATES} for r in results) else 1)


@cli.command()
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True)
def status(workflow_id: str, as_json: bool) -> None:
    """Show what happened to one workflow."""
    rt = _rt()
    row = rt.state.get_workflow(workflow_id)
    result = _result(row)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    for key, value in result.items():
        out.print(f"[bold]{key:>13}[/] {safe(value)}")
    if row.get("detail"):
        out.print(f"[bold]{'detail':>13}[/] {safe(row['detail'])}")
    for s in rt.state.step_rows(workflow_id):
        out.print(
            safe(
                f"  step {s['step']:<10} attempt {s['attempt']} {s['state']:<10}"
                f" {s['duration_ms'] or '':>6} ms {s['error'] or ''}"
            )
        )


@cli.group()
def defs() -> None:
    """Workflow definitions in workflow_defs/."""


@defs.command("validate")
@click.argument("path", required=False)
def defs_validate(path: str | None) -> None:
    """Check definitions (and the teams file); print each problem and exit 1 if any."""
    from .definitions import validate_path
    from .errors import DefinitionError
    from .jobs.sync.teams import load_teams
    from .settings import load

    settings = load()
    target = Path(path) if path else settings.definitions
    if not target.exists():
        raise click.UsageError(f"no such file or folder: {target}")
    good, problems = validate_path(target)
    teams = settings.teams if path is None else target / "teams.yaml"
    if teams.is_file():
        try:
            t = load_teams(teams)
            click.echo(f"ok  teams: {len(t.teams)} teams, {len(t.services)} services {teams}")
        except DefinitionError as exc:
            problems.extend(exc.problems)
    templates = target / "templates"  # the folder the runtime loads them from
    if templates.is_dir():
        from .templates import load_templates, template_warnings

        try:
            click.echo(f"ok  templates: {len(load_templates(templates))} in {templates}")
        except DefinitionError as exc:
            problems.extend(exc.problems)
        for w in template_warnings(templates):  # advisory: printed, never a failure
            click.echo(w, err=True)
    for p in problems:
        click.echo(p, err=True)
    for d in good:
        click.echo(f"ok  {d.name} {d.model.version} ({d.digest[:12]}) {d.source}")
    sys.exit(1 if problems else 0)


@defs.command("show")
@click.argument("name")
def defs_show(name: str) -> None:
    """Print the Celery canvas a definition compiles to."""
    from .app import app
    from .definitions.canvas import build_chain

    rt = _rt()
    d = rt.definitions.get(name)
    if d is None:
        raise DoxError(f"no definition named {name!r} (known: {', '.join(sorted(rt.definitions))})")
    canvas = build_chain(app, d, "<workflow_id>", rt.settings.workflow_timeout)
    click.echo(f"# {d.name} {d.model.version} — definition hash {d.digest}")
    click.echo(repr(canvas))
    for sig in getattr(canvas, "tasks", [canvas]):
        o = sig.options
        click.echo(
            f"  {sig.task:<14} queue={o.get('queue'):<12} time_limit={o.get('time_limit')}"
            f" soft_time_limit={o.get('soft_time_limit')} args={list(sig.args)}"
        )


@defs.command("tasks")
def defs_tasks() -> None:
    """List the registered task names a definition may use."""
    from .steps.registry import STEP_TASKS

    for info in STEP_TASKS.values():
        click.echo(f"{info.name:<14} queue={info.queue:<12} {info.summary}")


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker (extra arguments go to `celery worker`, e.g. -Q scan -c 4)."""
    from .app import app

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
    from celery.signals import worker_process_init, worker_ready

    worker_metrics.prepare()  # before prometheus_client is imported (it picks its storage then)
    from .metrics.http import credentials, serve_in_background

    auth = credentials(unsafe_no_auth=os.environ.get("DOX_METRICS_UNSAFE_NO_AUTH") == "1")
    s = _rt().settings
    limits = {"request_timeout": s.metrics_timeout_s, "max_connections": s.metrics_max_connections}
    httpd = worker_metrics.bind(s.metrics_host, port, auth, **limits)  # DOX_METRICS_HOST, else loopback

    @worker_ready.connect(weak=False)
    def _start(**_: Any) -> None:
        serve_in_background(httpd)

    @worker_process_init.connect(weak=False)
    def _not_in_children(**_: Any) -> None:
        httpd.socket.close()  # pool processes inherit the listening socket; only the parent serves


@cli.group()
def db() -> None:
    """The results database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (alembic upgrade head)."""
    rt = _rt()
    rt.state.migrate()
    from .settings import redact_url

    click.echo(f"database at {redact_url(rt.settings.db_url)} is up to date")


def main() -> None:
    from .cli_ops import register

    register(cli)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DoxError as exc:
        click.echo(safe(f"dox: {exc}", markup=False, newlines=True), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - no traceback for users
        if os.environ.get("DOX_DEBUG"):
            raise
        message = f"dox: internal error: {type(exc).__name__}: {exc} (DOX_DEBUG=1 shows more)"
        click.echo(safe(message, markup=False, newlines=True), err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
