"""``dox intake pause | resume | status``: new submissions stopped and started again."""

from __future__ import annotations

import json
from typing import Any

import click

from ..terminal import safe
from .common import actor_option, out, reason_option, runtime


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


@intake.command("pause")
@actor_option
@reason_option
@click.option("--json", "as_json", is_flag=True)
def intake_pause(actor: str | None, reason: str | None, as_json: bool) -> None:
    from ..operator import set_paused

    _print_intake(set_paused(runtime(), True, actor, reason), as_json)


@intake.command("resume")
@actor_option
@reason_option
@click.option("--json", "as_json", is_flag=True)
def intake_resume(actor: str | None, reason: str | None, as_json: bool) -> None:
    from ..operator import set_paused

    _print_intake(set_paused(runtime(), False, actor, reason), as_json)


@intake.command("status")
@click.option("--json", "as_json", is_flag=True)
def intake_status(as_json: bool) -> None:
    from ..operator import intake_state

    _print_intake(intake_state(runtime()), as_json)
