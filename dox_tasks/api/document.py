"""``GET /api/v1/workflows/{id}/document``: the stored bytes of a workflow's document.

Streamed from an open file in chunks (never read whole into memory); the file is opened
before the answer starts, so a deletion racing the request either wins (404) or the open
handle serves the bytes it had. ``ETag`` is the SHA-256 the store is addressed by, so
``If-None-Match`` can answer 304 without reading a byte. The media type is the one
validation detected (never the name's claim); the name in ``Content-Disposition`` is
reduced to a safe base name. Refusals: 409 while the workflow is still running or its
document is quarantined; 404 for a rejected document (DOX keeps none), after a deletion
request (``dox documents delete``), and for workflows of another user under ``read``.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from pathlib import PureWindowsPath
from typing import Annotated, Any, BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response, StreamingResponse

from ..contract import LIVE_STATES, WorkflowState
from ..steps.filetype import MEDIA_TYPES, UNKNOWN_MEDIA_TYPE
from .auth import Caller, needs
from .declared import problems
from .problems import Problem
from .workflows import readable_workflow

router = APIRouter(prefix="/api/v1")

CHUNK = 64 * 1024
#: At most this many characters of the stored name go into the header.
NAME_MAX = 120
_LIVE = {s.value for s in LIVE_STATES}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def safe_name(file_name: str | None, fallback: str) -> str:
    """The base name of ``file_name`` (either slash), without control or format characters,
    quotes or backslashes, at most :data:`NAME_MAX` characters; ``fallback`` when nothing is left."""
    base = PureWindowsPath(file_name or "").name  # splits on / and \\ alike
    kept = "".join(
        c for c in base if unicodedata.category(c)[0] != "C" and c not in '"\\;' and c.isprintable()
    ).strip(" .")
    return kept[:NAME_MAX] or fallback


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII ``filename`` and, for other names, RFC 6266's ``filename*``."""
    ascii_name = "".join(c if c.isascii() else "_" for c in name)
    if ascii_name == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak or strong) or is ``*``."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _detected_type(steps: list[dict[str, Any]]) -> str | None:
    for step in reversed(steps):  # the latest validation that said what the bytes are
        found = (step.get("output") or {}).get("detected_type")
        if step.get("state") == "success" and isinstance(found, str):
            return found
    return None


@router.get(
    "/workflows/{workflow_id}/document",
    tags=["workflows"],
    response_class=Response,
    responses={
        200: {
            "description": "the stored bytes",
            "content": {t: _BINARY for t in sorted({*MEDIA_TYPES.values(), UNKNOWN_MEDIA_TYPE})},
        },
        304: {"description": "If-None-Match named the document's ETag"},
        **problems(404, 409),
    },
)
def get_document(
    workflow_id: str,
    request: Request,
    caller: Caller = Depends(needs("read")),
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The document's bytes as stored (scope ``read``: the key's user's own workflows)."""
    detail = readable_workflow(request, caller, workflow_id)
    wf, rt = detail.workflow, request.app.state.runtime
    state, sha = wf["current_state"], wf["sha256"]
    if state in _LIVE:
        raise Problem(409, "not-stored-yet", f"workflow {workflow_id} is still {state}: nothing to fetch yet")
    if sha is None:
        raise Problem(404, "no-document", f"workflow {workflow_id} has no document (a scheduled job)")
    if rt.storage.quarantine_path(sha).exists():
        raise Problem(409, "quarantined", f"the document of workflow {workflow_id} is quarantined")
    if state == WorkflowState.REJECTED.value:
        raise Problem(
            404, "no-document", f"workflow {workflow_id} was rejected ({wf['reason']}): nothing was stored"
        )
    try:
        fh = open(rt.storage.object_path(sha), "rb")  # noqa: SIM115 - closed by the stream
    except FileNotFoundError:
        deleted = (wf.get("result") or {}).get("redacted")
        why = "was deleted (a deletion request)" if deleted else "is not stored"
        raise Problem(404, "no-document", f"the document of workflow {workflow_id} {why}") from None
    etag = f'"{sha}"'
    if matches(if_none_match, etag):
        fh.close()
        return Response(status_code=304, headers={"ETag": etag})
    kind = _detected_type(detail.steps)
    media_type = MEDIA_TYPES.get(kind or "", UNKNOWN_MEDIA_TYPE)
    headers = {
        "ETag": etag,
        "Content-Length": str(os.fstat(fh.fileno()).st_size),
        "Content-Disposition": content_disposition(safe_name(wf["file_name"], f"{sha[:16]}.{kind or 'bin'}")),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-cache",
    }
    return StreamingResponse(_chunks(fh), media_type=media_type, headers=headers)
