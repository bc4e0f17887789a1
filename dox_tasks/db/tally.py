"""Counters derived from the results layer: one aggregate query per scrape.

Why counts come from Postgres: a worker process's in-memory counter dies with the
process and is split across prefork children and containers; the rows are the
truth, whoever wrote them. Each finished *run* of a workflow leaves exactly one
terminal event row (``workflow.success``, ``workflow.failed``, …; event ids are
unique per run), so counting those rows gives monotonic counters even when an
operator retries a failed workflow (the failure stays counted, the success is added).

Retention deletes old rows, which would make a counter go down (Prometheus reads
that as a reset). So retention first adds what it deletes to ``metric_totals``
(:func:`archive`), and the exporter reports archive + live rows.

The functions take a ``Connection`` because they run inside other transactions of
``dox_tasks.db`` (the exporter's snapshot in :mod:`.gauges`, retention's deletes in
:mod:`.housekeeping`); outside ``db/`` only tests call them directly.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, case, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..contract import TERMINAL_STATES, WorkflowState
from ..metrics.names import WORKFLOW_BUCKETS
from .tables import EV, MT, SR, WS

#: (metric name, sorted label pairs) → value
Key = tuple[str, tuple[tuple[str, str], ...]]
Totals = dict[Key, float]

TERMINAL_EVENTS = {f"workflow.{s.value}": s.value for s in TERMINAL_STATES}
#: The step whose outputs are virus-scan verdicts (``scan`` in every shipped definition).
SCAN_STEP = "scan"
SCAN_ANSWERED = ("success", "rejected")
SCAN_FAULTS = ("retry", "failed", "lost")


def series_key(name: str, **labels: str) -> Key:
    """A series' key in :data:`Totals`."""
    return name, tuple(sorted(labels.items()))


def le_label(bound: float) -> str:
    """A histogram bucket's ``le`` label as the exporter writes it."""
    return repr(float(bound))


def tally(
    conn: Connection,
    workflow_ids: list[str] | None = None,
    since: datetime | None = None,
    before: datetime | None = None,
) -> Totals:
    """Counter and histogram series over the given workflows' rows (all rows if None),
    optionally only rows written in [since, before): terminal events by ``created_at``,
    scan attempts by ``started_at``."""
    totals: Totals = defaultdict(float)
    if workflow_ids is not None and not workflow_ids:
        return totals
    reason = EV.c.payload["reason"].as_string()
    duration_s = EV.c.payload["duration_ms"].as_float() / 1000.0
    kind = case((WS.c.schedule_slot.is_(None), "document"), else_="job")
    q = (
        select(
            EV.c.type,
            WS.c.rule_name,
            kind.label("kind"),
            reason.label("reason"),
            func.count().label("n"),
            func.coalesce(func.sum(duration_s), 0.0).label("seconds"),
            *(
                func.sum(case((duration_s <= b, 1), else_=0)).label(f"b{i}")
                for i, b in enumerate(WORKFLOW_BUCKETS)
            ),
        )
        .join_from(EV, WS, EV.c.workflow_id == WS.c.workflow_id)
        .where(EV.c.type.in_(list(TERMINAL_EVENTS)))
        .group_by(EV.c.type, WS.c.rule_name, kind, reason)
    )
    scans = (
        select(SR.c.state, SR.c.output["scan"].as_string().label("result"), func.count().label("n"))
        .where(SR.c.step == SCAN_STEP, SR.c.state.in_(SCAN_ANSWERED + SCAN_FAULTS))
        .group_by(SR.c.state, SR.c.output["scan"].as_string())
    )
    if workflow_ids is not None:
        q = q.where(EV.c.workflow_id.in_(workflow_ids))
        scans = scans.where(SR.c.workflow_id.in_(workflow_ids))
    if since is not None:
        q, scans = q.where(EV.c.created_at >= since), scans.where(SR.c.started_at >= since)
    if before is not None:
        q, scans = q.where(EV.c.created_at < before), scans.where(SR.c.started_at < before)
    for r in conn.execute(q):
        _add_terminal(totals, r)
    for r in conn.execute(scans):
        result = "error" if r.state in SCAN_FAULTS else (r.result or "unknown")
        totals[series_key("validation_scan_total", result=result)] += r.n
    return totals


def _add_terminal(totals: Totals, r: Any) -> None:
    status, rule, kind = TERMINAL_EVENTS[r.type], r.rule_name, r.kind
    if status == WorkflowState.FAILED.value:
        totals[
            series_key("workflow_failed_total", rule_name=rule, kind=kind, reason=r.reason or "unknown")
        ] += r.n
    else:
        totals[series_key("workflow_completed_total", rule_name=rule, kind=kind, status=status)] += r.n
    if r.reason == "rate_limited":
        totals[series_key("rate_limit_hits_total")] += r.n
    name = "workflow_duration_seconds"
    for i, bound in enumerate(WORKFLOW_BUCKETS):
        totals[series_key(f"{name}_bucket", rule_name=rule, kind=kind, le=le_label(bound))] += (
            getattr(r, f"b{i}") or 0
        )
    totals[series_key(f"{name}_bucket", rule_name=rule, kind=kind, le="+Inf")] += r.n
    totals[series_key(f"{name}_count", rule_name=rule, kind=kind)] += r.n
    totals[series_key(f"{name}_sum", rule_name=rule, kind=kind)] += float(r.seconds or 0.0)


class Cache:
    """Totals of rows old enough not to change any more, so a scrape reads only recent rows.

    A terminal event never changes once written; a scan attempt is final once its step's
    time limit has passed (``settle_s`` covers that and commit delays). The cache is
    rebuilt whenever the archive changes (retention moved rows into it), so nothing is
    counted twice. Cost per scrape: the rows of the last ``settle_s`` + ``step_s``
    seconds, instead of every row (see bench/metrics.py).
    """

    def __init__(self, settle_s: float, step_s: float = 60.0):
        self.settle = timedelta(seconds=settle_s)
        self.step = timedelta(seconds=step_s)
        self.upto: datetime | None = None
        self.mark: Totals | None = None
        self.totals: Totals = {}

    def read(self, conn: Connection, now: datetime) -> Totals:
        archive = dict(archived(conn))  # only retention changes it
        watermark = now - self.settle
        if self.upto is None or archive != self.mark:
            self.totals, self.upto, self.mark = tally(conn, before=watermark), watermark, archive
        elif watermark - self.upto >= self.step:
            self.totals = combine(self.totals, tally(conn, since=self.upto, before=watermark))
            self.upto = watermark
        return combine(archive, self.totals, tally(conn, since=self.upto))


def combine(*parts: Totals) -> Totals:
    out: Totals = defaultdict(float)
    for part in parts:
        for key, value in part.items():
            out[key] += value
    return out


def _encode(labels: Iterable[tuple[str, str]]) -> str:
    return json.dumps(dict(labels), sort_keys=True)


def _decode(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(json.loads(text).items()))


def archived(conn: Connection) -> Totals:
    """What retention moved into ``metric_totals``."""
    totals: Totals = defaultdict(float)
    for r in conn.execute(select(MT.c.metric, MT.c.labels, MT.c.value)):
        totals[(r.metric, _decode(r.labels))] += r.value
    return totals


def archive(conn: Connection, workflow_ids: list[str]) -> int:
    """Add these workflows' counts to ``metric_totals`` (call in the transaction that
    deletes them, so a counter never goes down). Returns the series touched."""
    totals = tally(conn, workflow_ids)
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    for (metric, labels), value in totals.items():
        stmt = insert(MT).values(metric=metric, labels=_encode(labels), value=value)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["metric", "labels"], set_={"value": MT.c.value + stmt.excluded.value}
            )
        )
    return len(totals)
