"""``POST /api/v1/workflows/{id}/retry`` and ``…/cancel``: ``dox workflows retry`` and
``cancel`` over HTTP (scope ``operate``).

The same functions as the CLI (:mod:`dox_tasks.operator`), with the key's name as the actor
recorded in the action's event. An operator acts on every user's workflows, as on the CLI.
An unknown id is 404; a refusal (the workflow's state does not allow it) is 409 with the
operator's own sentence.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from ..app import app as celery_app
from ..errors import DoxError, StateStoreError, TransientError, UnknownWorkflow
from ..operator import cancel, retry
from .auth import Caller, needs
from .declared import WithReason, problems
from .problems import Problem
from .workflows import could_be_an_id

router = APIRouter(prefix="/api/v1")


class RetryBody(WithReason):
    #: Resume at the first step that never succeeded (default: from the start).
    from_failed: bool = False


class Retried(BaseModel):
    workflow_id: str
    status: str
    #: The step the new run starts at, and its number (2 after the first retry).
    from_step: str
    run: int
    #: Set when the broker refused the message: the row is queued and the reaper re-sends it.
    warning: str | None = None


class Cancelled(BaseModel):
    workflow_id: str
    status: str
    #: The step it was at; the step messages revoked.
    step: str | None
    revoked: list[str]


def _refused(workflow_id: str, exc: Exception) -> Problem:
    if isinstance(exc, UnknownWorkflow):
        return Problem(404, "not-found", f"no workflow with id {workflow_id[:80]!r}")
    return Problem(409, "conflict", "; ".join(str(exc).splitlines()))


def _checked(workflow_id: str) -> None:
    if not could_be_an_id(workflow_id):
        raise _refused(workflow_id, UnknownWorkflow(workflow_id))


@router.post(
    "/workflows/{workflow_id}/retry", tags=["operate"], status_code=202, responses=problems(400, 404, 409)
)
def retry_workflow(
    workflow_id: str,
    body: RetryBody,
    request: Request,
    response: Response,
    caller: Caller = Depends(needs("operate")),
) -> Retried:
    """Run a failed or cancelled workflow again: a new run, queued (``dox workflows retry``)."""
    _checked(workflow_id)
    rt = request.app.state.runtime
    try:
        result = retry(rt, workflow_id, body.from_failed, caller.name, body.reason)
    except (TransientError, StateStoreError):
        raise
    except DoxError as exc:
        raise _refused(workflow_id, exc) from None
    response.headers["Location"] = f"/api/v1/workflows/{workflow_id}"
    return Retried(**result)


@router.post("/workflows/{workflow_id}/cancel", tags=["operate"], responses=problems(400, 404, 409))
def cancel_workflow(
    workflow_id: str, body: WithReason, request: Request, caller: Caller = Depends(needs("operate"))
) -> Cancelled:
    """End a queued or running workflow ``cancelled`` (``dox workflows cancel``)."""
    _checked(workflow_id)
    try:
        result = cancel(request.app.state.runtime, celery_app, workflow_id, caller.name, body.reason)
    except (TransientError, StateStoreError):
        raise
    except DoxError as exc:
        raise _refused(workflow_id, exc) from None
    return Cancelled(**result)
