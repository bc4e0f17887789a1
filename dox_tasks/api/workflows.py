"""``GET /api/v1/workflows/{id}``: one workflow as DOX's result object, with its steps and events.

A key with ``read`` sees its own user's workflows; another user's is answered 404, the
same as an id no workflow has, so a key cannot learn which ids exist. ``read_all`` sees all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request

from ..contract import DocumentResult
from ..db import queries
from ..db.store import aware
from ..errors import UnknownWorkflow
from .auth import Caller, needs
from .problems import Problem

router = APIRouter(prefix="/api/v1")

_RESULT_FIELDS = tuple(DocumentResult.__dataclass_fields__)


def _safe(value: Any) -> Any:
    """Datetimes as ISO 8601 UTC with a Z, inside dicts and lists too."""
    if isinstance(value, datetime):
        return aware(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    return value


def _could_be_an_id(text: str) -> bool:
    """Workflow ids are UUIDs: at most 36 printable ASCII characters."""
    return len(text) <= 36 and text.isascii() and text.isprintable()


def _result(row: dict[str, Any]) -> dict[str, Any]:
    """The result object: the stored one of a finished workflow, else what the row knows so far."""
    known = DocumentResult(
        file=row["file_name"],
        workflow_id=row["workflow_id"],
        status=row["current_state"],
        reason=row["reason"],
        sha256=row["sha256"],
        size=row["size"],
        duplicate_of=row["duplicate_of"],
        user=row["user_id"],
        user_display=row["user_display"],
    ).to_dict()
    stored = row.get("result") or {}
    return {name: stored.get(name, known[name]) for name in _RESULT_FIELDS}


@router.get("/workflows/{workflow_id}", tags=["workflows"])
def get_workflow(
    workflow_id: str, request: Request, caller: Caller = Depends(needs("read"))
) -> dict[str, Any]:
    """The workflow's result object fields, ``rule_name``, ``step``, ``detail``, times, its step
    attempts and its events. Scope ``read`` (own user's) or ``read_all``."""
    missing = Problem(404, "not-found", f"no workflow with id {workflow_id[:80]!r}")
    if not _could_be_an_id(workflow_id):  # answered without a query: NUL and the like break it
        raise missing
    try:
        detail = queries.workflow_detail(request.app.state.runtime.state, workflow_id)
    except UnknownWorkflow:
        raise missing from None
    if detail.workflow["user_id"] != caller.user and not caller.allows("read_all"):
        raise missing
    return describe(detail)


def describe(detail: queries.WorkflowDetail) -> dict[str, Any]:
    """The body ``GET /api/v1/workflows/{id}`` answers with (uploads answer with it too)."""
    row = detail.workflow
    body = {
        **_result(row),
        "rule_name": row["rule_name"],
        "step": row["current_step"],
        "detail": row["detail"],
        "run": row.get("run", 1),
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "steps": [{k: v for k, v in s.items() if k != "workflow_id"} for s in detail.steps],
        "events": [{k: v for k, v in e.items() if k != "workflow_id"} for e in detail.events],
    }
    return dict(_safe(body))
