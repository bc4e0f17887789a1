"""What every ``dox`` command module shares: the consoles, the runtime, time and option helpers.

The command modules import this and the layers below, never each other, so the
CLI has no import circle; :mod:`dox_tasks.cli` only registers what they define.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from typing import Any

import click
from rich.console import Console

from .. import runtime as _runtime
from .. import timespec
from ..db.store import aware
from ..errors import DoxError
from ..terminal import safe

out = Console(emoji=False)  # ":cross_mark:" in a file name stays text
err = Console(stderr=True, emoji=False)

COLOURS = {"success": "green", "duplicate": "cyan", "rejected": "yellow", "failed": "red"}

actor_option = click.option("--actor", default=None, help="who (default: the OS user)")
reason_option = click.option("--reason", default=None, help="why (kept with the action)")


def runtime() -> Any:
    """The process's runtime, built on first use (so ``dox --help`` connects to nothing)."""

    return _runtime.get()


def iso(ts: Any) -> str | None:
    """A database timestamp as ISO 8601 UTC with a Z (None stays None)."""

    return aware(ts).isoformat().replace("+00:00", "Z") if ts else None


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
