"""The list's ``next_cursor``: an opaque token for where a page ended.

It carries a :class:`~dox_tasks.db.queries.Position` (the last row's creation time and id),
base64url-encoded. It needs no signature: it is a place in the list, not a permission —
every page is filtered by the caller's user again, so a forged cursor shows nothing the
caller could not page to. Whatever a client sends is checked field by field; anything
that is not a cursor this API could have given out is a 400, never a query.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from ..db.queries import Position
from .problems import Problem

MAX_LENGTH = 200


def encode(position: Position) -> str:
    raw = json.dumps([position.created_at.isoformat(), position.workflow_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(text: str) -> Position:
    refused = Problem(400, "bad-cursor", "cursor: not one this API gave out; list again without it")
    if len(text) > MAX_LENGTH:
        raise refused
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        created, workflow_id = json.loads(raw)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not isinstance(workflow_id, str):
            raise refused
        when = when.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, OverflowError):  # JSON's errors are ValueErrors
        raise refused from None
    if not (0 < len(workflow_id) <= 36 and workflow_id.isascii() and workflow_id.isprintable()):
        raise refused
    return Position(when, workflow_id)
