"""What the OpenAPI document says a route may answer besides its success: problem documents.

Schema-driven tests (Schemathesis) check every response against the document, so each
route lists the problem statuses it can send, as ``application/problem+json`` — and by
listing 422 itself a route replaces FastAPI's default ``HTTPValidationError`` (which would
declare ``application/json``, not what :mod:`.problems` sends).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from .problems import MEDIA_TYPE

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}

_WHY = {
    400: "a parameter DOX cannot use, or a body that is not JSON (the detail says which)",
    401: "no valid API key",
    403: "the key lacks the scope",
    404: "no such workflow, or not the key's user's",
    409: "the workflow's state does not allow it (the detail says why)",
    422: "a parameter or body that does not fit the schema",
    503: "a service DOX needs is unavailable",
}
#: What every keyed route can answer.
KEYED = (401, 403, 422, 503)


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status as a problem document (plus :data:`KEYED`)."""
    return {
        status: {"description": _WHY[status], "content": {MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}}}
        for status in sorted({*statuses, *KEYED})
    }


#: Why an operator acts, as written: one line of at most 500 characters, kept in the
#: action's event row (no control characters: PostgreSQL's JSON refuses NUL, terminals obey ESC).
ReasonText = Annotated[str, Field(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")]


class WithReason(BaseModel):
    """The body of an operator action."""

    reason: ReasonText
