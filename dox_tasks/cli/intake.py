"""``dox intake pause | resume | status``: new submissions stopped and started again."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from ..intake_switch import intake_state, pause, set_paused
from ..terminal import safe
from .common import actor_option, out, reason_option, runtime


@click.group()
def intake() -> None:
    """Pause and resume new submissions (work in flight continues)."""


def _print_intake(state: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(asdict(state), sort_keys=True))
    elif state.paused:
        out.print(
            f"[yellow]intake PAUSED[/] since {state.since} by {safe(state.actor)}:"
            f" {safe(state.reason or '(no reason)')}"
        )
    else:
        out.print("[green]intake open[/]")


@intake.command("pause")
@actor_option
@reason_option
@click.option("--replace", is_flag=True, help="if already paused: record this reason instead of the first")
@click.option("--json", "as_json", is_flag=True)
def intake_pause(actor: str | None, reason: str | None, replace: bool, as_json: bool) -> None:
    """Refuse new submissions (work in flight continues). Already paused: the first pause is
    kept and shown, unless --replace."""
    state, changed = pause(runtime(), actor, reason, replace)
    if not changed and not as_json:
        click.echo(
            "intake was already paused; the first pause is kept (--replace to record yours):", err=True
        )
    _print_intake(state, as_json)


@intake.command("resume")
@actor_option
@reason_option
@click.option("--json", "as_json", is_flag=True)
def intake_resume(actor: str | None, reason: str | None, as_json: bool) -> None:
    _print_intake(set_paused(runtime(), False, actor, reason), as_json)


@intake.command("status")
@click.option("--json", "as_json", is_flag=True)
def intake_status(as_json: bool) -> None:
    _print_intake(intake_state(runtime()), as_json)
