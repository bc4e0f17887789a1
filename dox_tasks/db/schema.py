"""Whether the results database's schema is the one this code expects."""

from __future__ import annotations

from .engine import pending_migration
from .guard import translated
from .store import StateStore


def schema_behind(store: StateStore) -> str | None:
    """None when the schema is at the newest migration, else "<current> (newest <head>)";
    :class:`~dox_tasks.errors.StateStoreUnavailable` when the database cannot be asked."""
    with translated():
        return pending_migration(store.engine)
