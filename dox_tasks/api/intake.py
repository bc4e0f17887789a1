"""``GET /api/v1/intake``, ``POST /api/v1/intake/pause`` and ``…/resume``: ``dox intake``
over HTTP (scope ``operate``; the key's name is the actor recorded with the action).

Pausing stops new submissions everywhere within a second (:mod:`dox_tasks.intake_switch`);
work already in flight continues.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from ..intake_switch import IntakeState, intake_state, pause, set_paused
from .auth import Caller, needs
from .declared import ReasonText, WithReason, problems
from .problems import Problem

router = APIRouter(prefix="/api/v1", tags=["operate"])


class Intake(BaseModel):
    paused: bool
    #: While paused: since when (ISO 8601), by whom, why.
    since: str | None
    actor: str | None
    reason: str | None


class MaybeReason(BaseModel):
    reason: ReasonText | None = None


def _answer(state: IntakeState) -> Intake:
    return Intake(**asdict(state))


@router.get("/intake", responses=problems())
def get_intake(request: Request, caller: Caller = Depends(needs("operate"))) -> Intake:
    """Whether new submissions are accepted (``dox intake status``)."""
    return _answer(intake_state(request.app.state.runtime))


class PauseRequest(WithReason):
    #: If the intake is already paused: record this pause instead of keeping the first.
    replace: bool = False


@router.post("/intake/pause", responses=problems(400, 409))
def pause_intake(body: PauseRequest, request: Request, caller: Caller = Depends(needs("operate"))) -> Intake:
    """Stop new submissions (``dox intake pause``); a reason is required. Already paused:
    409 with the pause in force (``intake``), unless ``replace`` is true."""
    state, changed = pause(request.app.state.runtime, caller.name, body.reason, body.replace)
    if not changed:
        raise Problem(
            409,
            "already-paused",
            f"the intake is already paused (since {state.since}, by {state.actor}): send"
            ' "replace": true to record this pause instead',
            extra={"intake": asdict(state)},
        )
    return _answer(state)


@router.post("/intake/resume", responses=problems(400))
def resume_intake(
    request: Request,
    caller: Caller = Depends(needs("operate")),
    body: MaybeReason | None = None,
) -> Intake:
    """Accept submissions again (``dox intake resume``); the body and its reason are optional."""
    reason = body.reason if body else None
    return _answer(set_paused(request.app.state.runtime, False, caller.name, reason))
