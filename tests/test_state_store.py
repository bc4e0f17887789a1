"""One contract, two backends: the results layer on SQLite (embedded) and PostgreSQL.

Each transition has one owner and is idempotent; every test taking ``store`` runs on
both backends (as huey runs one storage suite on every backend), so the Python
transitions of ``db/sqlite.py`` and the PL/pgSQL ones ``db/postgres.py`` calls cannot
drift apart. The backends may differ only in what a refusal carries besides its
decision (PostgreSQL also returns the workflow row), which no caller reads.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from stores import fresh_pg_store, new_workflow

from dox_tasks.contract import StepState, WorkflowState
from dox_tasks.db.store import (
    Conclusion,
    NewWorkflow,
    PostgresStateStore,
    SQLiteStateStore,
    StateStore,
    StepClose,
    StepDelivery,
    StepStart,
    aware,
    open_store,
)
from dox_tasks.db.tables import WS
from dox_tasks.errors import ConfigError, StateStoreError, StepStillRunning, UnknownWorkflow

RUN1 = ("d" * 64, 1)  # what a step message of run 1 names: (definition hash, run)
RUN2 = ("d" * 64, 2)


def begin(
    store: StateStore,
    wid: str,
    step: str = "one",
    task: str | None = "t",
    *,
    max_deliveries: int = 5,
    hold_s: int = 0,
    with_outputs: bool = False,
    expect: tuple[str, int] = RUN1,
    host: str = "h",
) -> StepStart:
    """One delivery of ``step`` (run 1 of definition d…d unless ``expect`` says otherwise)."""
    return store.begin_step(
        StepDelivery(
            wid,
            step,
            task,
            host,
            expect,
            max_deliveries=max_deliveries,
            hold_s=hold_s,
            with_outputs=with_outputs,
        )
    )


def finish(
    store: StateStore,
    wid: str,
    step: str,
    attempt: int,
    state: StepState,
    next_step: str | None = None,
    **kw: Any,
) -> bool:
    return store.finish_step(wid, StepClose(step, attempt, state, **kw), next_step=next_step)


def _end(store: StateStore, wid: str, state: WorkflowState, **kw) -> None:
    assert store.conclude(wid, Conclusion(state, **kw))


# -- the backend -----------------------------------------------------------------------


def test_open_store_picks_the_backend_from_the_url(tmp_path):
    sqlite = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(sqlite, SQLiteStateStore) and not sqlite.is_postgres
    for url in ("postgresql://nobody@127.0.0.1:1/none", "postgres://nobody@127.0.0.1:1/none"):
        pg = open_store(url)  # connects lazily
        assert isinstance(pg, PostgresStateStore) and pg.is_postgres
    with pytest.raises(ConfigError, match="mysql"):
        open_store("mysql://nobody@127.0.0.1:1/none")


# -- create_workflow ---------------------------------------------------------------------


def test_idempotency_key_creates_once(store):
    a = new_workflow(store, key="k1")
    b = new_workflow(store, key="k1")
    assert a == b


def test_idempotency_keys_are_per_user_on_both_backends(store):
    a = new_workflow(store, user="alice", key="k1")
    b = new_workflow(store, user="bob", key="k1", sha="b" * 64)
    assert a != b
    assert new_workflow(store, user="alice", key="k1") == a
    assert (store.find_by_idempotency_key("bob", "k1"), store.find_by_idempotency_key("carol", "k1")) == (
        b,
        None,
    )


def test_a_new_workflow_is_queued_at_its_first_step(store):
    wid = new_workflow(store, user="alice", user_display="Alice ", over_limit=True)
    row = store.get_workflow(wid)
    assert (row["current_state"], row["current_step"], row["run"]) == ("queued", "one", 1)
    assert (row["user_id"], row["user_display"]) == ("alice", "Alice ")
    assert row["metadata"] == {"over_limit": True}
    assert row["created_at"] == row["updated_at"] and row["finished_at"] is None
    plain = store.get_workflow(new_workflow(store, user="bob", sha="b" * 64))
    assert (plain["user_display"], plain["metadata"]) == ("bob", {})  # what the caller wrote
    assert store.status_of([wid, "nope"]) == {wid: "queued"}
    assert set(store.get_workflows([wid, plain["workflow_id"], "nope"])) == {wid, plain["workflow_id"]}


def test_a_schedule_slot_runs_once(store):
    first = new_workflow(store, sha=None, user="beat", schedule_slot="2026-01-01T00:00")
    again, created = store.create_workflow(
        NewWorkflow(
            rule_name="wf",
            definition_hash="d" * 64,
            definition_version="1",
            first_step="one",
            user="ops",
            source="manual",
            schedule_slot="2026-01-01T00:00",
        )
    )
    assert (again, created) == (first, False)
    assert store.run_for_slot("wf", "2026-01-01T00:00") == first
    assert store.run_for_slot("wf", "2026-01-01T01:00") is None
    time.sleep(0.01)
    later = new_workflow(store, sha=None, schedule_slot="2026-01-01T01:00")
    other = new_workflow(store, sha=None, rule_name="other", schedule_slot="2026-01-01T00:00")  # its own slot
    runs = store.last_runs(["wf", "other", "never"])
    assert {name: r["workflow_id"] for name, r in runs.items()} == {"wf": later, "other": other}


def test_a_refused_statement_is_a_dox_error_and_changes_nothing(store):
    """A workflow naming a definition that was never saved breaks a foreign key: the
    caller gets DOX's own exception, not the driver's, on either backend."""
    with pytest.raises(StateStoreError):
        store.create_workflow(
            NewWorkflow(
                rule_name="wf", definition_hash="f" * 64, definition_version="1", first_step="one", user="u"
            )
        )
    assert store.last_runs(["wf"]) == {} and store.find_by_idempotency_key("u", "k") is None


def test_definitions_are_written_once_by_digest(store):
    store.save_definition("d" * 64, "wf", "1", {"steps": ["one"]})
    store.save_definition("d" * 64, "wf", "2", {"steps": ["changed"]})  # same digest: the first stays
    assert store.load_definition("d" * 64) == {"steps": ["one"]}
    assert store.load_definition("e" * 64) is None


# -- begin_step ----------------------------------------------------------------------------


def test_attempts_are_counted_before_the_body_and_lost_ones_marked(store):
    wid = new_workflow(store)
    first = begin(store, wid, "one", "t1")
    assert first.run and first.attempt == 1 and first.workflow["current_state"] == "running"
    second = begin(store, wid, "one", "t2")  # redelivery after a crash
    assert second.run and second.attempt == 2
    assert [r["state"] for r in store.step_rows(wid)] == ["lost", "running"]
    lost = store.step_rows(wid)[0]
    assert lost["error"] == "worker lost (message redelivered)" and lost["finished_at"] is not None
    assert (second.try_no, store.get_workflow(wid)["current_state"]) == (2, "running")


def test_an_overlapping_delivery_waits_instead_of_running_twice(store):
    wid = new_workflow(store)
    first = begin(store, wid, "one", "t1", hold_s=60)
    assert first.run
    second = begin(store, wid, "one", "t2", hold_s=60)
    assert not second.run and 50 <= second.busy_for <= 61
    assert [r["state"] for r in store.step_rows(wid)] == ["running"]  # not counted, not lost
    assert second.why == "another delivery of this step is still running" and not second.poison


def test_a_running_attempt_past_the_time_limit_is_lost_not_waited_for(store):
    wid = new_workflow(store)
    assert begin(store, wid, hold_s=60).run
    _age_attempts(store, wid, seconds=61)
    again = begin(store, wid, hold_s=60)
    assert again.run and again.attempt == 2 and again.busy_for == 0
    assert [r["state"] for r in store.step_rows(wid)] == ["lost", "running"]


def _age_attempts(store: StateStore, wid: str, seconds: int) -> None:
    from dox_tasks.db.tables import SR

    rows = store.step_rows(wid)
    with store.tx() as conn:
        for r in rows:
            conn.execute(
                update(SR)
                .where(SR.c.id == r["id"])
                .values(started_at=aware(r["started_at"]) - timedelta(seconds=seconds))
            )


def test_poison_after_too_many_deliveries(store):
    wid = new_workflow(store)
    for _ in range(3):
        assert begin(store, wid, max_deliveries=3).run
    last = begin(store, wid, max_deliveries=3)
    assert not last.run and last.poison and last.attempt == 4
    assert store.step_rows(wid)[-1]["state"] == "failed"
    assert last.why == "delivered 4 times (limit 3)" and last.try_no == 4
    assert store.step_rows(wid)[-1]["error"] == last.why
    assert store.get_workflow(wid)["current_state"] == "running"  # the caller concludes it


def test_an_unknown_or_ended_workflow_runs_nothing(store):
    nothing = begin(store, "00000000-0000-0000-0000-000000000000")
    assert not nothing.run and "unknown workflow" in nothing.why
    with pytest.raises(UnknownWorkflow):
        store.get_workflow("00000000-0000-0000-0000-000000000000")
    wid = new_workflow(store)
    _end(store, wid, WorkflowState.CANCELLED)  # an operator's cancel: no step to own
    ended = begin(store, wid)
    assert not ended.run and ended.why == "workflow is already cancelled" and not ended.poison
    assert store.step_rows(wid) == []


def test_a_message_naming_another_definition_or_run_is_refused_before_counting(store):
    """A forged step message (another definition's hash, a run that is not current) runs
    nothing and counts nothing: it cannot use up the real delivery's budget."""
    wid = new_workflow(store)
    forged = begin(store, wid, "one", "t-forged", max_deliveries=1, expect=("e" * 64, 1))
    assert not forged.run and "forged" in forged.why and not forged.poison
    future = begin(store, wid, "one", "t-forged", max_deliveries=1, expect=("d" * 64, 7))
    assert not future.run and "delivery of run 7, workflow is at run 1" in future.why
    assert store.step_rows(wid) == []
    assert store.get_workflow(wid)["current_state"] == "queued"
    real = begin(store, wid, "one", "t-real", max_deliveries=1)
    assert real.run and real.try_no == 1
    assert forged.why == f"message names definition {'e' * 12}, the workflow runs {'d' * 12} (forged?)"


def test_the_last_step_gets_the_row_and_the_earlier_outputs_in_its_count(store):
    wid = new_workflow(store)
    one = begin(store, wid, "one", "t1")
    assert one.outputs is None  # only asked for by the last step
    assert finish(store, wid, "one", one.attempt, StepState.SUCCESS, "two", output={"pages": 2})
    two = begin(store, wid, "two", "t2", with_outputs=True)
    assert two.run and two.outputs == {"one": {"pages": 2}}
    wf = two.workflow
    assert wf["current_step"] == "two" and wf["current_state"] == "running" and wf["sha256"] == "a" * 64
    assert aware(wf["created_at"]) <= aware(wf["updated_at"])  # datetimes, as from a plain read
    assert aware(two.started_at) == aware(store.step_rows(wid)[-1]["started_at"])


# -- finish_step ---------------------------------------------------------------------------


def test_success_advances_once_and_a_duplicate_is_superseded(store):
    wid = new_workflow(store)
    a = begin(store, wid, "one", "ta")
    b = begin(store, wid, "one", "tb")  # a concurrent duplicate
    assert finish(store, wid, "one", b.attempt, StepState.SUCCESS, "two", output={"x": 1})
    assert not finish(store, wid, "one", a.attempt, StepState.SUCCESS, "two", output={"x": 2})
    rows = store.step_rows(wid)
    assert sorted(r["state"] for r in rows) == ["success", "superseded"]
    assert store.get_workflow(wid)["current_step"] == "two"
    assert store.step_outputs(wid) == {"one": {"x": 1}}


def test_a_failed_attempt_is_closed_and_the_workflow_stays_at_its_step(store):
    wid = new_workflow(store)
    a = begin(store, wid)
    assert finish(store, wid, "one", a.attempt, StepState.RETRY, error="E: boom", traceback="x" * 5000)
    row = store.step_rows(wid)[0]
    assert (row["state"], row["error"], len(row["traceback"])) == ("retry", "E: boom", 4000)
    assert row["duration_ms"] is not None and row["duration_ms"] >= 0  # from the attempt's own start
    assert store.get_workflow(wid)["current_step"] == "one"
    assert store.step_outputs(wid) == {}


def test_a_rejection_moves_the_workflow_on_like_a_success(store):
    wid = new_workflow(store)
    a = begin(store, wid)
    assert finish(store, wid, "one", a.attempt, StepState.REJECTED, None, output={"reason": "empty"})
    assert store.get_workflow(wid)["current_step"] is None
    assert store.step_outputs(wid) == {"one": {"reason": "empty"}}
    assert not finish(store, wid, "one", a.attempt, StepState.SUCCESS, "two")  # nothing to move


def test_stale_delivery_is_refused_and_knows_the_step_was_done(store):
    wid = new_workflow(store)
    a = begin(store, wid)
    finish(store, wid, "one", a.attempt, StepState.SUCCESS, "two")
    again = begin(store, wid)
    assert not again.run and again.done_before and "stale" in again.why
    assert again.why == "workflow is at step 'two', not 'one' (stale)"
    assert again.workflow["current_step"] == "two"  # the caller may re-send the rest of the chain
    assert store.has_attempts(wid, "one") and not store.has_attempts(wid, "two")


# -- conclude ------------------------------------------------------------------------------


def test_terminal_transition_is_atomic_and_first_writer_wins(store):
    wid = new_workflow(store)
    a = begin(store, wid)
    close = StepClose("one", a.attempt, StepState.REJECTED, {"reason": "empty"}, started_at=a.started_at)
    won = store.conclude(
        wid,
        Conclusion(
            WorkflowState.REJECTED,
            reason="empty",
            detail="0 bytes",
            duplicate_of=None,
            result={"status": "rejected"},
            events=[(f"{wid}:workflow.rejected", "workflow.rejected", {"status": "rejected"})],
            close=close,
        ),
    )
    assert won
    lost = store.conclude(
        wid,
        Conclusion(
            WorkflowState.FAILED,
            reason="internal_error",
            detail="late",
            duplicate_of=None,
            result={"status": "failed"},
            events=[(f"{wid}:workflow.failed", "workflow.failed", {})],
            expect_step="one",
        ),
    )
    assert not lost
    row = store.get_workflow(wid)
    assert (row["current_state"], row["reason"], row["current_step"]) == ("rejected", "empty", None)
    assert [e["type"] for e in store.events(wid)] == ["workflow.rejected"]
    assert store.step_rows(wid)[0]["state"] == "rejected"
    assert not begin(store, wid).run  # finished stays finished
    assert (row["detail"], row["result"], row["finished_at"] is not None) == (
        "0 bytes",
        {"status": "rejected"},
        True,
    )
    assert store.events(wid)[0]["payload"] == {"status": "rejected"}
    attempt = store.step_rows(wid)[0]
    assert attempt["output"] == {"reason": "empty"} and attempt["duration_ms"] >= 0
    # Ended for good: an operator's cancel (no step to own) changes nothing either.
    assert not store.conclude(wid, Conclusion(WorkflowState.CANCELLED))


def test_a_delivery_that_lost_ownership_cannot_end_the_workflow(store):
    wid = new_workflow(store)
    a = begin(store, wid)
    finish(store, wid, "one", a.attempt, StepState.SUCCESS, "two")
    late = StepClose("one", a.attempt, StepState.FAILED, error="boom")
    assert not store.conclude(
        wid,
        Conclusion(
            WorkflowState.FAILED,
            reason="internal_error",
            detail="x",
            duplicate_of=None,
            result={},
            events=[(f"{wid}:workflow.failed", "workflow.failed", {})],
            close=late,
        ),
    )
    assert store.get_workflow(wid)["current_state"] == "running"
    assert store.step_rows(wid)[0]["state"] == "superseded"  # the closed attempt lost
    assert store.events(wid) == []


def test_two_deliveries_concluding_the_same_step_first_writer_wins(store):
    wid = new_workflow(store)
    a = begin(store, wid, "one", "ta")
    b = begin(store, wid, "one", "tb")
    first = Conclusion(WorkflowState.SUCCESS, close=StepClose("one", b.attempt, StepState.SUCCESS, {"n": 1}))
    second = Conclusion(WorkflowState.FAILED, close=StepClose("one", a.attempt, StepState.FAILED, error="x"))
    assert store.conclude(wid, first) and not store.conclude(wid, second)
    assert store.get_workflow(wid)["current_state"] == "success"
    assert [(r["attempt"], r["state"]) for r in store.step_rows(wid)] == [(1, "superseded"), (2, "success")]


def test_a_conclusion_writes_each_event_once(store):
    wid = new_workflow(store)
    events = [
        (f"{wid}:workflow.escalated", "workflow.escalated", {}),
        (f"{wid}:workflow.failed", "workflow.failed", {}),
    ]
    _end(store, wid, WorkflowState.FAILED, reason="poison", events=events, expect_step="one")
    assert sorted(e["type"] for e in store.events(wid)) == ["workflow.escalated", "workflow.failed"]
    assert {e["workflow_id"] for e in store.events(wid)} == {wid}
    # Ended again after a retry, naming an event id already written: that row stays as it was.
    store.reopen(wid, {"failed"}, "one", ("r1", "workflow.retry", {}), hold_s=0)
    _end(store, wid, WorkflowState.FAILED, events=[(f"{wid}:workflow.failed", "workflow.failed", {"n": 2})])
    assert sorted(e["id"] for e in store.events(wid)) == sorted([*(e[0] for e in events), "r1"])
    assert [e["payload"] for e in store.events(wid) if e["type"] == "workflow.failed"] == [{}]


# -- reopen (an operator's retry) ---------------------------------------------------------


def test_a_retry_is_a_new_run_with_its_own_budget_and_old_deliveries_are_stale(store):
    wid = new_workflow(store)
    for n in range(3):
        start = begin(store, wid, "one", "t-old", max_deliveries=3)
        assert start.run and start.try_no == n + 1
    _end(store, wid, WorkflowState.FAILED, close=StepClose("one", 3, StepState.FAILED))
    event = ("e1", "workflow.retry", {"actor": "ops"})
    reopened = store.reopen(wid, {"failed"}, "one", event, hold_s=60)
    assert reopened["run"] == 2 and reopened["current_state"] == "queued"
    assert store.reopen(wid, {"failed"}, "one", ("e2", "workflow.retry", {}), hold_s=60) is None
    assert [e["payload"]["run"] for e in store.events(wid)] == [2]

    stale = begin(store, wid, "one", "t-old", max_deliveries=3, expect=RUN2)  # run 1's countdown retry
    assert not stale.run and "stale" in stale.why
    old_message = begin(store, wid, "one", "t-any", max_deliveries=3)  # names run 1
    assert not old_message.run and "delivery of run 1, workflow is at run 2" in old_message.why
    fresh = begin(store, wid, "one", "t-new", max_deliveries=3, expect=RUN2)
    assert fresh.run and (fresh.attempt, fresh.try_no) == (4, 1)  # a full budget again
    assert [(r["run"], r["attempt"]) for r in store.step_rows(wid)] == [(1, 1), (1, 2), (1, 3), (2, 4)]
    assert store.has_attempts(wid, "one", 2) and not store.has_attempts(wid, "two", 2)
    assert stale.why == "delivery of run 1, workflow is at run 2 (stale)"


def test_a_retry_clears_the_previous_answer(store):
    wid = new_workflow(store)
    a = begin(store, wid)
    _end(
        store,
        wid,
        WorkflowState.FAILED,
        reason="internal_error",
        detail="boom",
        result={"status": "failed"},
        close=StepClose("one", a.attempt, StepState.FAILED),
    )
    reopened = store.reopen(
        wid, {"failed", "cancelled"}, "one", ("e1", "workflow.retry", {"by": "ops"}), hold_s=60
    )
    row = store.get_workflow(wid)
    assert (row["current_state"], row["current_step"], row["run"]) == ("queued", "one", 2)
    assert (row["reason"], row["detail"], row["result"], row["finished_at"]) == (None, None, None, None)
    assert aware(row["run_started_at"]) == aware(reopened["run_started_at"])
    assert store.events(wid)[0]["payload"] == {"by": "ops", "run": 2}
    with pytest.raises(UnknownWorkflow):
        store.reopen("nope", {"failed"}, "one", ("e2", "workflow.retry", {}), hold_s=60)
    assert store.reopen(wid, {"failed"}, "one", ("e3", "workflow.retry", {}), hold_s=60) is None  # queued now


def test_a_retry_refuses_while_a_step_of_the_ended_run_may_still_run(store):
    wid = new_workflow(store)
    assert begin(store, wid, "one", "t1", max_deliveries=3).run
    _end(store, wid, WorkflowState.CANCELLED, expect_step="one")  # cancel leaves the body running
    with pytest.raises(StepStillRunning, match="still running"):
        store.reopen(wid, {"cancelled"}, "one", ("e1", "workflow.retry", {}), hold_s=60)
    # Past the step's time limit its worker is gone: the attempt is marked lost, the retry goes on.
    assert store.reopen(wid, {"cancelled"}, "one", ("e2", "workflow.retry", {}), hold_s=0)["run"] == 2
    assert [r["state"] for r in store.step_rows(wid)] == ["lost"]
    assert store.step_rows(wid)[0]["error"] == "worker lost (before a retry)"
    assert [e["id"] for e in store.events(wid)] == ["e2"]  # the refused retry wrote nothing


# -- the look-ups of intake and the steps ---------------------------------------------------


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


def test_copies_submitted_in_the_same_instant_order_by_id(store):
    """Equal creation times: the smaller workflow id is the original, whichever asks."""
    ids = sorted(new_workflow(store, sha="c" * 64) for _ in range(3))
    same = store.get_workflow(ids[0])["created_at"]
    with store.tx() as conn:
        conn.execute(update(WS).where(WS.c.workflow_id.in_(ids)).values(created_at=same))
    assert store.find_duplicate("c" * 64, "u", ids[0], before=same) is None
    assert store.find_duplicate("c" * 64, "u", ids[1], before=same) == ids[0]
    assert store.find_duplicate("c" * 64, "u", ids[2], before=same) == ids[0]


def test_only_successful_or_live_copies_count_as_originals(store):
    failed = new_workflow(store, sha="c" * 64)
    _end(store, failed, WorkflowState.FAILED)
    time.sleep(0.01)
    live = new_workflow(store, sha="c" * 64)
    time.sleep(0.01)
    later = new_workflow(store, sha="c" * 64)
    before = store.get_workflow(later)["created_at"]
    assert store.find_duplicate("c" * 64, "u", later, before=before) == live
    _end(store, live, WorkflowState.SUCCESS)
    assert store.find_duplicate("c" * 64, "u", later, before=before) == live
    # Submitted after `before`: not an original of this copy.
    assert (
        store.find_duplicate("c" * 64, "u", failed, before=store.get_workflow(failed)["created_at"]) is None
    )


def test_staged_bytes_are_needed_while_another_workflow_may_read_them(store):
    a = new_workflow(store, sha="c" * 64)
    b = new_workflow(store, sha="c" * 64)
    assert store.needs_staged_input("c" * 64, exclude=a)  # b is live
    _end(store, b, WorkflowState.SUCCESS)
    assert not store.needs_staged_input("c" * 64, exclude=a)
    _end(store, a, WorkflowState.FAILED)  # an operator may retry it
    assert store.needs_staged_input("c" * 64, exclude=b)


def test_an_infected_verdict_is_remembered_by_digest(store):
    wid = new_workflow(store, sha="c" * 64)
    assert store.known_infected("c" * 64) is None
    _end(store, wid, WorkflowState.REJECTED, reason="infected", detail="Dox.Test.EICAR")
    assert store.known_infected("c" * 64) == "Dox.Test.EICAR"
    other = new_workflow(store, sha="e" * 64)
    _end(store, other, WorkflowState.REJECTED, reason="infected")
    assert store.known_infected("e" * 64) == "known infected"


# -- PostgreSQL's held connection ------------------------------------------------------------


@pytest.fixture
def pg_store():
    yield from fresh_pg_store()


def _terminate(store: PostgresStateStore) -> None:
    pid = store.direct.call("SELECT pg_backend_pid()", ())[0]
    with store.tx() as conn:
        conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")


def test_a_broken_step_connection_fails_one_call_then_reconnects(pg_store):
    from dox_tasks.errors import StateStoreUnavailable

    wid = new_workflow(pg_store)
    _terminate(pg_store)  # what a Postgres restart does to the held connection
    with pytest.raises(StateStoreUnavailable):
        begin(pg_store, wid, "one", "t1")
    start = begin(pg_store, wid, "one", "t1")
    assert start.run and start.attempt == 1


def test_an_idle_step_connection_is_checked_before_use(pg_store, monkeypatch):
    """Like the pool's pre-ping, but only after the connection sat idle (a server or proxy
    may have closed it meanwhile): the call then goes through on a fresh connection."""
    from dox_tasks.db import direct

    wid = new_workflow(pg_store)
    _terminate(pg_store)
    monkeypatch.setattr(direct, "PING_AFTER_IDLE_S", 0.0)
    start = begin(pg_store, wid, "one", "t1")
    assert start.run and start.attempt == 1


def test_an_error_the_database_reports_is_a_dox_error_and_the_connection_stays(pg_store):
    pid = pg_store.direct.call("SELECT pg_backend_pid()", ())[0]
    with pytest.raises(StateStoreError, match="dox_no_such_function"):
        pg_store.direct.call("SELECT dox_no_such_function()", ())
    assert pg_store.direct.call("SELECT pg_backend_pid()", ())[0] == pid  # autocommit: nothing to undo


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
