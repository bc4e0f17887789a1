"""A deletion request's database part: redact what DOX extracted from a document in
every row that holds a copy, after checking no workflow of it is still live — one
transaction, so nothing can start a step between the check and the redaction.

What counts as extracted is the caller's policy (:mod:`dox_tasks.documents`): a
function that returns a redacted copy of a result or payload, or None when it holds
nothing to redact.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from ..contract import LIVE_STATES
from ..errors import DocumentInUse
from .guard import reading
from .store import StateStore
from .tables import EV, SR, WS

Redactor = Callable[[dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class Redacted:
    #: Every workflow of the document (redacted or with nothing to redact).
    workflows: list[str]
    #: Step outputs replaced by the marker.
    step_outputs: int
    #: Ids of the event rows whose payload was redacted.
    events: list[str]


def redact_document(
    store: StateStore,
    sha256: str,
    redact: Redactor,
    content_steps: Collection[str],
    marker: dict[str, Any],
) -> Redacted:
    """Redact the workflow results, step outputs and event payloads of the document's workflows.

    Whole outputs of ``content_steps`` (and any output ``redact`` would change) become
    ``marker``. Raises :class:`~dox_tasks.errors.DocumentInUse`, changing nothing, while
    a workflow of the document is queued or running. Its workflow rows are locked
    (``FOR UPDATE`` on PostgreSQL; SQLite's write transaction is exclusive) from the
    check to the commit, so none of them can start a step in between.
    """
    live = {s.value for s in LIVE_STATES}
    with reading(store) as conn:
        rows = conn.execute(
            select(WS.c.workflow_id, WS.c.current_state, WS.c.result)
            .where(WS.c.sha256 == sha256)
            .with_for_update()
        ).all()
        busy = next((r for r in rows if r.current_state in live), None)
        if busy is not None:
            raise DocumentInUse(busy.workflow_id, busy.current_state)
        ids = [r.workflow_id for r in rows]
        for row in rows:
            result = redact(dict(row.result or {}))
            if result is not None:
                conn.execute(update(WS).where(WS.c.workflow_id == row.workflow_id).values(result=result))
        steps = 0
        for out in conn.execute(
            select(SR.c.id, SR.c.step, SR.c.output).where(SR.c.workflow_id.in_(ids))
        ).all():
            output = dict(out.output or {})
            if output == marker or not output:
                continue
            if out.step in content_steps or redact(output) is not None:
                conn.execute(update(SR).where(SR.c.id == out.id).values(output=marker))
                steps += 1
        events: list[str] = []
        for ev in conn.execute(select(EV.c.id, EV.c.payload).where(EV.c.workflow_id.in_(ids))).all():
            payload = redact(dict(ev.payload or {}))
            if payload is not None:
                conn.execute(update(EV).where(EV.c.id == ev.id).values(payload=payload))
                events.append(ev.id)
    return Redacted(ids, steps, events)
