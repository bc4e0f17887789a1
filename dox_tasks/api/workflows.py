"""``GET /api/v1/workflows`` (the list the runbooks page through) and ``GET
/api/v1/workflows/{id}`` (one workflow as DOX's result object, with its steps and events).

A key with ``read`` sees its own user's workflows; another user's is answered 404, the
same as an id no workflow has, so a key cannot learn which ids exist. ``read_all`` sees all.
The list reads :func:`dox_tasks.db.queries.list_workflows`, as ``dox workflows list`` does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from ..contract import DocumentResult, WorkflowState
from ..db import queries
from ..db.store import aware
from ..errors import UnknownWorkflow
from ..timespec import parse_since
from . import cursor
from .auth import Caller, needs
from .declared import problems
from .problems import Problem

router = APIRouter(prefix="/api/v1")

#: The most rows one page holds.
MAX_LIMIT = 1000


class WorkflowItem(BaseModel):
    """One workflow in a list: the fields the runbooks' jq filters read."""

    workflow_id: str
    rule_name: str
    status: WorkflowState
    current_step: str | None
    #: The normal form of the submitting user, and the name as it was written.
    user: str
    user_display: str | None
    file: str | None
    reason: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    #: Created → finished; for a workflow still queued or running, created → now.
    duration_seconds: float


class WorkflowList(BaseModel):
    workflows: list[WorkflowItem]
    #: Pass as ``?cursor=`` (with the same filters) for the next page; null on the last page.
    next_cursor: str | None


def _item(row: dict[str, Any], now: datetime) -> WorkflowItem:
    created = aware(row["created_at"])
    end = aware(row["finished_at"]) if row["finished_at"] else now
    return WorkflowItem(
        workflow_id=row["workflow_id"],
        rule_name=row["rule_name"],
        status=row["current_state"],
        current_step=row["current_step"],
        user=row["user_id"],
        user_display=row["user_display"],
        file=row["file_name"],
        reason=row["reason"],
        created_at=created,
        updated_at=aware(row["updated_at"]),
        finished_at=aware(row["finished_at"]) if row["finished_at"] else None,
        duration_seconds=round(max((end - created).total_seconds(), 0.0), 3),
    )


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise Problem(400, "bad-parameter", f"since: {exc}") from None


@router.get("/workflows", tags=["workflows"], responses=problems(400))
def list_workflows(
    request: Request,
    caller: Caller = Depends(needs("read")),
    status: Annotated[WorkflowState | None, Query(description="only workflows in this state")] = None,
    rule: Annotated[
        str | None, Query(max_length=200, pattern="^[a-z0-9_]+$", description="a definition name")
    ] = None,
    since: Annotated[
        str | None,
        Query(max_length=64, description="created at or after: a duration back (30m, 24h, 7d) or ISO 8601"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")] = 50,
    cursor_: Annotated[
        str | None,
        Query(
            alias="cursor",
            max_length=cursor.MAX_LENGTH,
            pattern="^[A-Za-z0-9_-]+$",
            description="a previous page's next_cursor, as given (anything else is 400)",
        ),
    ] = None,
) -> WorkflowList:
    """Workflows newest first, one page at a time. Scope ``read``: the key's user's own;
    ``read_all``: everyone's."""
    after = cursor.decode(cursor_) if cursor_ is not None else None
    rows = queries.list_workflows(
        request.app.state.runtime.state,
        status=status.value if status else None,
        rule=rule,
        since=_since(since),
        limit=limit + 1,  # one more than asked: whether another page follows
        user=None if caller.allows("read_all") else caller.user,
        after=after,
    )
    page, more = rows[:limit], len(rows) > limit
    now = datetime.now(UTC)
    return WorkflowList(
        workflows=[_item(r, now) for r in page],
        next_cursor=cursor.encode(queries.Position.of(page[-1])) if more else None,
    )


_RESULT_FIELDS = tuple(DocumentResult.__dataclass_fields__)
#: Step attempt columns a client never sees: a traceback names the server's files and hosts
#: (operators read it in ``workflow_step_results``); the one-line ``error`` stays.
_INTERNAL_STEP_FIELDS = frozenset({"workflow_id", "traceback"})


def _safe(value: Any) -> Any:
    """Datetimes as ISO 8601 UTC with a Z, inside dicts and lists too."""
    if isinstance(value, datetime):
        return aware(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    return value


def could_be_an_id(text: str) -> bool:
    """Workflow ids are UUIDs: at most 36 printable ASCII characters."""
    return len(text) <= 36 and text.isascii() and text.isprintable()


def _result(row: dict[str, Any]) -> dict[str, Any]:
    """The result object: the stored one of a finished workflow, else what the row knows so far."""
    known = DocumentResult(
        file=row["file_name"],
        workflow_id=row["workflow_id"],
        status=row["current_state"],
        reason=row["reason"],
        reason_detail=row["detail"] if row["reason"] else None,
        sha256=row["sha256"],
        size=row["size"],
        duplicate_of=row["duplicate_of"],
        user=row["user_id"],
        user_display=row["user_display"],
    ).to_dict()
    stored = row.get("result") or {}
    return {name: stored.get(name, known[name]) for name in _RESULT_FIELDS}


def readable_workflow(request: Request, caller: Caller, workflow_id: str) -> queries.WorkflowDetail:
    """The workflow, if the caller may read it; 404 alike for an unknown id and another
    user's workflow (under ``read``)."""
    missing = Problem(404, "not-found", f"no workflow with id {workflow_id[:80]!r}")
    if not could_be_an_id(workflow_id):  # answered without a query: NUL and the like break it
        raise missing
    try:
        detail = queries.workflow_detail(request.app.state.runtime.state, workflow_id)
    except UnknownWorkflow:
        raise missing from None
    if detail.workflow["user_id"] != caller.user and not caller.allows("read_all"):
        raise missing
    return detail


@router.get("/workflows/{workflow_id}", tags=["workflows"], responses=problems(404))
def get_workflow(
    workflow_id: str, request: Request, caller: Caller = Depends(needs("read"))
) -> dict[str, Any]:
    """The workflow's result object fields, ``rule_name``, ``step``, ``detail``, times, its step
    attempts and its events. Scope ``read`` (own user's) or ``read_all``."""
    return describe(readable_workflow(request, caller, workflow_id))


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
        "steps": [{k: v for k, v in s.items() if k not in _INTERNAL_STEP_FIELDS} for s in detail.steps],
        "events": [{k: v for k, v in e.items() if k != "workflow_id"} for e in detail.events],
    }
    return dict(_safe(body))
