"""Helpers for the suites that must hold on both backends of the results layer
(test_state_store's contract, test_read_model's reads and operator writes); their
``store`` fixture is in conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import services

from dox_tasks.db.store import NewWorkflow, StateStore, open_store


def fresh_pg_store() -> Iterator[StateStore]:
    """A migrated store on a fresh PostgreSQL database of its own."""
    url = services.create_database()
    s = open_store(url)
    s.migrate()
    yield s
    s.close()
    services.drop_database(url)


def new_workflow(
    store: StateStore,
    sha: str | None = "a" * 64,
    user: str = "u",
    key: str | None = None,
    **kw: Any,
) -> str:
    """A queued workflow of definition d…d at step ``one``."""
    store.save_definition("d" * 64, "wf", "1", {})
    wid, _ = store.create_workflow(
        NewWorkflow(
            rule_name=kw.pop("rule_name", "wf"),
            definition_hash="d" * 64,
            definition_version="1",
            first_step="one",
            user=user,
            source=None,
            file_name="f.pdf",
            sha256=sha,
            size=3,
            metadata=None,
            idempotency_key=key,
            **kw,
        )
    )
    return wid
