"""The operations' records beside the hot-path StateStore: event rows, backups rows,
and the reaper's and the jobs' questions about workflows.

Each function is one transaction and returns plain dicts. Events are written here
and fanned out by :meth:`dox_tasks.events.EventBus.emit`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from ..contract import LIVE_STATES
from .guard import reading
from .store import StateStore, aware, now
from .tables import BK, BS, EV, SR, WS, insert_ignore


def live_workflows(state: StateStore, older_than: datetime, limit: int = 1000) -> list[dict[str, Any]]:
    """Queued or running workflows not touched since ``older_than`` (oldest first)."""
    with reading(state) as conn:
        rows = conn.execute(
            select(WS)
            .where(WS.c.current_state.in_([s.value for s in LIVE_STATES]), WS.c.updated_at < older_than)
            .order_by(WS.c.updated_at)
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def latest_attempt(state: StateStore, workflow_id: str, step: str) -> dict[str, Any] | None:
    with reading(state) as conn:
        row = (
            conn.execute(
                select(SR)
                .where(SR.c.workflow_id == workflow_id, SR.c.step == step)
                .order_by(SR.c.attempt.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def count_events(state: StateStore, workflow_id: str, type_: str) -> int:
    with reading(state) as conn:
        return int(
            conn.execute(
                select(func.count()).where(EV.c.workflow_id == workflow_id, EV.c.type == type_)
            ).scalar_one()
        )


def run_prefix(workflow_id: str, run: int) -> str:
    """Event ids of a workflow's run: run 1 keeps the original ids, later runs add ``:r<N>``."""
    return workflow_id if run == 1 else f"{workflow_id}:r{run}"


def count_redrives(state: StateStore, workflow_id: str, run: int) -> int:
    """The reaper's re-drives of this run (an operator retry gives the reaper a fresh budget)."""
    prefix = run_prefix(workflow_id, run)
    with reading(state) as conn:
        return int(
            conn.execute(
                select(func.count()).where(
                    EV.c.workflow_id == workflow_id,
                    EV.c.type == "workflow.redriven",
                    EV.c.id.like(f"{prefix}:redriven:%"),
                )
            ).scalar_one()
        )


def record_event(
    state: StateStore, event_id: str, workflow_id: str | None, type_: str, payload: dict[str, Any]
) -> bool:
    """Insert an event row (idempotent by id); a workflow's ``updated_at`` is touched too."""
    ts = now()
    with reading(state) as conn:
        written = insert_ignore(
            conn, EV, dict(id=event_id, workflow_id=workflow_id, type=type_, payload=payload, created_at=ts)
        )
        if written and workflow_id:
            conn.execute(update(WS).where(WS.c.workflow_id == workflow_id).values(updated_at=ts))
    return written


def last_success(state: StateStore, rule_name: str, exclude: str | None = None) -> dict[str, Any]:
    """The result of a job's latest successful run ({} if none)."""
    q = (
        select(WS.c.result)
        .where(
            WS.c.rule_name == rule_name, WS.c.current_state == "success", WS.c.workflow_id != (exclude or "")
        )
        .order_by(WS.c.finished_at.desc())
        .limit(1)
    )
    with reading(state) as conn:
        row = conn.execute(q).first()
    return dict(row.result or {}) if row else {}


def add_backup(state: StateStore, **values: Any) -> int:
    """A ``backups`` row (columns as keywords); its id."""
    values.setdefault("created_at", now())
    with reading(state) as conn:
        return int(conn.execute(insert(BK).values(**values).returning(BK.c.id)).scalar_one())


def update_backup(state: StateStore, backup_id: int, **values: Any) -> None:
    with reading(state) as conn:
        conn.execute(update(BK).where(BK.c.id == backup_id).values(**values))


def backups(state: StateStore, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The recorded backups, newest first (of one kind if given)."""
    q = select(BK).order_by(BK.c.created_at.desc(), BK.c.id.desc()).limit(limit)
    if kind:
        q = q.where(BK.c.kind == kind)
    with reading(state) as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def backup_by_path(state: StateStore, path: str) -> dict[str, Any] | None:
    with reading(state) as conn:
        row = conn.execute(select(BK).where(BK.c.path == path)).mappings().first()
    return dict(row) if row else None


def record_beat_start(state: StateStore, host: str, at: datetime | None = None) -> datetime:
    """Record that a Beat process started; returns the first start this database has seen
    (this one, on a fresh install)."""
    with state.tx() as conn:
        conn.execute(insert(BS).values(started_at=at or now(), host=host[:200]))
        first = conn.execute(select(func.min(BS.c.started_at))).scalar_one()
    return aware(first)
