"""Engines and migrations for PostgreSQL (production) and SQLite (embedded default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def normalize_url(url: str) -> str:
    """Plain ``postgresql://`` URLs use psycopg2 (SQLAlchemy 2.1 would pick psycopg 3)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def make_engine(url: str, pool_size: int = 2) -> Engine:
    """An engine tuned for its backend.

    SQLite: WAL, a 30 s busy timeout and ``BEGIN IMMEDIATE`` so that the embedded
    worker thread and the submitting thread never see "database is locked".
    PostgreSQL: a small pool per process (see docs/OPERATIONS.md for the budget).
    No pre-ping (it costs a round trip per transaction): a connection broken by a
    restart fails one step attempt, which is retried; the pool replaces the connection.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(
        normalize_url(url),
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=1800,
        # Keepalives: a connection to a vanished server (a dropped NAT entry, a failover)
        # fails within about a minute instead of hanging a step on a dead socket.
        connect_args=(
            {
                "connect_timeout": 5,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            }
            if url.startswith("postgres")
            else {}
        ),
    )


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def migrate(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the schema to the newest revision (idempotent): the revisions before and after
    (before is None for an empty database)."""
    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        before = MigrationContext.configure(conn).get_current_revision()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        after = MigrationContext.configure(conn).get_current_revision()
    return before, after


def pending_migration(engine: Engine) -> str | None:
    """None when the schema is at the newest revision, else "<current> (newest <head>)"."""

    head = ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return None if current == head else f"{current or 'empty'} (newest {head})"
