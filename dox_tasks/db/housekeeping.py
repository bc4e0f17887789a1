"""Maintenance's database work: VACUUM, retention's deletes, the staged inputs still needed."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, text

from ..contract import TERMINAL_STATES
from .guard import reading, translated
from .store import StateStore
from .tables import EV, NAMES, WS
from .tally import archive

#: Workflows deleted per statement (and archived per tally query).
CHUNK = 500


def vacuum(store: StateStore) -> list[str]:
    """VACUUM ANALYZE every DOX table (the whole file on SQLite); what was vacuumed."""
    with translated(), store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if not store.is_postgres:
            conn.execute(text("VACUUM"))
            return ["(sqlite database)"]
        for table in NAMES:
            conn.execute(text(f'VACUUM ANALYZE "{table}"'))
    return list(NAMES)


@dataclass(frozen=True)
class Expired:
    workflows: int
    events: int


def expire_finished(store: StateStore, finished_before: datetime) -> Expired:
    """Delete workflows that ended before ``finished_before`` (their steps cascade, their
    events follow); their counts move to ``metric_totals`` in the same transaction, so
    no counter goes down."""
    finished = [s.value for s in TERMINAL_STATES]
    with reading(store) as conn:
        # Locked until the deletes commit: an operator retry of one of them waits, then
        # finds it gone, instead of reopening a row this transaction is deleting.
        ids = [
            r.workflow_id
            for r in conn.execute(
                select(WS.c.workflow_id)
                .where(WS.c.current_state.in_(finished), WS.c.finished_at < finished_before)
                .with_for_update(skip_locked=True)
            )
        ]
        events = 0
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            archive(conn, chunk)
            events += conn.execute(delete(EV).where(EV.c.workflow_id.in_(chunk))).rowcount
            conn.execute(delete(WS).where(WS.c.workflow_id.in_(chunk)))
    return Expired(len(ids), events)


def staged_inputs_needed(store: StateStore, states: Collection[str]) -> set[str]:
    """Hashes of the documents of workflows in ``states`` (whose staged input must stay)."""
    with reading(store) as conn:
        rows = conn.execute(select(WS.c.sha256).where(WS.c.current_state.in_(list(states))))
        return {r.sha256 for r in rows if r.sha256}
