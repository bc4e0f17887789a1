"""What every ``dox`` command module shares: the consoles, the runtime, time and option helpers.

The command modules import this and the layers below, never each other, so the
CLI has no import circle; :mod:`dox_tasks.cli` only registers what they define.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any, TextIO

import click
from rich.console import Console

from .. import runtime as _runtime
from .. import timespec
from ..db import queries
from ..db.store import aware
from ..errors import AmbiguousWorkflowId, DoxError, UnknownWorkflow
from ..terminal import safe

#: Wide enough that no table a DOX command prints wraps when nobody reads it on a screen.
PLAIN_WIDTH = 10_000


def _console(stream: TextIO, stderr: bool = False) -> Console:
    """A console for ``stream``: the terminal's width on a terminal (or ``COLUMNS`` when set);
    otherwise (a pipe, a file, a test) plain text that never wraps, so a script reading it
    gets whole lines, not rich's 80-column fallback."""
    if stream.isatty() or os.environ.get("COLUMNS", "").isdigit():
        return Console(stderr=stderr, emoji=False)  # ":cross_mark:" in a file name stays text
    return Console(stderr=stderr, emoji=False, width=PLAIN_WIDTH, soft_wrap=True)


out = _console(sys.stdout)
err = _console(sys.stderr, stderr=True)

#: The fewest characters of a workflow id a table shows (like git's short hashes).
SHORT_ID = 8
#: A workflow id in full: UUID text.
FULL_ID = 36

COLOURS = {"success": "green", "duplicate": "cyan", "rejected": "yellow", "failed": "red"}

actor_option = click.option("--actor", default=None, help="who (default: the OS user)")
reason_option = click.option("--reason", default=None, help="why (kept with the action)")
wide_option = click.option(
    "--wide", is_flag=True, help=f"full workflow ids (tables show a unique prefix of {SHORT_ID}+ characters)"
)


def runtime() -> Any:
    """The process's runtime, built on first use (so ``dox --help`` connects to nothing)."""

    return _runtime.get()


def iso(ts: Any, timespec: str = "auto") -> str | None:
    """A database timestamp as ISO 8601 UTC with a Z (None stays None); a table passes
    ``timespec="seconds"`` (the microseconds are in ``--json``)."""

    return aware(ts).isoformat(timespec=timespec).replace("+00:00", "Z") if ts else None


def shortest_prefixes(ids: Iterable[str], among: Collection[str], minimum: int = SHORT_ID) -> dict[str, str]:
    """Each of ``ids`` cut to its shortest prefix of at least ``minimum`` characters that no
    other id in ``among`` begins with."""
    short: dict[str, str] = {}
    for wid in ids:
        rivals = [o for o in among if o != wid and o[:minimum] == wid[:minimum]]
        shared = max((len(os.path.commonprefix([wid, o])) for o in rivals), default=0)
        short[wid] = wid[: max(minimum, shared + 1)]
    return short


def short_ids(ids: Iterable[str | None], wide: bool = False) -> dict[str, str]:
    """Workflow ids as a table shows them: unique among every workflow recorded (not only the
    rows shown), so any of them works as ``dox status``'s argument; in full with ``--wide``."""
    wanted = [i for i in ids if i]
    if wide:
        return {i: i for i in wanted}
    among = queries.workflow_ids_starting(runtime().state, {i[:SHORT_ID] for i in wanted})
    return shortest_prefixes(wanted, among)


def full_workflow_id(text: str) -> str:
    """The workflow an operator named, by its id or by a unique prefix of at least
    :data:`SHORT_ID` characters (a table's short id). The HTTP API takes full ids only.

    Raises :class:`UnknownWorkflow` when no id begins so, :class:`AmbiguousWorkflowId`
    (listing them) when several do."""
    given = text.strip()
    if len(given) >= FULL_ID:
        return given  # a whole id: the command's own lookup says whether it exists
    if len(given) < SHORT_ID:
        raise UnknownWorkflow(f"no workflow with id {given} (a short id has at least {SHORT_ID} characters)")
    matches = queries.workflow_ids_starting(runtime().state, [given], limit=11)
    if not matches:
        raise UnknownWorkflow(f"no workflow with id {given}")
    if len(matches) > 1:
        listed = ", ".join(matches[:10]) + (" and more" if len(matches) > 10 else "")
        raise AmbiguousWorkflowId(
            f"{given} begins more than one workflow id: {listed}. Give more characters."
        )
    return matches[0]


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d`` → a timedelta (a clear error for anything else)."""
    try:
        return timespec.parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def parse_since(text: str) -> datetime:
    """``--since``: a duration back from now, or an ISO 8601 time (as the API's ``?since=``)."""
    try:
        return timespec.parse_since(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def run_group(group: click.Group) -> None:
    """Run the command line: a one-line error and an exit code for each way it can fail.

    A traceback never reaches the user (``DOX_DEBUG=1`` shows it): 2 for DOX's own
    errors, 70 for anything unexpected, 130 when interrupted, click's codes for usage.
    """
    try:
        group.main(standalone_mode=False)
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
