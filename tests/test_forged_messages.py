"""Step messages are requests: a forged one changes nothing (real Redis, Postgres, clamd, worker).

Anyone who can write to the broker can read a waiting step message and send another
in its place. Each test parks a real workflow at a step (its genuine message taken off
the queue), sends a forged message for it, and checks that nothing ran: no attempt
row, no stored object, the workflow still waiting at that step. Then the genuine step
is sent again (as the reaper would) and the workflow ends as it must.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import pdfs
import pytest

from dox_tasks.definitions.loader import Definition

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres, pytest.mark.clamd]


def _take(h: Any, queue: str) -> list[Any]:
    """Take the one waiting message off ``queue`` (as an attacker reading the broker
    would) and return its arguments."""
    raw = h.rt.redis.rpop(f"{h.settings.broker_key_prefix}{queue}")
    assert raw is not None and h.rt.redis.llen(f"{h.settings.broker_key_prefix}{queue}") == 0
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return list(args)


def _parked_at_scan(h: Any, data: bytes) -> dict[str, Any]:
    """A workflow validated and waiting at ``scan``; its genuine scan message taken off
    the queue, its arguments kept in ``wf["message"]`` for the forger to reuse."""
    h.worker(queues=["validation"])
    wid = h.submit(data)
    h.wait_until(lambda: h.rt.state.get_workflow(wid)["current_step"] == "scan", what="validation")
    h.stop_workers()
    wf = h.rt.state.get_workflow(wid)
    wf["message"] = _take(h, "scan")
    assert wf["message"][:2] == [wid, "scan"]
    return wf


def _sig(h: Any, task: str, wf: dict[str, Any], step: str, queue: str, **kw: Any) -> Any:
    """A message in the genuine one's form: its arguments with the step (and, if given,
    the hash or run) replaced."""
    args = list(wf["message"])
    args[1] = step
    if "digest" in kw:
        args[2] = kw.pop("digest")
    if "run" in kw:
        args[3] = kw.pop("run")
    return h.app.signature(task, args=tuple(args), immutable=True, queue=queue, **kw)


def _later_steps(h: Any, wf: dict[str, Any]) -> list[Any]:
    return [
        _sig(h, "dox.store", wf, "store", "storage"),
        _sig(h, "dox.recognize", wf, "recognize", "recognition"),
        _sig(h, "dox.publish", wf, "publish", "events"),
    ]


def _settle(h: Any, seconds: float = 2.0) -> None:
    """Give the worker time to take (and refuse) what was sent."""
    time.sleep(seconds)


def _unchanged(h: Any, wf: dict[str, Any]) -> None:
    now = h.rt.state.get_workflow(wf["workflow_id"])
    assert (now["current_state"], now["current_step"]) == ("running", "scan")
    assert [r["step"] for r in h.rt.state.step_rows(wf["workflow_id"])] == ["validate"]
    assert h.objects() == []


def _redrive_scan(h: Any, wf: dict[str, Any]) -> dict[str, Any]:
    h.app.send_task("dox.scan", args=wf["message"], queue="scan")  # the genuine message, as sent
    return h.wait([wf["workflow_id"]])[wf["workflow_id"]]


def _other_definition(h: Any) -> Definition:
    """A definition recorded in the database whose step ``scan`` is ``dox.noop``."""
    body = {
        "name": "forger",
        "version": "1.0.0",
        "trigger": {"type": "api_request"},
        "steps": [{"name": "scan", "task": "dox.noop"}],
    }
    d = Definition.from_snapshot(body, source="<test>")
    h.rt.state.save_definition(d.digest, d.name, d.model.version, d.body())
    return d


def test_noop_in_place_of_the_scan_with_the_real_later_steps_changes_nothing(dox):
    """The reported attack: dox.noop as the scan step of an EICAR PDF, chained with the
    real store/recognize/publish. Before: success, scan skipped, bytes stored."""
    dox.stop_workers()
    wf = _parked_at_scan(dox, pdfs.eicar_pdf())
    forged = _sig(dox, "dox.noop", wf, "scan", "scan")
    from celery import chain

    dox.worker()
    chain(forged, *_later_steps(dox, wf)).apply_async()
    _settle(dox)
    _unchanged(dox, wf)
    row = _redrive_scan(dox, wf)
    assert (row["current_state"], row["reason"]) == ("rejected", "infected")
    assert dox.objects() == []


@pytest.mark.parametrize("forgery", ["other_definition", "earlier_run", "later_run", "not_at_step"])
def test_forged_scan_deliveries_are_refused_before_anything_is_counted(dox, forgery):
    dox.stop_workers()
    wf = _parked_at_scan(dox, pdfs.eicar_pdf())
    if forgery == "other_definition":  # passes the task check against *its* definition
        sig = _sig(dox, "dox.noop", wf, "scan", "scan", digest=_other_definition(dox).digest)
    elif forgery == "earlier_run":
        sig = _sig(dox, "dox.scan", wf, "scan", "scan", run=0)
    elif forgery == "later_run":
        sig = _sig(dox, "dox.scan", wf, "scan", "scan", run=wf["run"] + 1)
    else:  # the store step, while the workflow is at scan
        sig = _sig(dox, "dox.store", wf, "store", "storage")
    dox.worker()
    sig.apply_async()
    _settle(dox)
    _unchanged(dox, wf)
    row = _redrive_scan(dox, wf)
    assert (row["current_state"], row["reason"]) == ("rejected", "infected")


def test_the_next_step_is_the_definitions_whatever_chain_the_message_carries(dox):
    """A genuine scan message whose chain skips store and recognize: the workflow still
    runs store and recognize, because the next step comes from the recorded definition."""
    dox.stop_workers()
    wf = _parked_at_scan(dox, pdfs.unique(801))
    from celery import chain

    dox.worker()
    chain(_sig(dox, "dox.scan", wf, "scan", "scan"), _sig(dox, "dox.publish", wf, "publish", "events"))()
    row = dox.wait([wf["workflow_id"]])[wf["workflow_id"]]
    assert row["current_state"] == "success"
    steps = [r["step"] for r in dox.rt.state.step_rows(wf["workflow_id"])]
    assert steps == ["validate", "scan", "store", "recognize", "publish"]
    assert len(dox.objects()) == 1


def test_canvas_and_foreign_tasks_are_refused_on_document_queues(dox, caplog):
    """celery.starmap would call a step's body inline, outside the runner's routing;
    celery.group would send whatever it lists. Neither may run on a document queue."""
    dox.stop_workers()
    wid = dox.submit(pdfs.unique(802))
    args = _take(dox, "validation")  # the genuine message's arguments
    validate = dox.app.signature("dox.validate", args=args, immutable=True)
    caplog.set_level(logging.ERROR, logger="dox.queues")
    dox.worker()
    dox.app.send_task("celery.starmap", kwargs={"task": dict(validate), "it": [args]}, queue="validation")
    dox.app.send_task("celery.group", args=([dict(validate)], None, "g-1", ()), queue="validation")
    dox.app.send_task("dox.submit", args=["x.pdf"], queue="validation")  # the old form
    _settle(dox)
    assert dox.rt.state.step_rows(wid) == []
    assert dox.rt.state.get_workflow(wid)["current_state"] == "queued"
    refused = [r.getMessage() for r in caplog.records if r.name == "dox.queues"]
    assert any("celery.starmap" in m for m in refused), refused
    assert any("celery.group" in m for m in refused), refused
    assert any("dox.submit" in m and "'intake'" in m for m in refused), refused
    assert not any(str(args) in m for m in refused)  # never the payload


def test_the_intake_worker_runs_nothing_but_submit(stack, harness_factory, tmp_path, caplog):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.pdf").write_bytes(pdfs.unique(803))
    h = harness_factory(stack.model_copy(update={"inbox_root": inbox}))
    wid = h.submit(pdfs.unique(804))
    args = _take(h, "validation")
    caplog.set_level(logging.ERROR, logger="dox.queues")
    h.worker(queues=["intake"])
    # The genuine step message pushed onto intake, claiming to be for validation.
    h.app.send_task("dox.validate", args=args, queue="intake", routing_key="validation")
    h.app.send_task("dox.submit", args=["a.pdf"], kwargs={"user": "svc"}, queue="intake")
    h.wait_until(lambda: _count(h) == 2, what="the submission")
    assert h.rt.state.step_rows(wid) == []
    assert any("dox.validate" in r.getMessage() and "intake" in r.getMessage() for r in caplog.records)


def _count(h: Any) -> int:
    from sqlalchemy import text

    with h.rt.state.engine.connect() as c:
        return int(c.execute(text("select count(*) from workflow_states")).scalar())


def test_a_worker_may_not_mix_intake_with_other_queues(stack, harness_factory):
    from dox_tasks.queue_policy import intake_mixing

    assert intake_mixing({"intake"}) is None
    assert intake_mixing({"validation", "scan"}) is None
    why = intake_mixing({"intake", "validation"})
    assert why and "dox worker -Q intake" in why


def test_dox_worker_refuses_intake_together_with_other_queues(stack, tmp_path):
    import services

    env = services.server_env(tmp_path, stack)
    done = services.dox(["worker", "-Q", "intake,validation", "-P", "solo"], env, tmp_path)
    assert done.returncode != 0
    assert "needs a worker of its own" in done.stderr and "Traceback" not in done.stderr
