"""``reap_stuck_workflows``: explain every workflow that stopped moving, then re-drive it.

A live workflow is *examined* once it is past its deadline: its running step's
hard time limit plus a grace (``DOX_REAPER_GRACE``), or, for a step that never
started, ``DOX_REAPER_QUEUED_AFTER``. Each examined workflow gets one cause an
operator can act on:

``no_consumer``   its message waits in a queue no live worker consumes → start one
                  (left queued: it completes when a worker appears);
``worker_lost``   the worker running its step is gone → re-driven;
``message_lost``  no message in any queue or on any worker (e.g. Redis flushed) → re-driven;
``chord_waiting`` the team sync's chord never completed → finished with what was recorded.

A message waiting behind others on a consumed queue, or held by a live worker,
is just slow and left alone. Re-driving sends the chain again from the current
step (the one after the last success); steps are idempotent and their guards
absorb a copy that turns up later. After ``DOX_REAPER_MAX_REDRIVES`` re-drives
the workflow is failed with the cause instead. Every decision is a
``workflow.stuck`` event row.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ..contract import Reason, StepState, WorkflowState
from ..db import records
from ..db.store import aware
from ..definitions.catalog import resolve
from ..finish import conclude
from ..intake import send
from ..runtime import Runtime
from . import broker
from .sync.run import finish_sync

log = logging.getLogger("dox.reaper")


class Cause(StrEnum):
    NO_CONSUMER = "no_consumer"
    WORKER_LOST = "worker_lost"
    MESSAGE_LOST = "message_lost"
    CHORD_WAITING = "chord_waiting"


@dataclass(frozen=True)
class Workers:
    """Live workers and the queues each consumes (``inspect``), plus the caller itself."""

    queues: dict[str, set[str]]

    @property
    def alive(self) -> set[str]:
        return set(self.queues)

    def consume(self, queue: str) -> bool:
        return any(queue in qs for qs in self.queues.values())


@dataclass(frozen=True)
class Finding:
    workflow_id: str
    rule_name: str
    step: str | None
    cause: Cause
    action: str  # redriven | failed | left | finished
    detail: str


def inspect_workers(app: Any, me: str | None, my_queues: set[str], timeout: float = 1.0) -> Workers:
    """Ask every worker which queues it consumes. A worker busy running this very job
    (a solo pool cannot answer while it works) is counted as alive from ``me``."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    queues = {host: {q["name"] for q in qs} for host, qs in replies.items()}
    if me:
        queues.setdefault(me, set()).update(my_queues)
    return Workers(queues)


def step_deadline(rt: Runtime, wf: dict[str, Any], attempt: dict[str, Any] | None) -> datetime:
    s = rt.settings
    if attempt and handed_over(attempt):  # a chord: its own deadline, then the grace
        waited = float((attempt["output"] or {}).get("deadline_s") or s.reaper_queued_after_s)
        end = aware(attempt["finished_at"] or attempt["started_at"])
        return end + timedelta(seconds=waited + s.reaper_grace_s)
    if attempt and attempt["state"] == StepState.RUNNING.value:
        definition = rt.snapshot(wf["definition_hash"])
        step = definition.step(wf["current_step"])
        hard = min(step.timeout or s.workflow_timeout, s.workflow_timeout)
        return aware(attempt["started_at"]) + timedelta(seconds=hard + s.reaper_grace_s)
    return aware(wf["updated_at"]) + timedelta(seconds=s.reaper_queued_after_s)


def handed_over(attempt: dict[str, Any]) -> bool:
    """The step succeeded by starting a chord that should have ended the workflow."""
    return attempt["state"] == StepState.SUCCESS.value and bool((attempt["output"] or {}).get("chord"))


def examine(
    rt: Runtime,
    wf: dict[str, Any],
    attempt: dict[str, Any] | None,
    view: broker.BrokerView,
    workers: Workers,
) -> tuple[Cause, str] | None:
    """The cause for one workflow past its deadline (``attempt``: the latest of its
    current step, if any), or None if it is merely slow."""
    wid = wf["workflow_id"]
    step = wf["current_step"]
    if step is None:
        return None
    definition = rt.snapshot(wf["definition_hash"])
    info = resolve(definition.step(step).task)
    queue = definition.step(step).queue or (info.queue if info else "validation")
    holder = attempt["worker_hostname"] if attempt and attempt["state"] == StepState.RUNNING.value else None
    if attempt and handed_over(attempt):
        return Cause.CHORD_WAITING, f"step {step} started a chord that never completed"
    where = view.where(wid)
    if where and where.startswith("queue:"):
        if workers.consume(queue):
            return None  # waiting behind other work on a consumed queue
        return Cause.NO_CONSUMER, f"step {step} waits in queue {queue!r}, which no live worker consumes"
    if holder and holder not in workers.alive:
        return Cause.WORKER_LOST, f"step {step} was running on {holder}, which no longer answers"
    if where == "reserved":
        return None  # a live worker holds it (running, prefetched or a retry countdown)
    return Cause.MESSAGE_LOST, f"no message for step {step} in the broker or on any worker"


def reap(rt: Runtime, app: Any, now: datetime, workers: Workers, exclude: str | None = None) -> list[Finding]:
    s = rt.settings
    oldest_deadline = min(s.reaper_queued_after_s, s.reaper_grace_s + 1)
    candidates = records.live_workflows(rt.state, now - timedelta(seconds=oldest_deadline))
    if not candidates:
        return []
    view = broker.read(rt.redis, s.broker_key_prefix or "", list(app.amqp.queues)) if rt.redis else None
    findings: list[Finding] = []
    for wf in candidates:
        if wf["workflow_id"] == exclude or wf["current_step"] is None:
            continue
        attempt = records.latest_attempt(rt.state, wf["workflow_id"], wf["current_step"])
        if step_deadline(rt, wf, attempt) > now or view is None:
            continue
        found = examine(rt, wf, attempt, view, workers)
        if found is not None:
            findings.append(act(rt, wf, *found))
    return findings


def act(rt: Runtime, wf: dict[str, Any], cause: Cause, detail: str) -> Finding:
    wid, step = wf["workflow_id"], wf["current_step"]
    if cause is Cause.NO_CONSUMER:
        action = "left"
    elif cause is Cause.CHORD_WAITING:
        finish_sync(rt, wid, deadline_passed=True)
        action = "finished"
    elif (redrives := records.count_redrives(rt.state, wid, wf["run"])) >= rt.settings.reaper_max_redrives:
        conclude(
            rt,
            wid,
            WorkflowState.FAILED,
            reason=Reason.TIMEOUT,
            detail=f"reaper: {cause.value}: {detail}; gave up after {rt.settings.reaper_max_redrives}"
            " re-drives",
            expect_step=step,
        )
        action = "failed"
    else:
        records.record_event(
            rt.state,
            f"{records.run_prefix(wid, wf['run'])}:redriven:{redrives + 1}",
            wid,
            "workflow.redriven",
            {"cause": cause.value, "step": step, "run": wf["run"]},
        )
        send(rt, wf["rule_name"], wid, start_at=step, run=wf["run"])
        action = "redriven"
    finding = Finding(wid, wf["rule_name"], step, cause, action, detail)
    payload = asdict(finding)
    event_id = f"{wid}:stuck:{cause.value}:{aware(wf['updated_at']).timestamp():.0f}"
    rt.events.emit(event_id, wid, "workflow.stuck", payload, channel="stuck")
    log.warning(
        "workflow %s (%s) stuck at %s: %s — %s; %s", wid, wf["rule_name"], step, cause, detail, action
    )
    return finding
