"""One contract, two backends: the results layer on SQLite (embedded) and PostgreSQL.

Each transition has one owner and is idempotent; these tests pin that down on both.
"""

from __future__ import annotations

import time

import pytest
import services

from dox_tasks.contract import StepState, WorkflowState
from dox_tasks.db.store import StateStore, StepClose, aware


def _pg_store():
    url = services.create_database()
    s = StateStore(url)
    s.migrate()
    yield s
    s.close()
    services.drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = StateStore(f"sqlite:///{tmp_path / 'dox.db'}")
        s.migrate()
        yield s
        s.close()
        return
    yield from _pg_store()


RUN1 = ("d" * 64, 1)  # what a step message of run 1 names: (definition hash, run)
RUN2 = ("d" * 64, 2)


def new_workflow(store: StateStore, sha: str = "a" * 64, user: str = "u", key: str | None = None) -> str:
    store.save_definition("d" * 64, "wf", "1", {})
    wid, _ = store.create_workflow(
        rule_name="wf",
        definition_hash="d" * 64,
        definition_version="1",
        first_step="one",
        user=user,
        source=None,
        file_name="f.pdf",
        sha256=sha,
        size=3,
        metadata=None,
        idempotency_key=key,
    )
    return wid


def test_idempotency_key_creates_once(store):
    a = new_workflow(store, key="k1")
    b = new_workflow(store, key="k1")
    assert a == b


def test_attempts_are_counted_before_the_body_and_lost_ones_marked(store):
    wid = new_workflow(store)
    first = store.begin_step(wid, "one", "t1", "h", max_deliveries=5, expect=RUN1)
    assert first.run and first.attempt == 1 and first.workflow["current_state"] == "running"
    second = store.begin_step(
        wid, "one", "t2", "h", max_deliveries=5, expect=RUN1
    )  # redelivery after a crash
    assert second.run and second.attempt == 2
    assert [r["state"] for r in store.step_rows(wid)] == ["lost", "running"]


def test_an_overlapping_delivery_waits_instead_of_running_twice(store):
    wid = new_workflow(store)
    first = store.begin_step(wid, "one", "t1", "h", max_deliveries=5, hold_s=60, expect=RUN1)
    assert first.run
    second = store.begin_step(wid, "one", "t2", "h", max_deliveries=5, hold_s=60, expect=RUN1)
    assert not second.run and 50 <= second.busy_for <= 61
    assert [r["state"] for r in store.step_rows(wid)] == ["running"]  # not counted, not lost


def test_poison_after_too_many_deliveries(store):
    wid = new_workflow(store)
    for _ in range(3):
        assert store.begin_step(wid, "one", "t", "h", max_deliveries=3, expect=RUN1).run
    last = store.begin_step(wid, "one", "t", "h", max_deliveries=3, expect=RUN1)
    assert not last.run and last.poison and last.attempt == 4
    assert store.step_rows(wid)[-1]["state"] == "failed"


def test_success_advances_once_and_a_duplicate_is_superseded(store):
    wid = new_workflow(store)
    a = store.begin_step(wid, "one", "ta", "h", max_deliveries=5, expect=RUN1)
    b = store.begin_step(wid, "one", "tb", "h", max_deliveries=5, expect=RUN1)  # a concurrent duplicate
    assert store.finish_step(wid, "one", b.attempt, StepState.SUCCESS, output={"x": 1}, next_step="two")
    assert not store.finish_step(wid, "one", a.attempt, StepState.SUCCESS, output={"x": 2}, next_step="two")
    rows = store.step_rows(wid)
    assert sorted(r["state"] for r in rows) == ["success", "superseded"]
    assert store.get_workflow(wid)["current_step"] == "two"
    assert store.step_outputs(wid) == {"one": {"x": 1}}


def test_stale_delivery_is_refused_and_knows_the_step_was_done(store):
    wid = new_workflow(store)
    a = store.begin_step(wid, "one", "t", "h", max_deliveries=5, expect=RUN1)
    store.finish_step(wid, "one", a.attempt, StepState.SUCCESS, next_step="two")
    again = store.begin_step(wid, "one", "t", "h", max_deliveries=5, expect=RUN1)
    assert not again.run and again.done_before and "stale" in again.why


def test_terminal_transition_is_atomic_and_first_writer_wins(store):
    wid = new_workflow(store)
    a = store.begin_step(wid, "one", "t", "h", max_deliveries=5, expect=RUN1)
    close = StepClose("one", a.attempt, StepState.REJECTED, {"reason": "empty"})
    won = store.conclude(
        wid,
        WorkflowState.REJECTED,
        reason="empty",
        detail="0 bytes",
        duplicate_of=None,
        result={"status": "rejected"},
        events=[(f"{wid}:workflow.rejected", "workflow.rejected", {"status": "rejected"})],
        close=close,
    )
    assert won
    lost = store.conclude(
        wid,
        WorkflowState.FAILED,
        reason="internal_error",
        detail="late",
        duplicate_of=None,
        result={"status": "failed"},
        events=[(f"{wid}:workflow.failed", "workflow.failed", {})],
        expect_step="one",
    )
    assert not lost
    row = store.get_workflow(wid)
    assert (row["current_state"], row["reason"], row["current_step"]) == ("rejected", "empty", None)
    assert [e["type"] for e in store.events(wid)] == ["workflow.rejected"]
    assert store.step_rows(wid)[0]["state"] == "rejected"
    assert not store.begin_step(
        wid, "one", "t", "h", max_deliveries=5, expect=RUN1
    ).run  # finished stays finished


def test_a_delivery_that_lost_ownership_cannot_end_the_workflow(store):
    wid = new_workflow(store)
    a = store.begin_step(wid, "one", "t", "h", max_deliveries=5, expect=RUN1)
    store.finish_step(wid, "one", a.attempt, StepState.SUCCESS, next_step="two")
    late = StepClose("one", a.attempt, StepState.FAILED, error="boom")
    assert not store.conclude(
        wid,
        WorkflowState.FAILED,
        reason="internal_error",
        detail="x",
        duplicate_of=None,
        result={},
        events=[],
        close=late,
    )
    assert store.get_workflow(wid)["current_state"] == "running"


def test_duplicates_point_at_the_earliest_copy(store):
    first = new_workflow(store, sha="b" * 64)
    time.sleep(0.01)
    second = new_workflow(store, sha="b" * 64)
    other_user = new_workflow(store, sha="b" * 64, user="v")
    created = store.get_workflow(second)["created_at"]
    assert store.find_duplicate("b" * 64, "u", second, before=created) == first
    assert store.find_duplicate("b" * 64, "u", first, before=store.get_workflow(first)["created_at"]) is None
    assert store.find_duplicate(
        "b" * 64, None, other_user, before=store.get_workflow(other_user)["created_at"]
    )


def _end(store: StateStore, wid: str, state: WorkflowState, **kw) -> None:
    assert store.conclude(wid, state, reason=None, detail=None, duplicate_of=None, result={}, events=[], **kw)


def test_a_retry_is_a_new_run_with_its_own_budget_and_old_deliveries_are_stale(store):
    wid = new_workflow(store)
    for n in range(3):
        start = store.begin_step(wid, "one", "t-old", "h", max_deliveries=3, expect=RUN1)
        assert start.run and start.try_no == n + 1
    _end(store, wid, WorkflowState.FAILED, close=StepClose("one", 3, StepState.FAILED))
    event = ("e1", "workflow.retry", {"actor": "ops"})
    reopened = store.reopen(wid, {"failed"}, "one", event, hold_s=60)
    assert reopened["run"] == 2 and reopened["current_state"] == "queued"
    assert store.reopen(wid, {"failed"}, "one", ("e2", "workflow.retry", {}), hold_s=60) is None
    assert [e["payload"]["run"] for e in store.events(wid)] == [2]

    stale = store.begin_step(
        wid, "one", "t-old", "h", max_deliveries=3, expect=RUN2
    )  # run 1's countdown retry
    assert not stale.run and "stale" in stale.why
    old_message = store.begin_step(wid, "one", "t-any", "h", max_deliveries=3, expect=RUN1)  # names run 1
    assert not old_message.run and "delivery of run 1, workflow is at run 2" in old_message.why
    fresh = store.begin_step(wid, "one", "t-new", "h", max_deliveries=3, expect=RUN2)
    assert fresh.run and (fresh.attempt, fresh.try_no) == (4, 1)  # a full budget again
    assert [(r["run"], r["attempt"]) for r in store.step_rows(wid)] == [(1, 1), (1, 2), (1, 3), (2, 4)]
    assert store.has_attempts(wid, "one", 2) and not store.has_attempts(wid, "two", 2)


def test_a_retry_refuses_while_a_step_of_the_ended_run_may_still_run(store):
    from dox_tasks.errors import StepStillRunning

    wid = new_workflow(store)
    assert store.begin_step(wid, "one", "t1", "h", max_deliveries=3, expect=RUN1).run
    _end(store, wid, WorkflowState.CANCELLED, expect_step="one")  # cancel leaves the body running
    with pytest.raises(StepStillRunning, match="still running"):
        store.reopen(wid, {"cancelled"}, "one", ("e1", "workflow.retry", {}), hold_s=60)
    # Past the step's time limit its worker is gone: the attempt is marked lost, the retry goes on.
    assert store.reopen(wid, {"cancelled"}, "one", ("e2", "workflow.retry", {}), hold_s=0)["run"] == 2
    assert [r["state"] for r in store.step_rows(wid)] == ["lost"]


def test_the_last_step_gets_the_row_and_the_earlier_outputs_in_its_count(store):
    wid = new_workflow(store)
    one = store.begin_step(wid, "one", "t1", "h", max_deliveries=5, expect=RUN1)
    assert one.outputs is None  # only asked for by the last step
    assert store.finish_step(wid, "one", one.attempt, StepState.SUCCESS, output={"pages": 2}, next_step="two")
    two = store.begin_step(wid, "two", "t2", "h", max_deliveries=5, with_outputs=True, expect=RUN1)
    assert two.run and two.outputs == {"one": {"pages": 2}}
    wf = two.workflow
    assert wf["current_step"] == "two" and wf["current_state"] == "running" and wf["sha256"] == "a" * 64
    assert aware(wf["created_at"]) <= aware(wf["updated_at"])  # datetimes, as from a plain read


@pytest.fixture
def pg_store():
    yield from _pg_store()


def _terminate(store: StateStore) -> None:
    pid = store.direct.call("SELECT pg_backend_pid()", ())[0]
    with store.tx() as conn:
        conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")


def test_a_broken_step_connection_fails_one_call_then_reconnects(pg_store):
    from dox_tasks.errors import StateStoreUnavailable

    wid = new_workflow(pg_store)
    _terminate(pg_store)  # what a Postgres restart does to the held connection
    with pytest.raises(StateStoreUnavailable):
        pg_store.begin_step(wid, "one", "t1", "h", max_deliveries=5, expect=RUN1)
    start = pg_store.begin_step(wid, "one", "t1", "h", max_deliveries=5, expect=RUN1)
    assert start.run and start.attempt == 1


def test_an_idle_step_connection_is_checked_before_use(pg_store, monkeypatch):
    """Like the pool's pre-ping, but only after the connection sat idle (a server or proxy
    may have closed it meanwhile): the call then goes through on a fresh connection."""
    from dox_tasks.db import direct

    wid = new_workflow(pg_store)
    _terminate(pg_store)
    monkeypatch.setattr(direct, "PING_AFTER_IDLE_S", 0.0)
    start = pg_store.begin_step(wid, "one", "t1", "h", max_deliveries=5, expect=RUN1)
    assert start.run and start.attempt == 1


def test_a_forked_child_opens_its_own_step_connection(pg_store):
    """A prefork child must never use (or close) the connection it inherited."""
    import multiprocessing

    parent_pid = pg_store.direct.call("SELECT pg_backend_pid()", ())[0]

    def child(out):
        pg_store.dispose()  # what the worker_process_init handler does
        out.put(pg_store.direct.call("SELECT pg_backend_pid()", ())[0])
        pg_store.close()

    q = multiprocessing.get_context("fork").Queue()
    proc = multiprocessing.get_context("fork").Process(target=child, args=(q,))
    proc.start()
    child_pid = q.get(timeout=30)
    proc.join(30)
    assert proc.exitcode == 0 and child_pid != parent_pid
    assert pg_store.direct.call("SELECT pg_backend_pid()", ())[0] == parent_pid  # still alive


def test_a_message_naming_another_definition_or_run_is_refused_before_counting(store):
    """A forged step message (another definition's hash, a run that is not current) runs
    nothing and counts nothing: it cannot use up the real delivery's budget."""
    wid = new_workflow(store)
    forged = store.begin_step(wid, "one", "t-forged", "h", max_deliveries=1, expect=("e" * 64, 1))
    assert not forged.run and "forged" in forged.why and not forged.poison
    future = store.begin_step(wid, "one", "t-forged", "h", max_deliveries=1, expect=("d" * 64, 7))
    assert not future.run and "delivery of run 7, workflow is at run 1" in future.why
    assert store.step_rows(wid) == []
    assert store.get_workflow(wid)["current_state"] == "queued"
    real = store.begin_step(wid, "one", "t-real", "h", max_deliveries=1, expect=RUN1)
    assert real.run and real.try_no == 1


def test_idempotency_keys_are_per_user_on_both_backends(store):
    a = new_workflow(store, user="alice", key="k1")
    b = new_workflow(store, user="bob", key="k1", sha="b" * 64)
    assert a != b
    assert new_workflow(store, user="alice", key="k1") == a
    assert (store.find_by_idempotency_key("bob", "k1"), store.find_by_idempotency_key("carol", "k1")) == (
        b,
        None,
    )
