"""The reaper against a real broker it may flush: each cause code, produced for real.

Every test here uses its own redis-server as the broker (FLUSHALL is part of the
test) and a real in-process worker; workflows are real document workflows.
"""

from __future__ import annotations

import time

import pdfs
import pytest
from services import RedisServer, expect_of

from dox_tasks.db import records
from dox_tasks.db.store import StepDelivery
from dox_tasks.jobs.launch import run_now

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.integration]


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def flushable(stack, private_redis):
    """The full stack, with the private Redis as broker and a reaper that looks after 1 s."""
    return stack.model_copy(
        update={
            "broker_url": private_redis.url,
            "reaper_queued_after_s": 1,
            "reaper_grace_s": 0,
            "workflow_timeout": 5,
        }
    )


def reap(h) -> dict:  # type: ignore[no-untyped-def]
    launch = run_now(h.rt, "reap_stuck_workflows", actor="test")
    row = h.wait([launch.workflow_id], 60)[launch.workflow_id]
    assert row["current_state"] == "success", row["detail"]
    return row["result"]


def test_twenty_in_flight_workflows_survive_a_redis_flush(flushable, private_redis, harness_factory):
    h = harness_factory(flushable)
    ids = [h.submit(pdfs.unique(300 + n)) for n in range(20)]
    private_redis.flushall()  # every message gone; the rows stay queued in Postgres
    h.worker()
    time.sleep(1.5)
    assert set(h.rt.state.status_of(ids).values()) == {"queued"}
    result = reap(h)
    assert result["causes"] == {"message_lost": 20}
    assert {f["action"] for f in result["findings"]} == {"redriven"}
    rows = h.wait(ids, 180)
    assert {r["current_state"] for r in rows.values()} == {"success"}
    assert len(h.objects()) == 20
    for wid in ids:
        events = {e["type"] for e in h.rt.state.events(wid)}
        assert {"workflow.stuck", "workflow.redriven", "workflow.success"} <= events


def test_a_queue_nobody_consumes_is_no_consumer_and_left_queued(flushable, harness_factory):
    h = harness_factory(flushable)
    h.worker(queues=["operations"])  # the reaper runs; nothing consumes validation
    wid = h.submit(pdfs.unique(401))
    time.sleep(1.5)
    result = reap(h)
    assert result["causes"] == {"no_consumer": 1}
    finding = result["findings"][0]
    assert finding["workflow_id"] == wid and finding["action"] == "left"
    assert "validation" in finding["detail"]
    assert h.rt.state.status_of([wid])[wid] == "queued"
    h.stop_workers()
    h.worker()  # an operator starts the missing worker: the same message completes it
    assert h.wait([wid], 60)[wid]["current_state"] == "success"


def test_a_step_whose_worker_vanished_is_worker_lost_and_redriven(flushable, private_redis, harness_factory):
    h = harness_factory(flushable)
    wid = h.submit(pdfs.unique(402))
    # A worker took the step and died with it (its message is gone with it, say by a
    # Redis restart): the attempt row names a worker that no longer answers.
    start = h.rt.state.begin_step(
        StepDelivery(
            wid, "validate", "lost-task", "ghost@gone", expect_of(h, wid), max_deliveries=5, hold_s=1
        )
    )
    assert start.run
    private_redis.flushall()
    h.worker()
    time.sleep(5.5)  # past the step's hard limit (WORKFLOW_TIMEOUT=5) + grace 0
    result = reap(h)
    assert result["causes"] == {"worker_lost": 1}
    assert "ghost@gone" in result["findings"][0]["detail"]
    assert h.wait([wid], 60)[wid]["current_state"] == "success"
    attempts = [
        (r["step"], r["attempt"], r["state"]) for r in h.rt.state.step_rows(wid) if r["step"] == "validate"
    ]
    assert attempts == [("validate", 1, "lost"), ("validate", 2, "success")]


def test_slow_is_not_stuck(flushable, harness_factory):
    """A message waiting on a queue a live worker consumes, or held by one, is left alone."""
    from dox_tasks.jobs import broker
    from dox_tasks.jobs.reaper import Cause, Workers, examine

    h = harness_factory(flushable)
    wid = h.submit(pdfs.unique(403))
    view = broker.read(h.rt.redis, flushable.broker_key_prefix or "", list(h.app.amqp.queues))
    assert view.where(wid) == "queue:validation"  # the real message, found in the real broker
    row = h.rt.state.get_workflow(wid)
    assert examine(h.rt, row, None, view, Workers({"busy@host": {"validation"}})) is None
    cause, _ = examine(h.rt, row, None, view, Workers({"other@host": {"scan"}}))
    assert cause is Cause.NO_CONSUMER
    held = broker.BrokerView(reserved={wid})
    assert examine(h.rt, row, None, held, Workers({"busy@host": {"validation"}})) is None
    assert records.count_events(h.rt.state, wid, "workflow.stuck") == 0


def test_a_sync_whose_chord_never_completes_is_chord_waiting_and_finished(
    flushable, private_redis, harness_factory, tmp_path
):
    import yaml

    from dox_tasks.contract import QUEUES

    teams = {
        "sync_deadline_s": 1,
        "teams": [{"name": "a"}, {"name": "b"}],
        "services": [
            {"name": f"s{n}", "health_url": f"http://127.0.0.1:9/{n}", "team": "a", "depended_on_by": ["b"]}
            for n in range(3)
        ],
    }
    path = tmp_path / "teams.yaml"
    path.write_text(yaml.safe_dump(teams))
    h = harness_factory(flushable.model_copy(update={"teams_file": path}))
    h.worker(queues=[q for q in QUEUES if q not in ("coordination", "intake")])  # nobody runs the checks
    wid = run_now(h.rt, "sync_team_coordination", actor="test").workflow_id
    h.wait_until(
        lambda: any(r["state"] == "success" for r in h.rt.state.step_rows(wid)), 30, "the chord to start"
    )
    private_redis.flushall()  # the chord's messages are gone for good
    time.sleep(1.5)  # past the sync deadline (1 s) + grace (0)
    result = reap(h)
    assert result["causes"] == {"chord_waiting": 1}
    assert result["findings"][0]["action"] == "finished"
    row = h.rt.state.get_workflow(wid)
    assert (row["current_state"], row["reason"]) == ("failed", "timeout")
    assert row["result"]["unanswered"] == ["s0", "s1", "s2"] and row["result"]["deadline_passed"] is True
