"""``dox metrics serve``: the Prometheus collector that reads DOX's state at scrape time.

Counters come from :mod:`dox_tasks.db.tally` (rows + archive); gauges are read live: active
workflows, queue depths and consumers, workers answering a ping, the API's refused keys
(``dox_api_auth_failures_total``, counted in Redis by every API process), the last verified
backup per kind, the last successful team sync, and the busiest user's share of the
daily rate limit. A source that cannot be read is reported as ``dox_database_up 0``
or ``dox_broker_up 0`` and its series are left out (never a made-up zero).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric, Sample
from prometheus_client.registry import Collector

from ..apilimits import failure_totals
from ..contract import LIVE_STATES, QUEUES, WorkflowState
from ..db.gauges import MetricsReading, metrics_reading
from ..db.tally import TERMINAL_EVENTS, Cache, Totals, combine, le_label, series_key
from ..jobs.broker import depths
from ..jobs.reaper import inspect_workers
from ..jobs.sync import SYNC_JOB
from ..runtime import Runtime
from . import names
from .names import WORKFLOW_BUCKETS

log = logging.getLogger("dox.metrics")
BACKUP_KINDS = ("database", "config", "documents")
T = TypeVar("T")


#: Failure reasons a run can end with (faults, not answers about the document).
FAULT_REASONS = ("scanner_unavailable", "poison", "timeout", "internal_error")


def zeros(rules: dict[str, str]) -> Totals:
    """Zero series for every known rule (name → kind), so that the first failure of a
    kind shows as an increase instead of a series that appears already at 1."""
    totals: Totals = {}
    for rule, kind in rules.items():
        for status in TERMINAL_EVENTS.values():
            if status != WorkflowState.FAILED.value:
                totals[series_key("workflow_completed_total", rule_name=rule, kind=kind, status=status)] = 0.0
        for reason in FAULT_REASONS:
            totals[series_key("workflow_failed_total", rule_name=rule, kind=kind, reason=reason)] = 0.0
        name = "workflow_duration_seconds"
        for le in [*map(le_label, WORKFLOW_BUCKETS), "+Inf"]:
            totals[series_key(f"{name}_bucket", rule_name=rule, kind=kind, le=le)] = 0.0
        totals[series_key(f"{name}_count", rule_name=rule, kind=kind)] = 0.0
        totals[series_key(f"{name}_sum", rule_name=rule, kind=kind)] = 0.0
    for result in ("clean", "infected", "skipped", "error"):
        totals[series_key("validation_scan_total", result=result)] = 0.0
    totals[series_key("rate_limit_hits_total")] = 0.0
    return totals


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
        totals = data.totals
        for name in ("workflow_completed_total", "workflow_failed_total", "validation_scan_total"):
            yield _counter(name, totals)
        yield _counter("rate_limit_hits_total", totals)
        yield _histogram("workflow_duration_seconds", totals)
        g = _gauge("dox_workflows_active", ["state"])
        for state in sorted(s.value for s in LIVE_STATES):
            g.add_metric([state], data.active.get(state, 0))
        yield g
        g = _gauge("dox_last_backup_success_timestamp_seconds", ["kind"])
        for kind in BACKUP_KINDS:
            g.add_metric([kind], data.last_backup.get(kind, 0.0))
        yield g
        g = _gauge("dox_last_sync_success_timestamp_seconds")
        g.add_metric([], data.last_sync)
        yield g
        g = _gauge("dox_last_sync_services_down")
        g.add_metric([], data.sync_services_down)
        yield g
        limit = self.rt.settings.rate_limit_per_user_per_day
        g = _gauge("dox_rate_limit_per_user_per_day")
        g.add_metric([], limit)
        yield g
        g = _gauge("dox_rate_limit_max_usage_ratio")
        g.add_metric([], data.busiest_user / limit if limit else 0.0)
        yield g

    def _rules(self) -> dict[str, str]:
        """Every known definition: name → ``job`` (scheduled) or ``document``."""
        return {
            name: "job" if d.model.trigger.type == "schedule" else "document"
            for name, d in self.rt.definitions.items()
        }

    def _read_database(self) -> MetricsReading:
        reading = metrics_reading(self.rt.state, self.cache, datetime.now(UTC), SYNC_JOB)
        return replace(reading, totals=combine(zeros(self._rules()), reading.totals))

    # -- broker and workers -------------------------------------------------------
    def _broker(self) -> Iterator[Metric]:
        data, up = _probe("dox_broker_up", "broker", self._read_broker)
        yield up
        if data is None:
            return
        depth, workers, auth_failures = data
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
        name = "dox_api_auth_failures_total"
        family = Metric(name.removesuffix("_total"), names.EXPORTER[name], "counter")
        for reason, count in sorted(auth_failures.items()):
            family.add_sample(name, {"reason": reason}, count)
        yield family

    def _read_broker(self) -> tuple[dict[str, int], Any, dict[str, int]]:
        if self.rt.redis is None:
            raise RuntimeError("no Redis broker configured (embedded mode)")
        depth = depths(self.rt.redis, self.rt.settings.broker_key_prefix or "", list(QUEUES))
        # The API keeps its counters in Redis, so every `dox api serve` process adds to one.
        auth_failures = failure_totals(self.rt.redis, self.rt.settings.namespace)
        return depth, inspect_workers(self.app, None, set(), timeout=self.workers_timeout), auth_failures


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
