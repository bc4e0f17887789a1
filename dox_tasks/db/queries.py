"""The read model: what the CLI, the reports, the exporter and the HTTP API ask the
results layer, as plain functions of the :class:`StateStore`.

Each call is one transaction and returns plain dicts or dataclasses (never rows tied
to SQLAlchemy); database errors arrive as DOX's own (:mod:`.guard`). Datetimes are as
stored: SQLite hands them back naive (in UTC), see :func:`dox_tasks.db.store.aware`.
The counters are in :mod:`.tally`, the exporter's gauges in :mod:`.gauges`, the
operations' records (events, backups, the reaper's questions) in :mod:`.records`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, and_, literal, or_, select, tuple_

from ..contract import TERMINAL_STATES
from ..errors import UnknownWorkflow
from .guard import reading
from .store import StateStore, aware
from .tables import EV, SR, WS
from .tally import Totals, tally


def ping(store: StateStore) -> None:
    """Raise :class:`~dox_tasks.errors.StateStoreUnavailable` unless the database answers."""
    with reading(store) as conn:
        conn.execute(select(literal(1)))


@dataclass(frozen=True)
class Position:
    """Where a page of :func:`list_workflows` ended: its last row's creation time and id.

    The list is ordered by (created_at, workflow_id), newest first, so the next page is
    every row strictly before this pair — rows written meanwhile neither repeat nor
    shift what is left (a keyset, not an offset)."""

    created_at: datetime
    workflow_id: str

    @classmethod
    def of(cls, row: dict[str, Any]) -> Position:
        return cls(aware(row["created_at"]), row["workflow_id"])


def list_workflows(
    store: StateStore,
    *,
    status: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    user: str | None = None,
    after: Position | None = None,
) -> list[dict[str, Any]]:
    """Workflow rows, newest first: created at or after ``since``, in ``status``, of ``rule``,
    of ``user`` (normal form), and after ``after`` (the previous page's :class:`Position`)."""
    q = select(WS).order_by(WS.c.created_at.desc(), WS.c.workflow_id.desc()).limit(limit)
    if since is not None:
        q = q.where(WS.c.created_at >= since)
    if status:
        q = q.where(WS.c.current_state == status)
    if rule:
        q = q.where(WS.c.rule_name == rule)
    if user is not None:
        q = q.where(WS.c.user_id == user)
    if after is not None:
        q = q.where(tuple_(WS.c.created_at, WS.c.workflow_id) < tuple_(after.created_at, after.workflow_id))
    with reading(store) as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


@dataclass(frozen=True)
class WorkflowDetail:
    """One workflow as one consistent read: its row, every step attempt, its events."""

    workflow: dict[str, Any]
    #: Attempt rows in the order they were written (every run).
    steps: list[dict[str, Any]]
    #: Event rows, oldest first.
    events: list[dict[str, Any]]


def workflow_detail(store: StateStore, workflow_id: str) -> WorkflowDetail:
    """Raises :class:`~dox_tasks.errors.UnknownWorkflow` for an id no workflow has."""
    with reading(store) as conn:
        row = conn.execute(select(WS).where(WS.c.workflow_id == workflow_id)).mappings().first()
        if row is None:
            raise UnknownWorkflow(f"no workflow with id {workflow_id}")
        steps = conn.execute(select(SR).where(SR.c.workflow_id == workflow_id).order_by(SR.c.id)).mappings()
        events = conn.execute(
            select(EV).where(EV.c.workflow_id == workflow_id).order_by(EV.c.created_at)
        ).mappings()
        return WorkflowDetail(dict(row), [dict(s) for s in steps], [dict(e) for e in events])


def workflow_ids_starting(
    store: StateStore, prefixes: Collection[str], limit: int | None = None
) -> list[str]:
    """The workflow ids that begin with any of ``prefixes``, sorted (at most ``limit``): what
    turns an operator's short id into the full one, and what a table's short ids must differ
    from. The prefixes are matched as text (``%`` and ``_`` are not wildcards).

    A ``LIKE 'prefix%'`` uses the primary key's index only under the C collation, so on
    PostgreSQL this reads the table (about 0.8 s per million rows); without ``ORDER BY`` the
    scan stops at ``limit`` matches instead of walking the whole index in order."""
    wanted = sorted({p for p in prefixes if p})
    found: set[str] = set()
    with reading(store) as conn:
        for start in range(0, len(wanted), 200):
            chunk = wanted[start : start + 200]
            match = or_(*(WS.c.workflow_id.startswith(p, autoescape=True) for p in chunk))
            q = select(WS.c.workflow_id).where(match)
            found.update(conn.execute(q if limit is None else q.limit(limit)).scalars())
    return sorted(found)[:limit]


def ended_since(
    store: StateStore, since: datetime, status: str, rule: str | None = None
) -> list[dict[str, Any]]:
    """Workflows in ``status`` that ended at or after ``since``, oldest first (id, rule,
    reason, step, finished_at): what a bulk retry works through."""
    q = (
        select(WS.c.workflow_id, WS.c.rule_name, WS.c.reason, WS.c.current_step, WS.c.finished_at)
        .where(WS.c.current_state == status, WS.c.finished_at >= since)
        .order_by(WS.c.finished_at)
    )
    if rule:
        q = q.where(WS.c.rule_name == rule)
    with reading(store) as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def list_events(
    store: StateStore,
    *,
    workflow_id: str | None = None,
    types: Collection[str] | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[dict[str, Any]]:
    """Event rows (id, workflow_id, type, payload, created_at) by creation time."""
    order = EV.c.created_at.desc() if newest_first else EV.c.created_at
    q = select(EV).order_by(order)
    if workflow_id is not None:
        q = q.where(EV.c.workflow_id == workflow_id)
    if types is not None:
        q = q.where(EV.c.type.in_(list(types)))
    if since is not None:
        q = q.where(EV.c.created_at >= since)
    if limit is not None:
        q = q.limit(limit)
    with reading(store) as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def event_page(
    store: StateStore,
    *,
    since: datetime,
    before: datetime | None = None,
    after: tuple[datetime, str] | None = None,
    user: str | None = None,
    workflow_id: str | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """One page of event rows created in [``since``, ``before``), oldest first by (created_at, id),
    continuing after the row keyed ``after``: what the live-events feed replays when the Redis
    stream no longer holds a client's position. With ``user``, only events of that user's
    workflows (joined through ``workflow_states``; an event of no workflow is nobody's)."""
    q = select(EV).where(EV.c.created_at >= since).order_by(EV.c.created_at, EV.c.id).limit(limit)
    if before is not None:
        q = q.where(EV.c.created_at < before)
    if after is not None:
        at, event_id = after
        q = q.where(or_(EV.c.created_at > at, and_(EV.c.created_at == at, EV.c.id > event_id)))
    if workflow_id is not None:
        q = q.where(EV.c.workflow_id == workflow_id)
    if user is not None:
        q = q.join(WS, WS.c.workflow_id == EV.c.workflow_id).where(WS.c.user_id == user)
    with reading(store) as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def workflow_users(store: StateStore, workflow_ids: Collection[str]) -> dict[str, str]:
    """Each workflow's user (normalised); ids no workflow has are left out."""
    wanted = sorted(set(workflow_ids))
    found: dict[str, str] = {}
    with reading(store) as conn:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = conn.execute(select(WS.c.workflow_id, WS.c.user_id).where(WS.c.workflow_id.in_(chunk)))
            found.update({wid: user for wid, user in rows})
    return found


def latest_workflows_of(store: StateStore, sha256s: Collection[str]) -> dict[str, dict[str, Any]]:
    """For each document hash, its newest workflow (workflow_id, reason, detail, result);
    hashes no workflow has are left out."""
    wanted = sorted(set(sha256s))
    found: dict[str, dict[str, Any]] = {}
    with reading(store) as conn:
        for start in range(0, len(wanted), 500):
            rows = conn.execute(
                select(WS.c.sha256, WS.c.workflow_id, WS.c.reason, WS.c.detail, WS.c.result)
                .where(WS.c.sha256.in_(wanted[start : start + 500]))
                .order_by(WS.c.created_at)
            ).mappings()
            for r in rows:  # oldest first: the newest one stays
                found[r["sha256"]] = {k: r[k] for k in ("workflow_id", "reason", "detail", "result")}
    return found


@dataclass(frozen=True)
class ReportFigures:
    """The rows a performance report is computed from."""

    #: current_state, reason, created_at, finished_at of each workflow created in the period.
    workflows: list[dict[str, Any]]
    #: Durations of the successful ``scan`` attempts of those workflows.
    scan_ms: list[int]


def report_figures(store: StateStore, start: datetime, end: datetime, rule_name: str | None) -> ReportFigures:
    """Workflows of ``rule_name`` (None: every document rule, no scheduled job) created in
    [start, end), and their scans' durations."""
    with reading(store) as conn:
        return _report_figures(conn, start, end, rule_name)


def _report_figures(conn: Connection, start: datetime, end: datetime, rule_name: str | None) -> ReportFigures:
    rule = WS.c.schedule_slot.is_(None) if rule_name is None else WS.c.rule_name == rule_name
    in_period = (WS.c.created_at >= start, WS.c.created_at < end, rule)
    rows = conn.execute(
        select(WS.c.current_state, WS.c.reason, WS.c.created_at, WS.c.finished_at).where(*in_period)
    ).mappings()
    workflows = [dict(r) for r in rows]
    scans = conn.execute(
        select(SR.c.duration_ms)
        .join(WS, WS.c.workflow_id == SR.c.workflow_id)
        .where(*in_period, SR.c.step == "scan", SR.c.state == "success", SR.c.duration_ms.is_not(None))
    ).scalars()
    return ReportFigures(workflows, [int(ms) for ms in scans])


@dataclass(frozen=True)
class RecentFigures:
    """What ``GET /api/v1/metrics`` is computed from, read in one snapshot."""

    #: Counter series (:mod:`.tally`) of the runs that ended in the short window.
    ended: Totals
    #: Document workflows created in the long window, and their scans' durations.
    figures: ReportFigures


def recent_figures(store: StateStore, now: datetime, short: timedelta, long: timedelta) -> RecentFigures:
    """The runs that ended in the last ``short`` (the exporter's counters, windowed) and the
    document workflows created in the last ``long`` (what :mod:`dox_tasks.report` reads)."""
    with reading(store, snapshot=True) as conn:
        return RecentFigures(tally(conn, since=now - short), _report_figures(conn, now - long, now, None))


def newest_run(rule_name: str, states: Collection[str]) -> Select[Any]:
    """The newest ended run of a scheduled job in one of ``states`` (the exporter's last
    successful sync, the API's last sync): a statement, run inside the caller's transaction."""
    return (
        select(WS)
        .where(
            WS.c.rule_name == rule_name,
            WS.c.current_state.in_(list(states)),
            WS.c.finished_at.is_not(None),
        )
        .order_by(WS.c.finished_at.desc())
        .limit(1)
    )


def last_finished_run(
    store: StateStore, rule_name: str, states: Collection[str] | None = None
) -> dict[str, Any] | None:
    """The newest run of ``rule_name`` that ended in one of ``states`` (default: any), or None."""
    wanted = [s.value for s in TERMINAL_STATES] if states is None else list(states)
    with reading(store) as conn:
        row = conn.execute(newest_run(rule_name, wanted)).mappings().first()
    return None if row is None else dict(row)
