"""The runbook's metrics in one answer (``GET /api/v1/metrics``): error rate, recent
outcomes, queue depths, p95 durations.

Nothing here is counted twice: the outcomes are the exporter's counters
(:func:`dox_tasks.db.tally.tally`) over the last five minutes, so ``error_rate_5m`` is what
``increase(dox_workflow_failed_total[5m])`` over failed + succeeded shows in Prometheus; the
durations are :mod:`dox_tasks.report`'s (wall time created → finished, successful ``scan``
attempts) over the document workflows created in the last hour; queue depths are read from
the broker as the exporter and ``dox health`` read them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..contract import QUEUES, TERMINAL_STATES, WorkflowState
from ..db.queries import recent_figures
from ..db.tally import Totals
from ..jobs.broker import depths
from ..report import percentile, wall_times
from ..runtime import Runtime

log = logging.getLogger("dox.metrics")

SHORT = timedelta(minutes=5)
LONG = timedelta(hours=1)
#: Only document workflows: a scheduled job's outcome says nothing about documents.
KIND = "document"


@dataclass(frozen=True)
class Summary:
    #: failed / (success + failed) of the document runs that ended in the last 5 minutes;
    #: 0 when none did. Rejections and duplicates are answers about documents, not errors
    #: (the report's success rate counts the same way). Rounded to 4 places, so a shell
    #: reading it with ``bc`` never sees an exponent.
    error_rate_5m: float
    #: Document runs that ended in the last 5 minutes, per terminal state.
    workflows_5m: dict[str, int]
    #: Messages waiting per queue; None when the broker cannot be read.
    queue_depth: dict[str, int] | None
    #: p95 wall time (s) of the document workflows created in the last hour that finished.
    duration_p95_s_1h: float | None
    #: p95 (s) of their successful scan attempts.
    scan_p95_s_1h: float | None


def ended_by_state(totals: Totals) -> dict[str, int]:
    """Terminal state → document runs, from counter series."""
    counts = dict.fromkeys(sorted(s.value for s in TERMINAL_STATES), 0)
    for (metric, labels), value in totals.items():
        lab = dict(labels)
        if lab.get("kind") != KIND:
            continue
        if metric == "workflow_completed_total":
            counts[lab["status"]] += int(value)
        elif metric == "workflow_failed_total":
            counts[WorkflowState.FAILED.value] += int(value)
    return counts


def error_rate(counts: dict[str, int]) -> float:
    failed, judged = counts["failed"], counts["failed"] + counts["success"]
    return round(failed / judged, 4) if judged else 0.0


def _queue_depth(rt: Runtime) -> dict[str, int] | None:
    if rt.redis is None:
        return None
    try:
        return depths(rt.redis, rt.settings.broker_key_prefix or "", list(QUEUES))
    except Exception as exc:  # noqa: BLE001 - the other figures still answer; the log says why
        log.warning("metrics: cannot read the queue depths (%s)", type(exc).__name__)
        return None


def summary(rt: Runtime, now: datetime | None = None) -> Summary:
    recent = recent_figures(rt.state, now or datetime.now(UTC), SHORT, LONG)
    counts = ended_by_state(recent.ended)
    return Summary(
        error_rate_5m=error_rate(counts),
        workflows_5m=counts,
        queue_depth=_queue_depth(rt),
        duration_p95_s_1h=percentile(wall_times(recent.figures.workflows), 95),
        scan_p95_s_1h=percentile([ms / 1000 for ms in recent.figures.scan_ms], 95),
    )
