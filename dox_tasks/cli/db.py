"""``dox db upgrade``: the results database's tables."""

from __future__ import annotations

import click

from ..settings import redact_url
from .common import runtime


@click.group()
def db() -> None:
    """The results database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (alembic upgrade head)."""
    rt = runtime()
    rt.state.migrate()

    click.echo(f"database at {redact_url(rt.settings.db_url)} is up to date")
