"""``dox defs validate | show | tasks``: the workflow definitions in workflow_defs/."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..app import app
from ..definitions import validate_path
from ..definitions.canvas import build_chain
from ..definitions.catalog import STEPS
from ..errors import DefinitionError, DoxError
from ..jobs.sync.teams import load_teams
from ..settings import load
from ..templates import load_templates, template_warnings
from .common import runtime


@click.group()
def defs() -> None:
    """Workflow definitions in workflow_defs/."""


@defs.command("validate")
@click.argument("path", required=False)
def defs_validate(path: str | None) -> None:
    """Check definitions (and the teams file); print each problem and exit 1 if any."""

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

    rt = runtime()
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
    """List the registered task names a definition may use, their aliases and params."""

    for kind in STEPS.values():
        click.echo(f"{kind.task:<14} queue={kind.queue:<12} {kind.summary}")
        if kind.aliases:
            click.echo(f"    also named: {', '.join(kind.aliases)}")
        for line in kind.param_help():
            click.echo(f"    params.{line}")
