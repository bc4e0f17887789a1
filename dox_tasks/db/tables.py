"""The tables as SQLAlchemy ``Table`` objects, and the one dialect-aware insert.

Only modules of ``dox_tasks.db`` import this: the rest of DOX reaches the results
layer through :mod:`dox_tasks.db.store` (transitions) and the read model, never by
naming a table (``tests/test_layering_db.py`` checks it).
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .models import (
    ApiKeyRow,
    BackupRow,
    Base,
    BeatStartRow,
    MetricTotal,
    WorkflowDefinition,
    WorkflowEvent,
    WorkflowStateRow,
    WorkflowStepResult,
)

WS = cast(Table, WorkflowStateRow.__table__)
SR = cast(Table, WorkflowStepResult.__table__)
EV = cast(Table, WorkflowEvent.__table__)
WD = cast(Table, WorkflowDefinition.__table__)
BK = cast(Table, BackupRow.__table__)
MT = cast(Table, MetricTotal.__table__)
AK = cast(Table, ApiKeyRow.__table__)
BS = cast(Table, BeatStartRow.__table__)

#: Every DOX table's name, in declaration order: what a backup counts and dumps,
#: what maintenance vacuums, what the layering test looks for in strings.
NAMES: tuple[str, ...] = tuple(Base.metadata.tables)


def insert_ignore(conn: Connection, table: Table, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING on either backend; True when a row was written."""
    build = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    return bool(conn.execute(build(table).values(**values).on_conflict_do_nothing()).rowcount)
