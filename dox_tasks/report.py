"""``dox report daily | weekly``: the runbook's performance review, from Postgres.

Daily is yesterday (UTC), weekly the 7 UTC days before today; ``--since`` (``24h``,
``today``) reports from then until now instead, so a new install can see what it just
did. Every form names its window (``window``: from … to … UTC).

Success rate is success / (success + failed) — rejected and duplicate documents are
answers, not faults, and are counted apart. Durations are workflow wall times
(created → finished); scan time is the ``scan`` step's successful attempts.
Targets from the seeds: success ≥ 95 %, p95 duration ≤ 30 s, p95 scan ≤ 5 s.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from .db.queries import report_figures
from .db.store import aware
from .runtime import Runtime

TARGETS = {"success_rate": 0.95, "p95_duration_s": 30.0, "p95_scan_s": 5.0}
DOCUMENT_RULE = "process_document_upload"


def period(kind: str, now: datetime) -> tuple[datetime, datetime]:
    end = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return end - timedelta(days=1 if kind == "daily" else 7), end


def window(start: datetime, end: datetime) -> str:
    """The period a report covers, as a person reads it: ``from … to … UTC``."""
    fmt = "%Y-%m-%d %H:%M"
    return f"from {start.astimezone(UTC).strftime(fmt)} to {end.astimezone(UTC).strftime(fmt)} UTC"


def percentile(values: list[float], q: int) -> float | None:
    """The ``q``-th percentile (inclusive method), rounded to ms; None without values."""
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)


def wall_times(rows: list[dict[str, Any]]) -> list[float]:
    """Created → finished, in seconds, of the rows that finished."""
    return [
        (aware(r["finished_at"]) - aware(r["created_at"])).total_seconds()
        for r in rows
        if r["finished_at"] is not None
    ]


def build(
    rt: Runtime, kind: str, now: datetime | None = None, since: datetime | None = None
) -> dict[str, Any]:
    """``kind``'s period before ``now``, or [``since``, ``now``) when given."""
    now = now or datetime.now(UTC)
    start, end = period(kind, now) if since is None else (since.astimezone(UTC), now.astimezone(UTC))
    figures = report_figures(rt.state, start, end, DOCUMENT_RULE)
    rows = figures.workflows
    states = Counter(r["current_state"] for r in rows)
    reasons_failed = Counter(r["reason"] for r in rows if r["current_state"] == "failed" and r["reason"])
    reasons_rejected = Counter(r["reason"] for r in rows if r["current_state"] == "rejected" and r["reason"])
    durations = wall_times(rows)
    scan_s = [ms / 1000 for ms in figures.scan_ms]
    judged = states["success"] + states["failed"]
    rate = round(states["success"] / judged, 4) if judged else None
    p50, p95, scan95 = percentile(durations, 50), percentile(durations, 95), percentile(scan_s, 95)
    return {
        "report": kind,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "window": window(start, end),
        "total": len(rows),
        **{s: states.get(s, 0) for s in ("success", "failed", "rejected", "duplicate", "cancelled")},
        "in_flight": states.get("queued", 0) + states.get("running", 0),
        "success_rate": rate,
        "success_rate_target": TARGETS["success_rate"],
        "success_rate_met": None if rate is None else rate >= TARGETS["success_rate"],
        "average_duration_s": round(statistics.fmean(durations), 3) if durations else None,
        "p50_duration_s": p50,
        "p95_duration_s": p95,
        "p95_duration_target_s": TARGETS["p95_duration_s"],
        "p95_duration_met": None if p95 is None else p95 <= TARGETS["p95_duration_s"],
        "p95_scan_s": scan95,
        "p95_scan_target_s": TARGETS["p95_scan_s"],
        "p95_scan_met": None if scan95 is None else scan95 <= TARGETS["p95_scan_s"],
        "top_failure_reasons": reasons_failed.most_common(5),
        "top_rejection_reasons": reasons_rejected.most_common(5),
        "rate_limit_hits": reasons_rejected.get("rate_limited", 0),
        "infected": reasons_rejected.get("infected", 0),
    }
