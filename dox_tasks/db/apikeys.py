"""The ``api_keys`` table: the only code that reads or writes it.

Rows hold the public prefix and the SHA-256 of the secret (never the secret); what a
key means (scopes, verification) is :mod:`dox_tasks.apikeys`. Each function is one
transaction with DOX's exceptions (:mod:`.guard`) and returns plain dicts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, insert, or_, select, update

from ..errors import ApiKeyError
from .guard import reading
from .store import StateStore, aware
from .tables import AK


def insert_key(state: StateStore, row: dict[str, Any]) -> None:
    """Store a new key (``row`` has the table's columns; usage starts at 0)."""
    with reading(state) as conn:
        conn.execute(insert(AK).values(**row))


def get_key(state: StateStore, prefix: str) -> dict[str, Any] | None:
    with reading(state) as conn:
        row = conn.execute(select(AK).where(AK.c.api_key == prefix)).mappings().first()
    return dict(row) if row else None


def list_keys(state: StateStore) -> list[dict[str, Any]]:
    """Every key, oldest first."""
    with reading(state) as conn:
        rows = conn.execute(select(AK).order_by(AK.c.created_at, AK.c.api_key)).mappings()
        return [dict(r) for r in rows]


def revoke_key(state: StateStore, prefix: str, when: datetime) -> dict[str, Any] | None:
    """Mark the key revoked at ``when`` (an earlier revocation stands); the row after, or None."""
    with reading(state) as conn:
        conn.execute(
            update(AK).where(AK.c.api_key == prefix, AK.c.revoked_at.is_(None)).values(revoked_at=when)
        )
        row = conn.execute(select(AK).where(AK.c.api_key == prefix)).mappings().first()
    return dict(row) if row else None


def rotate_key(
    state: StateStore, prefix: str, new_row: dict[str, Any], when: datetime, grace: timedelta
) -> dict[str, Any] | None:
    """In one transaction: insert ``new_row`` with the old key's name, user and scopes, end
    the old key at min(its expiry, ``when`` + ``grace``) and point it at the new one.

    Returns the old row as it is after, or None when there is no such key (nothing written).
    ``new_row`` needs only the new key's own columns (prefix, hash, created_at, expires_at).
    """
    with reading(state) as conn:
        old = conn.execute(select(AK).where(AK.c.api_key == prefix).with_for_update()).mappings().first()
        if old is None:
            return None
        if old["revoked_at"] is not None or old["replaced_by"] is not None:
            why = (
                "was revoked"
                if old["revoked_at"] is not None
                else f"was already rotated to {old['replaced_by']}"
            )
            raise ApiKeyError(f"API key {prefix} {why}; nothing was changed")
        ends = when + grace
        if old["expires_at"] is not None and aware(old["expires_at"]) < ends:
            ends = aware(old["expires_at"])
        copied = {k: old[k] for k in ("name", "user_id", "user_display", "scopes")}
        conn.execute(insert(AK).values(**{**copied, **new_row, "usage_count": 0}))
        conn.execute(
            update(AK).where(AK.c.api_key == prefix).values(expires_at=ends, replaced_by=new_row["api_key"])
        )
        after = conn.execute(select(AK).where(AK.c.api_key == prefix)).mappings().one()
    return dict(after)


def record_use(state: StateStore, counts: dict[str, tuple[int, datetime]]) -> None:
    """Add batched uses: ``{prefix: (uses, last use)}``, one UPDATE per key, one transaction.

    ``last_used`` only moves forward, so batches flushed out of order cannot set it back.
    """
    if not counts:
        return
    with reading(state) as conn:
        for prefix, (uses, last) in sorted(counts.items()):
            conn.execute(
                update(AK)
                .where(AK.c.api_key == prefix)
                .values(
                    usage_count=AK.c.usage_count + uses,
                    last_used=case(
                        (or_(AK.c.last_used.is_(None), AK.c.last_used < last), last), else_=AK.c.last_used
                    ),
                )
            )
