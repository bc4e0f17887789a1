"""Operator actions as events: who did what, and why.

Every operator action (pause, cancel, retry, deletion, restore, …) is one
``workflow_events`` row written through the event bus, so the record of it is in
Postgres beside the workflows it touched. Its own module because the intake switch,
the operator's workflow actions and document deletion all record actions, and none of
them should need the others to do it.
"""

from __future__ import annotations

import getpass
import uuid
from typing import Any

from .runtime import Runtime


def actor_or_default(actor: str | None) -> str:
    """The name an action is recorded under: the one given, else the login running the command."""
    return actor or getpass.getuser()


def record_action(
    rt: Runtime,
    action: str,
    actor: str | None,
    reason: str | None,
    workflow_id: str | None = None,
    **extra: Any,
) -> str:
    """Record (and fan out) one operator action; returns its event id."""
    event_id = f"operator:{action}:{uuid.uuid4().hex}"
    payload = {"action": action, "actor": actor_or_default(actor), "reason": reason, **extra}
    rt.events.emit(event_id, workflow_id, action, payload)
    return event_id
