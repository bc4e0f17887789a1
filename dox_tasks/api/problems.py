"""Every error the API sends is an RFC 9457 problem document, never a traceback.

A body is ``application/problem+json`` with ``type``, ``title``, ``status`` and ``detail``.
The detail is written for the caller: for an unexpected exception it is a generic sentence
(the exception goes to the log, where an operator reads it), so no stack, hostname or
secret ever reaches a response.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import TransientError

log = logging.getLogger("dox.api")

MEDIA_TYPE = "application/problem+json"
#: Problem types are relative URIs naming the kind of error (``/problems/unauthorized``…).
TYPE_BASE = "/problems/"


class Problem(Exception):
    """An error to answer with: status, a short type slug and a sentence for the caller."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(detail)
        self.status, self.slug, self.detail, self.headers = status, slug, detail, headers
        #: More members of the problem document (RFC 9457 extensions), e.g. the state in force.
        self.extra = extra or {}


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _slug(status: int) -> str:
    return _title(status).lower().replace(" ", "-").replace("'", "") or "error"


def response(
    status: int, detail: str, slug: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {
        "type": TYPE_BASE + (slug or _slug(status)),
        "title": _title(status),
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return response(exc.status, exc.detail, exc.slug, exc.headers, **exc.extra)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _title(exc.status_code)
    return response(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Where and what, never the input value (it may be a secret sent in the wrong place).
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    detail = f"{'.'.join(first['loc']) or 'request'}: {first['msg']}"
    return response(422, detail, "invalid-request", errors=errors)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %r: a service is unavailable (%s)", request.method, request.url.path, type(exc).__name__)
    return response(
        503, "a service DOX needs is unavailable; try again shortly", "unavailable", {"Retry-After": "5"}
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %r", request.method, request.url.path, exc_info=exc)
    return response(500, "an unexpected error occurred; the server log has the details", "internal-error")


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem document."""
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(TransientError, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
