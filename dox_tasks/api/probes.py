"""``/health`` (the process answers) and ``/ready`` (what it needs answers too): no key needed.

``/ready`` names what failed by its role ("database", "redis"), never by host or URL, so a
load balancer's probe can be public without showing the topology.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..db.schema import schema_behind
from ..runtime import Runtime
from .problems import response

log = logging.getLogger("dox.api")
router = APIRouter()


@router.get("/health", tags=["probes"])
def health() -> dict[str, str]:
    """Liveness: the process serves requests. Checks nothing else."""
    return {"status": "ok"}


def _checks(rt: Runtime) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        behind = schema_behind(rt.state)
        checks["database"] = "ok" if behind is None else "schema behind: run dox db upgrade"
    except Exception as exc:  # noqa: BLE001 - reported by role; the log has the class
        log.warning("ready: database check failed (%s)", type(exc).__name__)
        checks["database"] = "unreachable"
    client = rt.redis
    if client is None:
        checks["redis"] = "not configured"
    else:
        try:
            client.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            log.warning("ready: redis check failed (%s)", type(exc).__name__)
            checks["redis"] = "unreachable"
    return checks


@router.get("/ready", tags=["probes"], response_model=None)
def ready(request: Request) -> dict[str, Any] | JSONResponse:
    """Readiness: PostgreSQL reachable with the schema at head, and Redis answering a ping."""
    checks = _checks(request.app.state.runtime)
    failed = [f"{name} {state}" for name, state in checks.items() if state not in ("ok", "not configured")]
    if failed:
        return response(503, "not ready: " + "; ".join(failed), "not-ready", checks=checks)
    return {"status": "ready", "checks": checks}
