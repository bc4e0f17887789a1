"""``POST /api/v1/documents`` and ``POST /api/v1/validate/scan``: documents in, workflow ids out.

Both hand the bytes to :func:`dox_tasks.intake.accept` — the one way a document enters DOX
(staging under its hash lock, the ``queued`` row, then the message) — as the body arrives
(:mod:`dox_tasks.api.upload_body`), in a worker thread, so nothing blocks the event loop
and the bytes are staged once. The key's user is the workflow's user. A new workflow is
answered 202 ``{workflow_id, status: "queued"}`` with ``Location``; an idempotency key the
user sent before, or ``?wait=`` that saw the workflow end, 200 with the body
``GET /api/v1/workflows/{id}`` gives. A paused intake is 503 with its reason.

``/validate/scan`` runs the shipped ``validate_and_scan`` definition (nothing stored); it
also takes the seed's JSON ``{"file_path", "file_hash", "file_size"}`` naming a file in
``DOX_INBOX_ROOT``, opened confined (:func:`dox_tasks.inbox.open_document`) and staged from
that handle while its hash and size are checked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from typing import Any, BinaryIO, cast

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import parse_options_header

from .. import intake
from ..contract import LIVE_STATES
from ..db import queries
from ..errors import IntakePaused, NotSent, SubmissionError
from ..inbox import open_document
from ..runtime import Runtime
from .auth import Caller, needs
from .problems import Problem
from .upload_body import (
    FORM_ALLOWANCE,
    MAX_METADATA,
    MAX_SOURCE,
    BodyStream,
    MultipartUpload,
    RawUpload,
    ThreadReader,
    Upload,
    header_text,
    safe_name,
    too_large,
)
from .workflows import describe

log = logging.getLogger("dox.api.uploads")
router = APIRouter(prefix="/api/v1", tags=["documents"])

DOCUMENT_WORKFLOW = "process_document_upload"
CHECK_WORKFLOW = "validate_and_scan"
#: Uploads streaming into staging at once (each holds a worker thread while its body arrives);
#: more wait their turn, so slow senders cannot take every thread the other routes need.
UPLOAD_THREADS = 32
MAX_WAIT_S = 60
MAX_JSON = 8 * 1024
PAUSED_RETRY_AFTER = "60"
_NOT_A_DOCUMENT = {"application/x-www-form-urlencoded", "text/plain", "application/json"}
_SHA256 = re.compile(r"[0-9a-f]{64}")

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_FORM = {
    "schema": {
        "type": "object",
        "required": ["file"],
        "properties": {
            "source": {
                "type": "string",
                "maxLength": MAX_SOURCE,
                "description": "where the document comes from",
            },
            "metadata": {
                "type": "string",
                "contentMediaType": "application/json",
                "description": f"a JSON object, at most {MAX_METADATA} bytes",
            },
            "file": {"type": "string", "format": "binary", "description": "the document (the last part)"},
        },
        "additionalProperties": False,
    },
    "encoding": {"metadata": {"contentType": "application/json"}},
}
_DOCUMENT_TYPES: dict[str, Any] = {
    "multipart/form-data": _FORM,
    "application/pdf": _BINARY,
    "application/octet-stream": _BINARY,
}
_DOCUMENT_BODY = {"required": True, "content": _DOCUMENT_TYPES}
_REFERENCE = {
    "schema": {
        "type": "object",
        "required": ["file_path", "file_hash", "file_size"],
        "properties": {
            "file_path": {"type": "string", "description": "a file beneath DOX_INBOX_ROOT"},
            "file_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "its SHA-256"},
            "file_size": {"type": "integer", "minimum": 0, "description": "its size in bytes"},
        },
    }
}
_CHECK_BODY = {"required": True, "content": {**_DOCUMENT_TYPES, "application/json": _REFERENCE}}

_QUEUED = {
    "type": "object",
    "required": ["workflow_id", "status"],
    "properties": {"workflow_id": {"type": "string"}, "status": {"type": "string", "enum": ["queued"]}},
}
_RESULT = {
    "type": "object",
    "required": ["workflow_id", "status"],
    "properties": {"workflow_id": {"type": "string"}, "status": {"type": "string"}},
    "description": "the body GET /api/v1/workflows/{id} answers with",
}
_PROBLEM = {"application/problem+json": {"schema": {"type": "object"}}}
_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the workflow (a repeated idempotency key, or it ended within ?wait)",
        "content": {"application/json": {"schema": _RESULT}},
    },
    202: {"description": "queued", "content": {"application/json": {"schema": _QUEUED}}},
    400: {"description": "a malformed upload", "content": _PROBLEM},
    401: {"description": "no valid API key", "content": _PROBLEM},
    403: {"description": "the key lacks the submit scope", "content": _PROBLEM},
    408: {"description": "the body stopped arriving", "content": _PROBLEM},
    413: {"description": "the document (or a field) is too large", "content": _PROBLEM},
    415: {"description": "not a document type", "content": _PROBLEM},
    422: {"description": "refused (metadata, file name, inbox path, hash)", "content": _PROBLEM},
    503: {"description": "the intake is paused", "content": _PROBLEM},
}

Wait = Query(None, gt=0, le=MAX_WAIT_S, description="seconds to wait for the workflow to end (≤ 60)")
IdempotencyKey = Header(
    None, min_length=1, max_length=200, description="the same key again: the same workflow"
)
FileName = Header(None, max_length=4096, description="the document's file name (raw bodies)")


def _route(path: str, workflow: str, body: dict[str, Any], summary: str, doc: str) -> None:
    """One upload endpoint starting ``workflow``: both differ only in that and their body."""

    async def upload(
        request: Request,
        caller: Caller = Depends(needs("submit")),
        wait: float | None = Wait,
        idempotency_key: str | None = IdempotencyKey,
        x_file_name: str | None = FileName,
    ) -> JSONResponse:
        return await _take(request, caller, workflow, wait, idempotency_key, x_file_name)

    upload.__doc__ = doc
    router.post(
        path,
        status_code=202,
        response_model=None,
        responses=_ANSWERS,
        openapi_extra={"requestBody": body},
        summary=summary,
        operation_id=f"post_{workflow}",
    )(upload)


_route(
    "/documents",
    DOCUMENT_WORKFLOW,
    _DOCUMENT_BODY,
    "Submit a document",
    "``multipart/form-data`` (``source``, ``metadata``, then ``file``) or the document as the"
    " body (``X-File-Name`` names it). Scope ``submit``; the workflow is the key's user's.",
)
_route(
    "/validate/scan",
    CHECK_WORKFLOW,
    _CHECK_BODY,
    "Validate and scan a document, keep nothing",
    "The validation service's check (workflow ``validate_and_scan``): a body as for"
    " ``/documents``, or JSON ``{file_path, file_hash, file_size}`` naming a file in the inbox.",
)


async def _take(
    request: Request,
    caller: Caller,
    workflow: str,
    wait: float | None,
    idempotency_key: str | None,
    x_file_name: str | None,
) -> JSONResponse:
    rt: Runtime = request.app.state.runtime
    limit = rt.settings.max_file_size
    body = BodyStream(request.receive, rt.settings.api_body_timeout_s)
    kind, params = parse_options_header(request.headers.get("content-type") or "application/octet-stream")
    media = kind.decode("latin-1")
    declared = _content_length(request)
    fields: dict[str, Any] = {}
    opened: _Checked | None = None
    if media == "multipart/form-data":
        if declared is not None and declared > limit + FORM_ALLOWANCE:
            raise too_large(limit)
        boundary = params.get(b"boundary")
        if not boundary:
            raise Problem(400, "bad-upload", "multipart/form-data without a boundary parameter")
        form = MultipartUpload(body, boundary, limit)
        await form.start()
        fields = {"source": form.source, "metadata": form.metadata, "file_name": safe_name(form.file_name)}
        stream: Any = await ThreadReader.start(form)
    elif media == "application/json" and workflow == CHECK_WORKFLOW:
        opened, fields = await _inbox_file(rt, body)
        stream = opened
    elif media in _NOT_A_DOCUMENT or media.startswith("multipart/"):
        raise Problem(
            415,
            "unsupported-media-type",
            f"{media} is not a document: send multipart/form-data with a 'file' part, or the document"
            " itself (e.g. Content-Type: application/pdf) with X-File-Name",
        )
    else:
        if declared is not None and declared > limit:
            raise too_large(limit)
        upload: Upload = RawUpload(body, limit)
        fields = {"file_name": safe_name(header_text(x_file_name))}
        stream = await ThreadReader.start(upload)
    try:
        accepted = await anyio.to_thread.run_sync(
            functools.partial(
                intake.accept,
                cast(BinaryIO, stream),
                rt=rt,
                user=caller.user_display or caller.user,  # the key's, never the caller's word
                idempotency_key=idempotency_key,
                workflow=workflow,
                **fields,
            ),
            limiter=_upload_threads(request),
        )
    except NotSent as exc:  # recorded queued: the reaper sends it, so the upload is accepted
        log.warning(
            "workflow %s is queued but the broker refused its message; the reaper sends it", exc.workflow_id
        )
        accepted, wait = intake.Accepted(exc.workflow_id, created=True), None
    except IntakePaused as exc:
        raise Problem(503, "intake-paused", str(exc), {"Retry-After": PAUSED_RETRY_AFTER}) from None
    except SubmissionError as exc:
        raise Problem(422, "submission-refused", str(exc)) from None
    finally:
        if opened is not None:
            opened.close()
    return await _answer(rt, accepted, wait, caller.allows("read"))


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def _upload_threads(request: Request) -> anyio.CapacityLimiter:
    limiter = getattr(request.app.state, "upload_threads", None)
    if limiter is None:  # made in the event loop, on first use
        limiter = request.app.state.upload_threads = anyio.CapacityLimiter(UPLOAD_THREADS)
    return cast(anyio.CapacityLimiter, limiter)


async def _answer(rt: Runtime, accepted: intake.Accepted, wait: float | None, reads: bool) -> JSONResponse:
    """202 queued; 200 with the workflow as it is now for a replayed key or one that ended
    within ``wait`` — its whole body only for a key that ``reads``: a ``submit``-only key learns
    the id and the state, never a result (a replayed key may be another key's upload)."""
    workflow_id = accepted.workflow_id
    headers = {"Location": f"/api/v1/workflows/{workflow_id}"}
    ended = bool(wait) and await _ended_within(rt, workflow_id, wait or 0)
    if ended or not accepted.created:  # a replayed key: the workflow as it is now
        detail = await anyio.to_thread.run_sync(queries.workflow_detail, rt.state, workflow_id)
        body = (
            describe(detail)
            if reads
            else {"workflow_id": workflow_id, "status": detail.workflow["current_state"]}
        )
        return JSONResponse(body, status_code=200, headers=headers)
    return JSONResponse({"workflow_id": workflow_id, "status": "queued"}, status_code=202, headers=headers)


async def _ended_within(rt: Runtime, workflow_id: str, seconds: float) -> bool:
    """Whether the workflow ends within ``seconds``: its row read at growing intervals
    (50 ms doubling to 500 ms), so a one-page document is answered soon after it ends."""
    deadline = anyio.current_time() + seconds
    pause = 0.05
    while True:
        row = await anyio.to_thread.run_sync(rt.state.get_workflow, workflow_id)
        if row["current_state"] not in LIVE_STATES:
            return True
        left = deadline - anyio.current_time()
        if left <= 0:
            return False
        await anyio.sleep(min(pause, left))
        pause = min(pause * 2, 0.5)


async def _inbox_file(rt: Runtime, body: BodyStream) -> tuple[_Checked, dict[str, Any]]:
    """The seed's ``{file_path, file_hash, file_size}``: the file opened confined beneath
    ``DOX_INBOX_ROOT``, its size checked now and its hash while it is staged."""
    raw = await body.read_all(MAX_JSON, "the JSON body")
    try:
        ref = json.loads(raw)
    except (ValueError, RecursionError):  # 8 KiB of "[" nests deeper than the stack
        raise Problem(400, "bad-json", "the body is not valid JSON") from None
    if not isinstance(ref, dict):
        raise Problem(
            422, "invalid-request", "the body must be a JSON object {file_path, file_hash, file_size}"
        )
    path, digest, size = ref.get("file_path"), ref.get("file_hash"), ref.get("file_size")
    if not isinstance(path, str) or not path:
        raise Problem(422, "invalid-request", "file_path must be the path of a file in DOX's inbox")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
        raise Problem(
            422,
            "invalid-request",
            f"file_hash must be the file's SHA-256 as 64 hexadecimal digits, not {str(digest)[:80]!r}",
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise Problem(422, "invalid-request", "file_size must be the file's size in bytes (an integer ≥ 0)")
    if size > rt.settings.max_file_size:
        raise too_large(rt.settings.max_file_size)
    try:
        doc = await anyio.to_thread.run_sync(
            functools.partial(open_document, path, rt.settings.inbox_root, required=True)
        )
    except SubmissionError as exc:
        raise Problem(422, "path-refused", str(exc)) from None
    actual = os.fstat(doc.file.fileno()).st_size
    if actual != size:
        doc.file.close()
        # Not the actual size: the inbox is shared, and a key should learn nothing of a file
        # it could not already describe.
        raise Problem(422, "size-mismatch", f"file_size is {size}, not the file's size; nothing was kept")
    return _Checked(doc.file, digest.lower(), size), {"file_name": safe_name(doc.name)}


class _Checked:
    """The inbox file as intake stages it, refused at its end unless its SHA-256 is the
    one the caller gave (a file changed since, or a wrong hash: nothing is kept)."""

    def __init__(self, file: BinaryIO, sha256: str, size: int):
        self._file, self._sha256, self._left = file, sha256, size
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._digest.update(data)
        self._left -= len(data)
        if self._left < 0 or (not data and self._digest.hexdigest() != self._sha256):
            raise Problem(
                422,
                "hash-mismatch",
                "file_hash is not the SHA-256 of the file (or it changed); nothing was kept",
            )
        return data

    def close(self) -> None:
        self._file.close()
