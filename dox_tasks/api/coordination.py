"""``POST /api/v1/coordination/sync`` (scope ``operate``) and ``GET /api/v1/services/health``
(scope ``read_all``): the team sync started now, and what its last run found.

A sync started here is a manual run, as ``dox sync run``: its own ``manual:<time>`` slot,
so the 09:00 slot stays free, with the key's name as who started it. The services' health
is the newest finished sync's record (``success``, or ``failed`` with every service
``down``; a cancelled sync checked nothing) in ``workflow_states.result`` (per service: status,
latency, cause), read through :func:`dox_tasks.db.queries.last_finished_run`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from ..contract import WorkflowState
from ..db import queries
from ..db.store import aware
from ..errors import SubmissionError
from ..jobs.launch import run_now
from ..jobs.sync import SYNC_JOB
from .auth import Caller, needs
from .declared import problems
from .problems import Problem

log = logging.getLogger("dox.api")
#: The endings of a sync that checked the services (a cancelled one found nothing).
CHECKED = (WorkflowState.SUCCESS.value, WorkflowState.FAILED.value)
router = APIRouter(prefix="/api/v1", tags=["operate"])


class SyncStarted(BaseModel):
    workflow_id: str
    status: str
    #: ``manual:<time>``: the slot this run holds.
    slot: str


class ServiceHealth(BaseModel):
    status: str
    latency_ms: int | None
    cause: str | None


class ServicesHealth(BaseModel):
    #: The sync whose findings these are (null: no sync has ended yet), its outcome and end.
    workflow_id: str | None
    status: str | None
    checked_at: datetime | None
    services: dict[str, ServiceHealth]


@router.post("/coordination/sync", status_code=202, responses=problems())
def start_sync(
    request: Request, response: Response, caller: Caller = Depends(needs("operate"))
) -> SyncStarted:
    """Start the team coordination sync now (a manual slot, as ``dox sync run``)."""
    rt = request.app.state.runtime
    if SYNC_JOB not in rt.definitions:
        raise Problem(503, "unavailable", f"no {SYNC_JOB} definition is loaded on this server")
    try:
        launch = run_now(rt, SYNC_JOB, caller.name)
    except SubmissionError as exc:  # the broker refused: its error may name hosts, so it is logged
        log.warning("sync not started: %s", exc)
        raise Problem(
            503,
            "unavailable",
            "the sync could not be queued: the broker is unavailable",
            {"Retry-After": "5"},
        ) from None
    response.headers["Location"] = f"/api/v1/workflows/{launch.workflow_id}"
    return SyncStarted(workflow_id=launch.workflow_id, status="queued", slot=launch.slot)


def _service(found: Any) -> ServiceHealth:
    found = found if isinstance(found, dict) else {}
    return ServiceHealth(
        status=str(found.get("status") or "unknown"),
        latency_ms=found.get("latency_ms"),
        cause=found.get("cause"),
    )


@router.get("/services/health", responses=problems())
def services_health(request: Request, caller: Caller = Depends(needs("read_all"))) -> ServicesHealth:
    """Each service's status, latency and cause as the last ended sync found them."""
    run = queries.last_finished_run(request.app.state.runtime.state, SYNC_JOB, CHECKED)
    if run is None:
        return ServicesHealth(workflow_id=None, status=None, checked_at=None, services={})
    services = (run.get("result") or {}).get("services") or {}
    return ServicesHealth(
        workflow_id=run["workflow_id"],
        status=run["current_state"],
        checked_at=aware(run["finished_at"]),
        services={str(name): _service(found) for name, found in sorted(services.items())},
    )
