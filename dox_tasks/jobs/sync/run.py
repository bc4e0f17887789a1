"""The sync as a canvas, and the one function that finishes it.

``start_sync`` (the definition's step) hands over to
``chord(group(probe per service), collect)``, the probes on the ``coordination``
queue. The sync has a deadline (``sync_deadline_s``): each probe's own HTTP
timeout ends at it, so a hung service cannot hold the chord past it. Each probe
records its answer as a ``coordination.check`` event row, and ``collect`` calls
:func:`finish_sync`. A member that dies or whose message is lost never lets the
chord complete: after the deadline the reaper (``chord_waiting``) calls
:func:`finish_sync` instead. It reads the answers from Postgres (not from the
chord's results, so a lost member only leaves a gap), marks each missing service
``down`` ("no answer before the sync deadline"), analyses, ends the workflow —
first writer wins — and only then, as the winner, writes the memory banks and
publishes the coordination events.

(A countdown message for the deadline was tried and dropped: a worker holding an
ETA message with ``prefetch_multiplier=1`` stopped taking other messages in our
tests, and the reaper has to cover lost chords anyway.)
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from celery import chord

from ...app import app
from ...contract import LIVE_STATES, Reason, WorkflowState
from ...db import records
from ...db.store import aware
from ...definitions.catalog import resolve
from ...errors import UnknownWorkflow
from ...finish import Ending, conclude, end_workflow
from ...runtime import Runtime
from ...steps.base import Outcome, StepContext, handoff
from .analyze import analyze, unhealthy_since
from .banks import MemoryBanks
from .probe import Health, check
from .teams import TeamsFile, load_teams

log = logging.getLogger("dox.sync")

SERVICE_SCHEMA = "dox.memory-bank.service/1"
TEAM_SCHEMA = "dox.memory-bank.team/1"
SUPERVISOR_SCHEMA = "dox.memory-bank.supervisor/1"
HISTORY = 30
CHECK_STEP = "check_services"
SYNC_TASK = "dox.jobs.sync"


def start_sync(ctx: StepContext) -> Outcome:
    teams = load_teams(ctx.rt.settings.teams)
    workflow_id = ctx.workflow_id
    deadline = time.time() + teams.sync_deadline_s

    def send() -> None:

        # A probe message names only the workflow and the service: what to fetch, how long
        # to wait and until when come from this step's recorded output (see run_probe).
        header = [
            app.signature("dox.sync.probe", args=(workflow_id, s.name), immutable=True, queue="coordination")
            for s in teams.services
        ]
        body = app.signature("dox.sync.collect", args=(workflow_id,), immutable=True, queue="operations")
        chord(header)(body)

    return handoff(
        send,
        checks=len(teams.services),
        deadline_s=teams.sync_deadline_s,
        _teams=teams.model_dump(mode="json"),
        _deadline=deadline,
    )


def run_probe(rt: Runtime, workflow_id: str, service: str) -> Health | None:
    """One health check of a running sync, or ``None`` (and nothing fetched) when the
    message does not fit one: the workflow is not a sync at its check step, or the
    service is not in the teams file that sync recorded. The URL, timeout and deadline
    never come from the message — a forged probe must not make DOX fetch any address.
    """
    try:
        wf = rt.state.get_workflow(workflow_id)
        step = rt.snapshot(wf["definition_hash"]).step(CHECK_STEP)
    except (UnknownWorkflow, KeyError):
        return None
    task = resolve(step.task)
    if wf["current_state"] not in LIVE_STATES or wf["current_step"] != CHECK_STEP:
        return None
    if task is None or task.task != SYNC_TASK:
        return None
    output = rt.state.step_outputs(workflow_id).get(CHECK_STEP, {})
    if "_teams" not in output:
        return None
    teams = TeamsFile.model_validate(output["_teams"])
    target = next((s for s in teams.services if s.name == service), None)
    if target is None:
        return None
    deadline = output.get("_deadline")
    health = check(
        target.name, target.health_url, teams.check_timeout_s, teams.slow_ms, float(deadline or time.time())
    )
    record_check(rt, workflow_id, health)
    return health


def record_check(rt: Runtime, workflow_id: str, health: Health) -> bool:
    """A probe's answer, kept as an event row (idempotent per workflow and service)."""
    return records.record_event(
        rt.state, f"{workflow_id}:check:{health.service}", workflow_id, "coordination.check", health.to_dict()
    )


def finish_sync(
    rt: Runtime, workflow_id: str, *, deadline_passed: bool, only_if_complete: bool = False
) -> bool:
    """Finish the sync with the answers recorded so far; False if it was already finished
    (or, with ``only_if_complete`` — the chord's body — while a service has not answered:
    a stray ``collect`` cannot mark the others down early; the reaper finishes at the deadline)."""
    wf = rt.state.get_workflow(workflow_id)
    if wf["current_state"] not in LIVE_STATES or wf["current_step"] != CHECK_STEP:
        return False
    output = rt.state.step_outputs(workflow_id).get(CHECK_STEP, {})
    if "_teams" not in output:
        return bool(
            conclude(
                rt,
                workflow_id,
                WorkflowState.FAILED,
                reason=Reason.TIMEOUT,
                detail="the health checks never started (no recorded check step)",
                expect_step=CHECK_STEP,
            )
        )
    teams = TeamsFile.model_validate(output["_teams"])
    answers = {
        e["payload"]["service"]: Health(**e["payload"])
        for e in rt.state.events(workflow_id)
        if e["type"] == "coordination.check"
    }
    now = datetime.now(UTC)
    health: dict[str, Health] = {}
    for s in teams.services:
        health[s.name] = answers.get(s.name) or Health(
            s.name, "down", None, "no answer before the sync deadline (check lost or hung)"
        )
    unanswered = sorted(set(health) - set(answers))
    if only_if_complete and unanswered:
        log.warning("sync %s: collect before every check answered; waiting for the deadline", workflow_id)
        return False
    banks = MemoryBanks(rt.settings.memory_banks)
    previous = {name: banks.read(f"SERVICE_{name}", SERVICE_SCHEMA) for name in health}
    since = {name: unhealthy_since(h, previous[name], now) for name, h in health.items()}
    views = analyze(teams, health, since, now)
    duration_s = round((now - aware(wf["created_at"])).total_seconds(), 3)
    summary: dict[str, Any] = {
        "services": {
            n: {"status": h.status, "latency_ms": h.latency_ms, "cause": h.cause} for n, h in health.items()
        },
        "teams": {
            v.name: {
                "status": v.status,
                "blocked": v.blocked,
                "escalated": v.escalated,
                "blockers": v.blockers,
            }
            for v in views.values()
        },
        "duration_s": duration_s,
        "deadline_passed": deadline_passed,
        "unanswered": unanswered,
    }
    state = WorkflowState.SUCCESS if answers else WorkflowState.FAILED
    won = end_workflow(
        rt,
        Ending(
            workflow_id,
            state,
            reason=None if answers else Reason.TIMEOUT,
            detail=f"{len(unanswered)} check(s) unanswered at the deadline" if unanswered else None,
            expect_step=CHECK_STEP,
            extra=summary,
        ),
    )
    if won:
        stamp, wid = now.isoformat(), wf["workflow_id"]
        _write_service_banks(banks, teams, health, since, stamp, wid)
        _write_team_banks(banks, teams, views, stamp, wid)
        _write_supervisor(banks, health, views, summary, wf.get("schedule_slot"), (stamp, wid))
        _publish(rt, workflow_id, views, summary)
    return bool(won)


def _write_service_banks(
    banks: MemoryBanks,
    teams: TeamsFile,
    health: dict[str, Health],
    since: dict[str, datetime | None],
    stamp: str,
    wid: str,
) -> None:
    """One ``SERVICE_<name>`` bank per service: its latest check and since when it is unwell."""
    for s in teams.services:
        h = health[s.name]
        began = since[s.name]
        banks.write(
            f"SERVICE_{s.name}",
            {
                "schema": SERVICE_SCHEMA,
                "service": s.name,
                "team": s.team,
                "health_url": s.health_url,
                "depended_on_by": s.depended_on_by,
                "status": h.status,
                "latency_ms": h.latency_ms,
                "cause": h.cause,
                "http_status": h.http_status,
                "unhealthy_since": began.isoformat() if began else None,
                "checked_at": stamp,
                "last_sync": wid,
            },
        )


def _write_team_banks(
    banks: MemoryBanks, teams: TeamsFile, views: dict[str, Any], stamp: str, wid: str
) -> None:
    """One ``TEAM_<name>`` bank per team: its status and who blocks it."""
    for t in teams.teams:
        v = views[t.name]
        banks.read(f"TEAM_{t.name}", TEAM_SCHEMA)  # a corrupt bank is kept aside before the rewrite
        banks.write(
            f"TEAM_{t.name}",
            {
                "schema": TEAM_SCHEMA,
                "team": t.name,
                "contact": t.contact,
                "services": [s.name for s in teams.services if s.team == t.name],
                "status": v.status,
                "blocked": v.blocked,
                "escalated": v.escalated,
                "blockers": v.blockers,
                "updated_at": stamp,
                "last_sync": wid,
            },
        )


def _write_supervisor(
    banks: MemoryBanks,
    health: dict[str, Health],
    views: dict[str, Any],
    summary: dict[str, Any],
    slot: str | None,
    written: tuple[str, str],
) -> None:
    """``SUPERVISOR``: this sync's totals on top of the history of earlier ones.
    ``written`` is (when, by which workflow)."""
    stamp, wid = written
    counts = {st: sum(h.status == st for h in health.values()) for st in ("up", "degraded", "down")}
    entry = {
        "workflow_id": wid,
        "slot": slot,
        "finished_at": stamp,
        "duration_s": summary["duration_s"],
        "deadline_passed": summary["deadline_passed"],
        "unanswered": summary["unanswered"],
        "services": counts,
        "blocked_teams": sorted(n for n, v in views.items() if v.blocked),
        "escalated_teams": sorted(n for n, v in views.items() if v.escalated),
    }
    previous = banks.read("SUPERVISOR", SUPERVISOR_SCHEMA) or {}
    history = [entry, *previous.get("history", [])][:HISTORY]
    banks.write(
        "SUPERVISOR",
        {"schema": SUPERVISOR_SCHEMA, "updated_at": stamp, "last_sync": entry, "history": history},
    )


def _publish(rt: Runtime, workflow_id: str, views: dict[str, Any], summary: dict[str, Any]) -> None:
    events: list[tuple[str, str, dict[str, Any]]] = []
    for v in views.values():
        if v.blocked:
            events.append(
                (
                    f"{workflow_id}:blocked:{v.name}",
                    "coordination.team_blocked",
                    {"team": v.name, "blockers": v.blockers},
                )
            )
        if v.escalated:
            events.append(
                (
                    f"{workflow_id}:escalated:{v.name}",
                    "coordination.escalated",
                    {"team": v.name, "blockers": v.blockers},
                )
            )
    events.append((f"{workflow_id}:sync", "coordination.sync_completed", summary))
    for event_id, type_, payload in events:
        rt.events.emit(event_id, workflow_id, type_, payload)
