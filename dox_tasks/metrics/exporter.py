"""``dox metrics serve``: the Prometheus collector that reads DOX's state at scrape time.

Counters come from :mod:`.tally` (rows + archive); gauges are read live: active
workflows, queue depths and consumers, workers answering a ping, the last verified
backup per kind, the last successful team sync, and the busiest user's share of the
daily rate limit. A source that cannot be read is reported as ``dox_database_up 0``
or ``dox_broker_up 0`` and its series are left out (never a made-up zero).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric, Sample
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from ..contract import LIVE_STATES, QUEUES, Reason
from ..db.models import BackupRow
from ..db.store import WS, aware
from ..jobs.sync import SYNC_JOB
from ..runtime import Runtime
from . import names
from .tally import Cache, Totals, combine, zeros

log = logging.getLogger("dox.metrics")
BACKUP_KINDS = ("database", "config", "documents")
T = TypeVar("T")


def _counter(name: str, totals: Totals) -> Metric:
    """A counter family from tally series (``name`` without ``_total``, as the client wants)."""
    family = Metric(name.removesuffix("_total"), names.EXPORTER[name], "counter")
    for (metric, labels), value in sorted(totals.items()):
        if metric == name:
            family.samples.append(Sample(name, dict(labels), value, None, None))
    return family


def _histogram(name: str, totals: Totals) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, names.EXPORTER[name], labels=["rule_name", "kind"])
    series: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"buckets": {}, "sum": 0.0})
    for (metric, labels), value in totals.items():
        lab = dict(labels)
        if metric == f"{name}_bucket":
            series[(lab["rule_name"], lab["kind"])]["buckets"][lab["le"]] = value
        elif metric == f"{name}_sum":
            series[(lab["rule_name"], lab["kind"])]["sum"] = value
    for (rule, kind), h in sorted(series.items()):
        order = sorted(h["buckets"], key=lambda le: float("inf") if le == "+Inf" else float(le))
        family.add_metric([rule, kind], [(le, h["buckets"][le]) for le in order], h["sum"])
    return family


def _gauge(name: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, names.EXPORTER[name], labels=labels)


class DoxCollector(Collector):
    """Collects at each scrape; ``workers_timeout`` bounds the broadcast ping."""

    def __init__(self, rt: Runtime, app: Any, workers_timeout: float = 1.0):
        self.rt = rt
        self.app = app
        self.workers_timeout = workers_timeout
        # Rows settle once the longest step time limit (and a commit delay) has passed.
        self.cache = Cache(settle_s=rt.settings.workflow_timeout + 60)

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        yield from self._broker()

    # -- Postgres ------------------------------------------------------------------
    def _database(self) -> Iterator[Metric]:
        data, up = _probe("dox_database_up", "database", self._read_database)
        yield up
        if data is None:
            return
        totals, active, backups, sync, busiest = data
        for name in ("workflow_completed_total", "workflow_failed_total", "validation_scan_total"):
            yield _counter(name, totals)
        yield _counter("rate_limit_hits_total", totals)
        yield _histogram("workflow_duration_seconds", totals)
        g = _gauge("dox_workflows_active", ["state"])
        for state in sorted(s.value for s in LIVE_STATES):
            g.add_metric([state], active.get(state, 0))
        yield g
        g = _gauge("dox_last_backup_success_timestamp_seconds", ["kind"])
        for kind in BACKUP_KINDS:
            g.add_metric([kind], backups.get(kind, 0.0))
        yield g
        ts, down = sync
        g = _gauge("dox_last_sync_success_timestamp_seconds")
        g.add_metric([], ts)
        yield g
        g = _gauge("dox_last_sync_services_down")
        g.add_metric([], down)
        yield g
        limit = self.rt.settings.rate_limit_per_user_per_day
        g = _gauge("dox_rate_limit_per_user_per_day")
        g.add_metric([], limit)
        yield g
        g = _gauge("dox_rate_limit_max_usage_ratio")
        g.add_metric([], busiest / limit if limit else 0.0)
        yield g

    def _rules(self) -> dict[str, str]:
        """Every known definition: name → ``job`` (scheduled) or ``document``."""
        return {
            name: "job" if d.model.trigger.type == "schedule" else "document"
            for name, d in self.rt.definitions.items()
        }

    def _read_database(self) -> tuple[Totals, dict[str, int], dict[str, float], tuple[float, int], int]:
        # One snapshot: retention moving rows into the archive between two reads would
        # otherwise make a counter dip (Prometheus reads a dip as a reset).
        engine = self.rt.state.engine
        snapshot = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
        with engine.connect().execution_options(**snapshot) as conn, conn.begin():
            totals = combine(zeros(self._rules()), self.cache.read(conn, datetime.now(UTC)))
            active: dict[str, int] = dict(
                conn.execute(
                    select(WS.c.current_state, func.count())
                    .where(WS.c.current_state.in_([s.value for s in LIVE_STATES]))
                    .group_by(WS.c.current_state)
                ).all()
            )
            return totals, active, self._backups(conn), self._sync(conn), self._busiest_user(conn)

    @staticmethod
    def _backups(conn: Any) -> dict[str, float]:
        table = BackupRow.__table__
        rows = conn.execute(
            select(table.c.kind, func.max(table.c.created_at))
            .where(table.c.status == "ok")
            .group_by(table.c.kind)
        ).all()
        return {kind: aware(ts).timestamp() for kind, ts in rows if ts is not None}

    @staticmethod
    def _sync(conn: Any) -> tuple[float, int]:
        row = conn.execute(
            select(WS.c.finished_at, WS.c.result)
            .where(WS.c.rule_name == SYNC_JOB, WS.c.current_state == "success")
            .order_by(WS.c.finished_at.desc())
            .limit(1)
        ).first()
        if row is None or row.finished_at is None:
            return 0.0, 0
        services = (row.result or {}).get("services") or {}
        down = sum(1 for s in services.values() if isinstance(s, dict) and s.get("status") == "down")
        return aware(row.finished_at).timestamp(), down

    @staticmethod
    def _busiest_user(conn: Any) -> int:
        """Submissions admitted today (UTC) by the busiest user (what the limiter counts)."""
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

    # -- broker and workers -------------------------------------------------------
    def _broker(self) -> Iterator[Metric]:
        data, up = _probe("dox_broker_up", "broker", self._read_broker)
        yield up
        if data is None:
            return
        depth, workers = data
        g = _gauge("dox_queue_depth", ["queue"])
        for q in QUEUES:
            g.add_metric([q], depth[q])
        yield g
        g = _gauge("dox_queue_workers", ["queue"])
        for q in QUEUES:
            g.add_metric([q], sum(1 for qs in workers.queues.values() if q in qs))
        yield g
        g = _gauge("dox_workers_up")
        g.add_metric([], len(workers.alive))
        yield g

    def _read_broker(self) -> tuple[dict[str, int], Any]:
        from ..jobs.broker import depths
        from ..jobs.reaper import inspect_workers

        if self.rt.redis is None:
            raise RuntimeError("no Redis broker configured (embedded mode)")
        depth = depths(self.rt.redis, self.rt.settings.broker_key_prefix or "", list(QUEUES))
        return depth, inspect_workers(self.app, None, set(), timeout=self.workers_timeout)


def _probe(name: str, what: str, read: Callable[[], T]) -> tuple[T | None, Metric]:
    """Read one source; its ``*_up`` gauge says whether that worked (a scrape always answers)."""
    up = _gauge(name)
    try:
        data: T | None = read()
    except Exception as exc:  # noqa: BLE001 - report the source as down, never fail the scrape
        log.warning("metrics: cannot read the %s: %s", what, exc)
        data = None
    up.add_metric([], 0 if data is None else 1)
    return data, up
