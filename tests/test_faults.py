"""Real faults: Postgres cut off, a worker SIGKILLed mid-flight, a poison message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pdfs
import pytest
import services
from services import expect_of
from sqlalchemy import text

from dox_tasks.contract import QUEUES
from dox_tasks.db.store import StateStore, StepClose, StepDelivery, open_store
from dox_tasks.jobs.reaper import inspect_workers, reap

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def assert_exactly_once(state: StateStore, ids: list[str]) -> None:
    """One terminal state each, never a second success row for a step, one completion event."""
    with state.engine.connect() as c:
        dup_success = c.execute(
            text(
                "select workflow_id, step, count(*) from workflow_step_results"
                " where state = 'success' group by workflow_id, step having count(*) > 1"
            )
        ).all()
        completions = dict(
            c.execute(
                text(
                    # completion events only: a reaped workflow also has workflow.stuck/redriven
                    "select workflow_id, count(*) from workflow_events where type in ('workflow.success',"
                    " 'workflow.failed', 'workflow.rejected', 'workflow.duplicate', 'workflow.cancelled')"
                    " group by workflow_id"
                )
            ).all()
        )
    assert dup_success == []
    assert all(completions.get(i) == 1 for i in ids), completions


def test_postgres_unreachable_for_30s_every_workflow_recorded_once(stack, harness_factory):
    pg_port = int(stack.database_url.rsplit(":", 1)[1].split("/")[0])
    proxy = services.TcpProxy(pg_port).start()
    proxied = stack.database_url.replace(f":{pg_port}/", f":{proxy.port}/")
    h = harness_factory(stack.model_copy(update={"database_url": proxied}))
    direct = open_store(stack.database_url)
    h.rt.settings.rate_limit_per_user_per_day = 0
    ids = [h.submit(pdfs.unique(500 + n)) for n in range(150)]
    h.worker()
    # let some finish, then cut the database off mid-run for 30 s
    h.wait_until(lambda: _finished(direct, ids) >= 2, timeout=60, what="first workflows")
    proxy.cut()
    cut_at = time.monotonic()
    time.sleep(30)
    assert _finished(direct, ids) < len(ids), (
        "the cut came too late to matter",
        __import__("collections").Counter(
            (r["current_state"], r["reason"]) for r in direct.get_workflows(ids).values()
        ),
    )
    proxy.restore()
    deadline = cut_at + 150
    while _finished(direct, ids) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    rows = direct.get_workflows(ids)
    assert {r["current_state"] for r in rows.values()} == {"success"}, {
        i: (r["current_state"], r["reason"], r["detail"]) for i, r in rows.items()
    }
    assert_exactly_once(direct, ids)
    assert len(h.objects()) == len(ids)
    direct.engine.dispose()


def _finished(state: StateStore, ids: list[str]) -> int:
    rows = state.get_workflows(ids)
    return sum(r["current_state"] not in ("queued", "running") for r in rows.values())


def test_worker_sigkilled_with_200_in_flight(stack, harness_factory, tmp_path):
    settings = stack.model_copy(
        update={
            "visibility_timeout": 8,
            "workflow_timeout": 6,
            "rate_limit_per_user_per_day": 0,
            "reaper_queued_after_s": 5,
            "reaper_grace_s": 0,
        }
    )
    h = harness_factory(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOX_")}
    env.update(
        {
            "DOX_BROKER_URL": settings.broker_url,
            "DOX_DATABASE_URL": settings.database_url,
            "DOX_CLAMD_URL": settings.clamd_url,
            "DOX_HOME": str(settings.home),
            "DOX_NAMESPACE": settings.namespace,
            "DOX_BROKER_KEY_PREFIX": settings.broker_key_prefix,
            "DOX_VISIBILITY_TIMEOUT": "8",
            "WORKFLOW_TIMEOUT": "6",
            "WORKFLOW_RETRY_DELAY": "0.1",
            "RATE_LIMIT_PER_USER_PER_DAY": "0",
        }
    )

    def start_worker(name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("wb")
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dox_tasks.cli",
                "worker",
                "-Q",
                "validation,scan,storage,recognition,events",
                "-P",
                "prefork",
                "-c",
                "2",
                "-n",
                f"{name}@%h",
                "--loglevel=WARNING",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    ids = [h.submit(pdfs.unique(1000 + n)) for n in range(200)]
    first = start_worker("victim")
    h.wait_until(lambda: 20 <= _finished(h.rt.state, ids) < 150, timeout=120, what="the run to be under way")
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool processes, no goodbye
    first.wait(10)
    killed_at = _finished(h.rt.state, ids)
    assert killed_at < 200
    second = start_worker("survivor")
    reaped: dict[str, int] = {}
    try:
        _wait_for_progress(h.rt.state, ids, quiet_s=30, limit_s=240)
        if _finished(h.rt.state, ids) < 200:
            # kombu's Redis transport pops a message (BRPOP) before it records it as
            # unacked: a worker killed between the two loses that message for good. What
            # finishes such a workflow is DOX's reaper, which Beat runs every 5 minutes
            # (here its sweep is called directly, with the survivor as the live worker).
            workers = inspect_workers(h.app, None, set(QUEUES))
            findings = reap(h.rt, h.app, datetime.now(UTC), workers)
            for f in findings:
                reaped[f.cause.value] = reaped.get(f.cause.value, 0) + 1
            _wait_for_progress(h.rt.state, ids, quiet_s=30, limit_s=120)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(30)
    rows = h.rt.state.get_workflows(ids)
    states = {r["current_state"] for r in rows.values()}
    assert states == {"success"}, (
        killed_at,
        [
            (i, r["current_state"], r["current_step"])
            for i, r in rows.items()
            if r["current_state"] != "success"
        ][:5],
        (tmp_path / "survivor.log").read_text()[-2000:],
    )
    assert_exactly_once(h.rt.state, ids)
    assert len(h.objects()) == 200  # one stored object per document
    # Only the two causes a SIGKILL can produce, and only a few of them.
    assert set(reaped) <= {"message_lost", "worker_lost"} and sum(reaped.values()) <= 4, reaped


def _wait_for_progress(state: StateStore, ids: list[str], quiet_s: float, limit_s: float) -> None:
    """Until all finished, nothing finished for ``quiet_s``, or ``limit_s`` passed."""
    deadline = time.monotonic() + limit_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        done = _finished(state, ids)
        if done == len(ids):
            return
        if done != last:
            last, since = done, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            return
        time.sleep(0.5)


def test_message_delivered_too_often_ends_poison(stack, harness_factory):
    from dox_tasks import intake

    h = harness_factory(stack)
    wid = h.submit(pdfs.unique(10))  # no worker yet: the message waits in Redis
    # Five earlier deliveries of validate each lost their worker (rows left running);
    # the sixth (> WORKFLOW_RETRY_ATTEMPTS + 2) must fail the workflow instead of looping.
    for _ in range(5):
        assert h.rt.state.begin_step(
            StepDelivery(wid, "validate", "t", "gone", expect_of(h, wid), max_deliveries=5)
        ).run
    with h.rt.state.engine.begin() as c:  # ... long enough ago that none can still be alive
        c.execute(
            text(
                "update workflow_step_results set started_at = started_at - interval '1 hour'"
                " where workflow_id = :w"
            ),
            {"w": wid},
        )
    h.worker()
    row = h.wait([wid])[wid]
    assert (row["current_state"], row["reason"]) == ("failed", "poison")
    attempts = [s["state"] for s in h.rt.state.step_rows(wid) if s["step"] == "validate"]
    assert attempts == ["lost"] * 5 + ["failed"]
    assert [e["type"] for e in h.rt.state.events(wid)] == ["workflow.failed"]
    assert intake  # the intake path sent the chain; nothing else was needed


def test_redelivered_finished_step_resends_the_rest_of_the_chain(stack, harness_factory):
    """A worker died after `validate` committed but before the chain sent `scan`: the
    redelivered validate message must send scan, not strand the workflow."""
    from dox_tasks import intake
    from dox_tasks.contract import StepState

    h = harness_factory(stack)
    wid = h.submit(pdfs.unique(40))  # chain sent; no worker yet
    # What the dead worker got done: validate ran and committed, scan never sent.
    start = h.rt.state.begin_step(
        StepDelivery(wid, "validate", "dead", "gone", expect_of(h, wid), max_deliveries=5)
    )
    h.rt.state.finish_step(
        wid, StepClose("validate", start.attempt, StepState.SUCCESS, {"pages": 1}), next_step="scan"
    )
    assert intake  # the queued validate message stands in for the redelivery
    h.worker()
    row = h.wait([wid])[wid]
    assert row["current_state"] == "success"
    validate = [s for s in h.rt.state.step_rows(wid) if s["step"] == "validate"]
    assert [s["state"] for s in validate] == ["success"]  # not run again
