"""``GET /api/v1/metrics`` (scope ``read_all``): the runbook's error-rate check and friends.

``curl …/api/v1/metrics | jq -r '.metrics.error_rate_5m // 0'`` gives a plain decimal
(0 when nothing ended) that ``bc`` compares. The figures and their definitions are
:mod:`dox_tasks.metrics.summary`'s.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from ..metrics.summary import summary
from .auth import Caller, needs
from .declared import problems

router = APIRouter(prefix="/api/v1", tags=["metrics"])


class Metrics(BaseModel):
    error_rate_5m: float = Field(ge=0, le=1)
    workflows_5m: dict[str, int]
    queue_depth: dict[str, int] | None
    duration_p95_s_1h: float | None
    scan_p95_s_1h: float | None


class MetricsBody(BaseModel):
    metrics: Metrics


@router.get("/metrics", responses=problems())
def get_metrics(request: Request, caller: Caller = Depends(needs("read_all"))) -> MetricsBody:
    """Failed share of the document runs ended in the last 5 minutes, those runs by state,
    messages waiting per queue, and the last hour's p95 wall time and scan time (seconds)."""
    return MetricsBody(metrics=Metrics(**asdict(summary(request.app.state.runtime))))
