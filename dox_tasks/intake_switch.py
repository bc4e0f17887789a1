"""The intake switch: ``dox intake pause`` and ``resume``.

Pausing records ``intake.paused``, resuming records ``intake.resumed``, and the latest
of the two is the state — in Postgres, so a Redis flush cannot silently reopen a paused
intake. Submitting processes read it at most once a second (:data:`CACHE_S`), so a pause
takes effect everywhere within a second without a database read per document.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .audit import record_action
from .db import queries
from .db.store import aware
from .errors import IntakePaused
from .runtime import Runtime

PAUSED, RESUMED = "intake.paused", "intake.resumed"
CACHE_S = 1.0


@dataclass(frozen=True)
class IntakeState:
    paused: bool
    since: str | None = None
    actor: str | None = None
    reason: str | None = None


def intake_state(rt: Runtime) -> IntakeState:
    latest = queries.list_events(rt.state, types=(PAUSED, RESUMED), limit=1, newest_first=True)
    if not latest or latest[0]["type"] == RESUMED:
        return IntakeState(False)
    row = latest[0]
    payload = dict(row["payload"] or {})
    return IntakeState(
        True, aware(row["created_at"]).isoformat(), payload.get("actor"), payload.get("reason")
    )


_cache: dict[str, tuple[float, IntakeState]] = {}
_lock = threading.Lock()
_refreshing = threading.Lock()


def _fresh(hit: tuple[float, IntakeState] | None) -> bool:
    return hit is not None and time.monotonic() - hit[0] <= CACHE_S


def _cached_state(rt: Runtime) -> IntakeState:
    """The state read at most ``CACHE_S`` ago. One thread reads it when it is older; the
    others submitting meanwhile wait for that read instead of each querying too."""
    key = rt.settings.db_url
    with _lock:
        hit = _cache.get(key)
    if not _fresh(hit):
        with _refreshing:
            with _lock:
                hit = _cache.get(key)
            if not _fresh(hit):
                hit = (time.monotonic(), intake_state(rt))
                with _lock:
                    _cache[key] = hit
    assert hit is not None
    return hit[1]


def refuse_if_paused(rt: Runtime) -> None:
    """Raise a clear :class:`IntakePaused` (a :class:`SubmissionError`) while the intake is
    paused (cached ≤ 1 s)."""
    state = _cached_state(rt)
    if state.paused:
        why = f": {state.reason}" if state.reason else ""
        raise IntakePaused(
            f"intake is paused (since {state.since}, by {state.actor}{why}); nothing was queued."
            " Work already in flight continues. `dox intake resume` reopens it."
        )


def set_paused(rt: Runtime, paused: bool, actor: str | None, reason: str | None) -> IntakeState:
    record_action(rt, PAUSED if paused else RESUMED, actor, reason)
    with _lock:
        _cache.pop(rt.settings.db_url, None)
    return intake_state(rt)


def pause(
    rt: Runtime, actor: str | None, reason: str | None, replace: bool = False
) -> tuple[IntakeState, bool]:
    """Pause the intake; ``(state, changed)``. An intake already paused keeps its first
    reason, actor and time (the operator who paused it first is the one to ask) unless
    ``replace``: a second pause is then recorded with the new reason."""
    current = intake_state(rt)
    if current.paused and not replace:
        return current, False
    return set_paused(rt, True, actor, reason), True
