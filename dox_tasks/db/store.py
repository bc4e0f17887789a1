"""The results layer's door for transitions: open a :class:`StateStore` here.

Each transition has one owner and is written idempotently:

* :meth:`StateStore.create_workflow` — the ``queued`` row; an idempotency key or a
  schedule slot seen before returns the earlier workflow instead.
* :meth:`StateStore.begin_step` — counts the attempt *before* the step body runs
  (Redis keeps no delivery count), refuses stale/forged/cancelled deliveries and turns
  a message delivered too often into ``failed``/``poison``.
* :meth:`StateStore.finish_step` — closes the attempt; a success moves ``current_step``
  forward only if nobody else did (a redelivered duplicate becomes ``superseded``,
  so there is never a second success row).
* :meth:`StateStore.conclude` — the single terminal transition (last attempt, terminal
  state and event rows in one transaction): the first writer wins; a finished
  workflow never moves backwards.
* :meth:`StateStore.reopen` — an operator's retry starts the next run.

The interface and the code both backends share are in :mod:`.base`; each backend's
transitions in one module: :mod:`.sqlite` (Python) and :mod:`.postgres` (which names
the PL/pgSQL functions it calls). ``tests/test_state_store.py`` is their one contract.
"""

from __future__ import annotations

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigError
from .base import (
    Conclusion,
    Event,
    NewWorkflow,
    StateStore,
    StepClose,
    StepDelivery,
    StepStart,
    aware,
    now,
)
from .engine import normalize_url
from .postgres import PostgresStateStore
from .sqlite import SQLiteStateStore

__all__ = [
    "Conclusion",
    "Event",
    "NewWorkflow",
    "PostgresStateStore",
    "SQLiteStateStore",
    "StateStore",
    "StepClose",
    "StepDelivery",
    "StepStart",
    "aware",
    "now",
    "open_store",
]


#: What a DOX_DATABASE_URL may be; said whenever one is not.
UNSUPPORTED_URL = (
    "DOX_DATABASE_URL must be postgresql://user:password@host:5432/dbname or sqlite:///path/to/dox.db"
)


def open_store(url: str, pool_size: int = 2) -> StateStore:
    """The StateStore for ``url``'s backend (PostgreSQL in production, SQLite embedded)."""
    try:
        parsed = make_url(normalize_url(url))
        kind: tuple[str, str] | None = (parsed.get_backend_name(), parsed.get_driver_name())
        given = f" (not {parsed.drivername})"  # the scheme alone: no host, user or password
    except ArgumentError:
        kind, given = None, ""  # not a URL at all; never echoed (it may hold a password)
    if kind == ("postgresql", "psycopg2"):  # the driver DOX installs
        return PostgresStateStore(url, pool_size=pool_size)
    if kind == ("sqlite", "pysqlite"):
        return SQLiteStateStore(url, pool_size=pool_size)
    raise ConfigError(UNSUPPORTED_URL + given)
