"""``dox db upgrade``: the results database's tables."""

from __future__ import annotations

import click

from ..db.store import open_store
from ..settings import redact_url
from .common import runtime


@click.group()
def db() -> None:
    """The results database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables (alembic upgrade head)."""
    settings = runtime().settings
    store = open_store(settings.db_url)  # not the runtime's: embedded, it migrates on opening
    try:
        before, after = store.migrate()
    finally:
        store.close()
    where = redact_url(settings.db_url)
    if before is None:
        click.echo(f"created the schema at revision {after} in {where}")
    elif before == after:
        click.echo(f"the schema in {where} is current (revision {after}): nothing to do")
    else:
        click.echo(f"upgraded the schema in {where} from revision {before} to {after}")
