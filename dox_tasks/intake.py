"""Intake: the one way a document enters DOX.

``submit()`` streams the bytes into immutable content-addressed staging, writes
the ``queued`` row, *then* sends the chain — row first, so a message lost by the
broker leaves a row the reaper can re-drive, and a workflow never exists only as
a message. The same idempotency key returns the same workflow id and starts nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, TypedDict, Unpack

from . import runtime
from .app import app
from .db.store import NewWorkflow
from .definitions.canvas import build_chain
from .errors import NotSent, SubmissionError
from .identity import normalise_user
from .inbox import open_document
from .intake_switch import refuse_if_paused
from .runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    """What :func:`accept` did: the workflow id, and whether this call created it (False: an
    idempotency key this user sent before named an existing workflow; nothing was started)."""

    workflow_id: str
    created: bool


Document = str | os.PathLike[str] | bytes | BinaryIO


class Options(TypedDict, total=False):
    """What a submission says besides the document; :func:`accept` has each one's default."""

    user: str
    source: str | None
    metadata: dict[str, Any] | None
    idempotency_key: str | None
    workflow: str
    file_name: str | None
    from_service: bool


def submit(document: Document, **options: Unpack[Options]) -> str:
    """Hand DOX a document; returns the workflow id at once (the work is queued).

    ``document`` is a path, bytes or a binary stream; ``user``, ``source``, ``metadata``,
    ``idempotency_key``, ``workflow``, ``file_name`` and ``from_service`` as in
    :func:`accept`. ``user`` is trusted as given (this is an internal caller) and counted in
    its normal form (:mod:`dox_tasks.identity`); the idempotency key is the user's own.
    Raises :class:`~dox_tasks.errors.SubmissionError` for a refused path or user name, an
    unknown workflow or a paused intake (``dox intake pause``).
    """
    return accept(document, **options).workflow_id


def accept(
    document: Document,
    *,
    user: str = "anonymous",
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    workflow: str = "process_document_upload",
    file_name: str | None = None,
    from_service: bool = False,
    rt: Runtime | None = None,
) -> Accepted:
    """:func:`submit`, telling also whether the workflow was created by this call, on the
    given runtime (default: the process's). The HTTP API uses it: a replayed idempotency
    key is answered 200, a new workflow 202. A stream's ``read`` may raise to refuse the
    upload (too large, too slow): staging then keeps nothing and no row is written."""
    rt = rt or runtime.get()
    user_display = user
    user = normalise_user(user)  # the one form quotas, duplicates and keys are counted by
    for name, value, limit in (("source", source, 200), ("idempotency_key", idempotency_key, 200)):
        if value is not None and len(value) > limit:
            raise SubmissionError(f"{name} is longer than {limit} characters")
    if idempotency_key is not None and not idempotency_key.strip():
        raise SubmissionError("idempotency_key is empty: send a key, or none at all")
    if file_name is not None and len(file_name) > 500:
        raise SubmissionError("file name is longer than 500 characters")
    if idempotency_key:
        existing = rt.state.find_by_idempotency_key(user, idempotency_key)
        if existing:
            return Accepted(existing, created=False)
    refuse_if_paused(rt)
    definition = rt.definitions.get(workflow)
    if definition is None:
        raise SubmissionError(f"unknown workflow {workflow!r}: known are {', '.join(sorted(rt.definitions))}")
    if definition.model.trigger.type != "api_request":
        raise SubmissionError(f"workflow {workflow!r} is scheduled, not started by submissions")

    save_snapshot(rt, definition)
    with contextlib.ExitStack() as held:
        if isinstance(document, bytes):
            stream: BinaryIO = io.BytesIO(document)
        elif isinstance(document, str | os.PathLike):
            # Opened once, confined, and staged from that very handle (never reopened by name).
            opened = open_document(document, rt.settings.inbox_root, required=from_service)
            file_name = file_name or opened.name[-500:]
            stream = held.enter_context(opened.file)
        else:
            stream = document
        # The row is written while the staged file's lock is held (storage.staging_held):
        # a workflow of the same bytes ending now cannot remove the file under this row.
        staged = held.enter_context(rt.storage.staging_held(stream, rt.settings.max_file_size))
        workflow_id, created = rt.state.create_workflow(
            NewWorkflow(
                rule_name=definition.name,
                definition_hash=definition.digest,
                definition_version=definition.model.version,
                first_step=definition.ordered_steps()[0].name,
                user=user,
                user_display=user_display,
                source=source,
                file_name=file_name,
                sha256=staged.sha256,
                size=staged.size,
                metadata=metadata,
                idempotency_key=idempotency_key,
                over_limit=staged.over_limit,
            )
        )
    if created:
        send(rt, definition.name, workflow_id, definition=definition)
    elif staged.sha256:
        # Another submission under this idempotency key won the race: these staged bytes are
        # nobody's (no row, so no quota counts them) unless another workflow has the same.
        sha = staged.sha256
        rt.storage.discard_staged(sha, lambda: rt.state.needs_staged_input(sha, exclude=""))
    return Accepted(workflow_id, created)


_saved: set[str] = set()


def save_snapshot(rt: Runtime, definition: Any) -> None:
    key = f"{rt.settings.db_url}|{definition.digest}"
    if key not in _saved:
        rt.state.save_definition(
            definition.digest, definition.name, definition.model.version, definition.body()
        )
        _saved.add(key)


def send(
    rt: Runtime,
    name: str,
    workflow_id: str,
    start_at: str | None = None,
    definition: Any = None,
    run: int = 1,
) -> None:
    """Publish the workflow's chain (from ``start_at``, default the first step) for ``run``."""

    if definition is None:
        definition = rt.snapshot(rt.state.get_workflow(workflow_id)["definition_hash"])
    canvas = build_chain(app, definition, workflow_id, rt.settings.workflow_timeout, start_at, run)
    try:
        canvas.apply_async()
    except Exception as exc:  # noqa: BLE001 - broker errors come in many types
        log.error("workflow %s is recorded queued but could not be sent: %s", workflow_id, exc)
        raise NotSent(
            f"workflow {workflow_id} is recorded (queued) but the broker refused its message:"
            f" {exc}. Nothing is lost: the row stays queued and the reaper re-sends it once the"
            " broker is back (see docs/OPERATIONS.md, stuck workflows: the reaper).",
            workflow_id,
        ) from exc
