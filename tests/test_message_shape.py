"""What a task message may carry (pure unit tests of dox_tasks.message_shape).

The real-worker tests are in test_upstream_acl.py (a prefork intake worker survives
each of these) and test_forged_messages.py; here each rule is pinned down on its own.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dox_tasks.message_shape import check

DIGEST = "d" * 64
STEP_ARGS = ["0b7e8f2a-1c1d-4e3b-9a55-3f6f0a1b2c3d", "scan", DIGEST, 1]


class Message:
    """The attributes of a kombu message that the check reads and writes."""

    def __init__(self, headers: Any = None, payload: Any = None):
        self.headers = {"id": "t-1", "task": "dox.scan"} if headers is None else headers
        self.payload = [STEP_ARGS, {}, {}] if payload is None else payload
        self.body = json.dumps(self.payload).encode()
        self._decoded_cache = self.payload


def verdict(message: Message, task: str = "dox.scan", queue: str = "scan") -> str | None:
    return check(message, task, queue, max_time_limit=300, max_eta_s=3600)


def test_a_genuine_step_message_passes_unchanged():
    m = Message(headers={"id": "t-1", "task": "dox.scan", "timelimit": [285, 300], "retries": 0})
    body = m.body
    assert verdict(m) is None and m.body == body


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ("a string", "headers are not an object"),
        ({"id": {"an": "object"}}, "'id' is not a short string"),
        ({"id": "x" * 500}, "'id' is not a short string"),
        ({"id": "t", "timelimit": ["x", None]}, "time limits"),
        ({"id": "t", "timelimit": [0.004, None]}, "time limits"),
        ({"id": "t", "timelimit": [None, 10**9]}, "time limits"),
        ({"id": "t", "timelimit": [True, None]}, "time limits"),
        ({"id": "t", "timelimit": "300"}, "not [soft, hard]"),
        ({"id": "t", "retries": "0"}, "'retries' is not a count"),
        ({"id": "t", "eta": "tomorrow"}, "not an ISO 8601 time"),
        ({"id": "t", "eta": (datetime.now(UTC) + timedelta(days=1)).isoformat()}, "beyond the broker"),
        ({"id": "t", "argsrepr": "x" * 5000}, "'argsrepr'"),
    ],
)
def test_headers_celery_would_choke_on_are_refused(headers, why):
    assert why in (verdict(Message(headers=headers)) or "")


def test_a_retry_eta_within_the_visibility_timeout_passes():
    eta = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    assert verdict(Message(headers={"id": "t", "eta": eta})) is None


@pytest.mark.parametrize(
    "payload",
    ["a string", [1, 2], {"args": [], "kwargs": {}}, [STEP_ARGS, [], {}], [STEP_ARGS, {}, None]],
)
def test_bodies_that_are_not_protocol_2_are_refused(payload):
    assert "protocol 2" in (verdict(Message(payload=payload)) or "")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (STEP_ARGS[:3], {}),
        (STEP_ARGS, {"run": 2}),
        (["wf\x00", "scan", DIGEST, 1], {}),
        (["wf", "scan", "f" * 63, 1], {}),
        (["wf", "scan", DIGEST, 0], {}),
        (["wf", "scan", DIGEST, 2**40], {}),
        (["wf", "scan", DIGEST, "1"], {}),
        (["wf", {"step": 1}, DIGEST, 1], {}),
    ],
)
def test_step_arguments_of_another_shape_are_refused(args, kwargs):
    assert verdict(Message(payload=[args, kwargs, {}])) is not None


def test_links_and_chains_are_dropped_on_step_queues():
    link = {"task": "dox.scan", "args": STEP_ARGS, "options": {"queue": "scan"}}
    m = Message(
        payload=[STEP_ARGS, {}, {"callbacks": [link], "errbacks": [link], "chain": [link], "chord": link}]
    )
    assert verdict(m) is None
    args, kwargs, embed = json.loads(m.body)
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert m._decoded_cache[2] == embed


def test_the_sync_probe_keeps_its_chord():
    chord = {"task": "dox.sync.collect", "args": ["wf"]}
    m = Message(
        headers={"id": "t", "task": "dox.sync.probe"}, payload=[["wf", "svc01"], {}, {"chord": chord}]
    )
    assert verdict(m, "dox.sync.probe", "coordination") is None
    assert json.loads(m.body)[2]["chord"] == chord


@pytest.mark.parametrize("embed", [{"callbacks": [{"task": "dox.scan"}]}, {"chain": [{"task": "x"}]}])
def test_a_submission_with_links_or_an_eta_is_refused(embed):
    submit = [["a.pdf"], {"user": "svc"}, embed]
    assert "a submission runs alone" in (verdict(Message(payload=submit), "dox.submit", "intake") or "")
    eta = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    later = Message(headers={"id": "t", "eta": eta}, payload=[["a.pdf"], {}, {}])
    assert "a submission runs now" in (verdict(later, "dox.submit", "intake") or "")


def test_chord_unlock_may_only_finish_the_team_sync():
    ok = [["g-1", {"task": "dox.sync.collect", "args": ["wf"]}], {}, {}]
    bad = [["g-1", {"task": "dox.scan", "args": STEP_ARGS}], {}, {}]
    assert verdict(Message(payload=ok), "celery.chord_unlock", "operations") is None
    assert "team sync" in (verdict(Message(payload=bad), "celery.chord_unlock", "operations") or "")


@pytest.mark.parametrize("key", ["callbacks", "errbacks", "chain", "chord", "group", "group_index"])
def test_links_and_chord_membership_in_the_headers_count_too(key):
    value = [{"task": "dox.scan"}] if key in ("callbacks", "errbacks", "chain") else "g-1"
    submit = Message(headers={"id": "t", "task": "dox.submit", key: value}, payload=[["a.pdf"], {}, {}])
    assert "headers carry" in (verdict(submit, "dox.submit", "intake") or "")
    step = Message(headers={"id": "t", "task": "dox.scan", key: value})
    assert verdict(step) is None and step.headers[key] is None


def test_the_probe_keeps_its_group_in_the_headers():
    probe = Message(headers={"id": "t", "group": "g-1", "group_index": 3}, payload=[["wf", "svc01"], {}, {}])
    assert verdict(probe, "dox.sync.probe", "coordination") is None
    assert (probe.headers["group"], probe.headers["group_index"]) == ("g-1", 3)


def test_an_embed_with_other_keys_is_refused():
    # Celery applies the embed over the request: {"id": …} would rename the task.
    assert "embed holds more" in (verdict(Message(payload=[STEP_ARGS, {}, {"id": "x"}])) or "")


def test_a_submission_may_not_ask_for_its_result_to_be_stored():
    m = Message(
        headers={"id": "chosen", "task": "dox.submit", "ignore_result": False}, payload=[["a"], {}, {}]
    )
    assert verdict(m, "dox.submit", "intake") is not None
