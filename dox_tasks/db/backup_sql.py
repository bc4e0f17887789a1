"""The database side of backups: where the database is, a snapshot ``pg_dump`` can join,
the DOX tables' row counts, and scratch databases to restore into.

:mod:`dox_tasks.jobs.backup` runs the tools and handles the files; everything that
speaks SQL is here. Each function opens its own connection (outside the pool of the
:class:`StateStore`: a dump may hold it for an hour) and closes it. An unreachable
database is a :class:`~dox_tasks.errors.StateStoreError` here, not a wait: a backup
that cannot reach its database has failed an attempt, as a failing ``pg_dump`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from .engine import normalize_url
from .guard import translated
from .models import Base
from .tables import NAMES


@dataclass(frozen=True)
class Target:
    """A database as the PostgreSQL tools address it (``PG*`` environment variables)."""

    url: str = field(repr=False)  # with the password
    backend: str
    host: str | None
    port: int | None
    username: str | None
    password: str | None = field(repr=False)
    database: str | None


def target(db_url: str) -> Target:
    """Parse ``DOX_DATABASE_URL`` (any form DOX accepts)."""
    url = make_url(normalize_url(db_url))
    password = None if url.password is None else str(url.password)
    return Target(
        url.render_as_string(hide_password=False),
        url.get_backend_name(),
        url.host,
        url.port,
        url.username,
        password,
        url.database,
    )


def count_rows(conn: Connection) -> dict[str, int]:
    """Rows per DOX table, as this connection's transaction sees them."""
    tables = Base.metadata.tables
    return {
        name: int(conn.execute(select(func.count()).select_from(tables[name])).scalar_one()) for name in NAMES
    }


def _engine(db: Target, database: str | None = None, autocommit: bool = False) -> Engine:
    url = make_url(db.url)
    if database is not None:
        url = url.set(database=database)
    return create_engine(url, poolclass=NullPool, **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}))


@contextmanager
def exported_snapshot(db: Target) -> Iterator[tuple[str, dict[str, int]]]:
    """A REPEATABLE READ transaction held open for the ``with`` body: the id of its
    exported snapshot (``pg_dump --snapshot`` joins it) and the DOX tables' row counts
    in it, so the counts are exactly what a dump of that snapshot holds."""
    engine = _engine(db)
    try:
        with (
            translated(transient=False),
            engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
        ):
            snapshot = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())
            yield snapshot, count_rows(conn)
    finally:
        engine.dispose()


def create_database(db: Target, name: str) -> bool:
    """Create the empty database ``name`` (a checked identifier: letters, digits, ``_``);
    False, creating nothing, when it exists already."""
    engine = _engine(db, autocommit=True)
    try:
        with translated(transient=False), engine.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                return False
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            return True
    finally:
        engine.dispose()


def drop_database(db: Target, name: str) -> None:
    engine = _engine(db, autocommit=True)
    try:
        with translated(transient=False), engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def counts_in(db: Target, database: str) -> dict[str, int]:
    """Rows per DOX table in another database of the same server (a restored copy)."""
    engine = _engine(db, database)
    try:
        with translated(transient=False), engine.connect() as conn:
            return count_rows(conn)
    finally:
        engine.dispose()
