"""What the Prometheus exporter reads at each scrape, as one consistent snapshot.

One snapshot, because retention moving rows into the archive between two reads would
otherwise make a counter dip (Prometheus reads a dip as a reset).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from ..contract import LIVE_STATES, Reason
from .guard import reading
from .queries import newest_run
from .store import StateStore, aware
from .tables import BK, WS
from .tally import Cache, Totals


@dataclass(frozen=True)
class MetricsReading:
    #: Counter and histogram series: archive + live rows (:mod:`.tally`).
    totals: Totals
    #: Live workflows per state (states with none are left out).
    active: dict[str, int]
    #: Kind → time (epoch seconds) of its newest backup with status ``ok``.
    last_backup: dict[str, float]
    #: Finish time (epoch seconds, 0 if never) of the newest successful sync run.
    last_sync: float
    #: Services that run reported down.
    sync_services_down: int
    #: Submissions admitted today (UTC) by the busiest user (what the limiter counts).
    busiest_user: int


def metrics_reading(store: StateStore, cache: Cache, now: datetime, sync_rule: str) -> MetricsReading:
    """Everything the exporter shows from the database; ``sync_rule`` is the team sync's job name."""
    with reading(store, snapshot=True) as conn:
        totals = cache.read(conn, now)
        active: dict[str, int] = {
            state: int(n)
            for state, n in conn.execute(
                select(WS.c.current_state, func.count())
                .where(WS.c.current_state.in_([s.value for s in LIVE_STATES]))
                .group_by(WS.c.current_state)
            ).all()
        }
        sync, down = _sync(conn, sync_rule)
        return MetricsReading(totals, active, _backups(conn), sync, down, _busiest_user(conn))


def _backups(conn: Connection) -> dict[str, float]:
    rows = conn.execute(
        select(BK.c.kind, func.max(BK.c.created_at)).where(BK.c.status == "ok").group_by(BK.c.kind)
    ).all()
    return {kind: aware(ts).timestamp() for kind, ts in rows if ts is not None}


def _sync(conn: Connection, sync_rule: str) -> tuple[float, int]:
    row = conn.execute(newest_run(sync_rule, ["success"])).first()
    if row is None:
        return 0.0, 0
    services: dict[str, Any] = (row.result or {}).get("services") or {}
    down = sum(1 for s in services.values() if isinstance(s, dict) and s.get("status") == "down")
    return aware(row.finished_at).timestamp(), down


def _busiest_user(conn: Connection) -> int:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    n = conn.execute(
        select(func.count())
        .where(
            WS.c.created_at >= midnight,
            WS.c.schedule_slot.is_(None),
            (WS.c.reason.is_(None)) | (WS.c.reason != Reason.RATE_LIMITED.value),
        )
        .group_by(WS.c.user_id)
        .order_by(func.count().desc())
        .limit(1)
    ).scalar()
    return int(n or 0)
