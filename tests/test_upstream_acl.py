"""The upstream Redis user can push submissions onto `intake` and do nothing else.

The broker Redis is started by the very entrypoint docker-compose.yml runs
(`deploy/redis-entrypoint.sh`, which writes the ACL into redis.conf), on a free port.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import pdfs
import pytest
import redis
import services
from celery import Celery

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
ADMIN_PW = 'admin pw with "quotes" and \\'
UPSTREAM_PW = "upstream-secret"


@pytest.fixture
def acl_redis(tmp_path):
    """(port, prefix) of a redis-server started by the shipped entrypoint."""
    if shutil.which("redis-server") is None:
        services.unavailable("redis-server", "not installed (Debian: apt-get install redis-server)")
    port = services.free_port()
    prefix = f"t{port}-broker:"
    env = {
        **os.environ,
        "REDIS_PASSWORD": ADMIN_PW,
        "DOX_UPSTREAM_REDIS_PASSWORD": UPSTREAM_PW,
        "DOX_BROKER_KEY_PREFIX": prefix,
        "REDIS_CONF_DIR": str(tmp_path / "conf"),
        "REDIS_LAUNCHER": "",
    }
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--appendonly", "no"]
    proc = subprocess.Popen(
        ["/bin/sh", str(ROOT / "deploy/redis-entrypoint.sh"), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    admin = redis.Redis(host="127.0.0.1", port=port, password=ADMIN_PW, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with suppress(redis.ConnectionError):
            admin.ping()
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(
            f"the entrypoint's redis-server did not start: {proc.stderr.read() if proc.stderr else ''}"
        )
    yield port, prefix
    proc.terminate()
    proc.wait(10)


def _url(user: str, password: str, port: int) -> str:
    from urllib.parse import quote

    return f"redis://{quote(user)}:{quote(password, safe='')}@127.0.0.1:{port}/0"


def test_secrets_are_in_the_config_file_not_on_the_command_line(acl_redis, tmp_path):
    port, _ = acl_redis
    conf = tmp_path / "conf" / "redis.conf"
    assert conf.stat().st_mode & 0o077 == 0  # 0600
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert UPSTREAM_PW not in out and "admin pw" not in out


def test_the_upstream_user_can_submit_and_nothing_else(acl_redis):
    port, prefix = acl_redis
    upstream = Celery(broker=_url("dox-upstream", UPSTREAM_PW, port))
    upstream.conf.broker_transport_options = {"global_keyprefix": prefix}
    upstream.send_task("dox.submit", args=["a.pdf"], kwargs={"user": "billing"}, queue="intake")
    upstream.send_task("dox.submit", args=["b.pdf"], kwargs={"user": "billing"}, queue="intake", priority=5)
    admin = redis.Redis(host="127.0.0.1", port=port, password=ADMIN_PW)
    assert admin.llen(f"{prefix}intake") == 1 and admin.llen(f"{prefix}intake\x06\x163") == 1

    r = redis.Redis.from_url(_url("dox-upstream", UPSTREAM_PW, port))
    refused = {
        "read the intake queue": ["RPOP", f"{prefix}intake"],
        "read a step queue": ["LRANGE", f"{prefix}scan", "0", "-1"],
        "push to a step queue": ["LPUSH", f"{prefix}validation", "{}"],
        "push without the prefix": ["LPUSH", "intake", "{}"],
        "subscribe": ["SUBSCRIBE", "dox.workflow.success"],
        "list keys": ["KEYS", "*"],
        "read the event stream": ["XRANGE", "dox:events", "-", "+"],
        "turn a priority list into a set": ["SADD", f"{prefix}intake\x06\x163", "x"],
        "write another intake-like key": ["LPUSH", f"{prefix}intake-junk", "x" * 1000],
        "push onto a binding set": ["LPUSH", f"{prefix}_kombu.binding.intake", "x"],
    }
    for what, command in refused.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*command)
            pytest.fail(f"the upstream user could {what}")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(_url("dox-upstream", "wrong", port)).ping()


def test_a_step_task_pushed_onto_intake_is_rejected_unrun(
    acl_redis, pg_url, clamd_url, tmp_path, harness_factory, caplog
):
    """What the upstream user *can* push — a forged step message on intake — runs nothing."""
    port, prefix = acl_redis
    from conftest import make_settings

    settings = make_settings(
        tmp_path,
        broker_url=_url("default", ADMIN_PW, port),
        database_url=pg_url,
        clamd_url=clamd_url,
        broker_key_prefix=prefix,
    )
    h = harness_factory(settings)
    wid = h.submit(pdfs.unique(950))
    wf = h.rt.state.get_workflow(wid)
    upstream = Celery(broker=_url("dox-upstream", UPSTREAM_PW, port))
    upstream.conf.broker_transport_options = {"global_keyprefix": prefix}
    caplog.set_level(logging.ERROR, logger="dox.queues")
    upstream.send_task(
        "dox.validate",
        args=[wid, "validate", wf["definition_hash"], 1],
        queue="intake",
        routing_key="validation",
    )
    h.worker(queues=["intake"])
    h.wait_until(lambda: any("dox.validate" in r.getMessage() for r in caplog.records), what="the refusal")
    assert h.rt.state.step_rows(wid) == []
    assert h.rt.state.get_workflow(wid)["current_state"] == "queued"


def test_nothing_the_upstream_user_can_push_stops_a_prefork_intake_worker(acl_redis, pg_url, tmp_path):
    """Messages that killed the prefork intake worker (and came back at each restart), or
    made it publish elsewhere with DOX's login, are refused; it goes on taking submissions."""
    port, prefix = acl_redis
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.pdf").write_bytes(pdfs.unique(951))
    env = services.clean_env(
        tmp_path,
        DOX_BROKER_URL=_url("default", ADMIN_PW, port),
        DOX_DATABASE_URL=pg_url,
        DOX_BROKER_KEY_PREFIX=prefix,
        DOX_NAMESPACE=f"ns{port}",
        DOX_INBOX_ROOT=str(inbox),
        CLAMAV_ENABLED="false",
    )
    assert services.dox(["db", "upgrade"], env, tmp_path).returncode == 0
    log = tmp_path / "worker.log"
    worker = services.spawn_dox(["worker", "-Q", "intake", "-c", "1", "-n", "intake@%h"], env, log)
    try:
        upstream = Celery(broker=_url("dox-upstream", UPSTREAM_PW, port))
        upstream.conf.broker_transport_options = {"global_keyprefix": prefix}
        raw = redis.Redis.from_url(_url("dox-upstream", UPSTREAM_PW, port))
        submit = {"args": ["a.pdf"], "kwargs": {"user": "svc"}, "queue": "intake"}
        upstream.send_task("dox.submit", soft_time_limit="x", **submit)  # killed the pool's timer
        upstream.send_task("dox.submit", time_limit=10**9, **submit)
        upstream.send_task("dox.submit", countdown=3600 * 24 * 365, **submit)
        upstream.send_task("dox.submit", task_id={"an": "object"}, **submit)  # type: ignore[arg-type]
        fwd = upstream.signature("dox.scan", args=("w", "scan", "f" * 64, 1), queue="scan")
        upstream.send_task("dox.submit", link=fwd, **submit)  # would be sent with DOX's login
        upstream.send_task("dox.submit", link_error=fwd, **submit)
        for item in (b"not json", b'"a string"', b"[1, 2]", b'{"body": 1}'):
            raw.lpush(f"{prefix}intake", item)
        # Links in the headers instead of the body (Celery reads both), and envelopes whose
        # task name Celery cannot look up (they held prefetch slots for good).
        for headers in ({"callbacks": [dict(fwd)]}, {"chain": [dict(fwd)]}, {"errbacks": [dict(fwd)]}):
            raw.lpush(f"{prefix}intake", _envelope(headers, [["a.pdf"], {"bogus": 1}, {}]))
        for task in (["dox.submit"], {"a": 1}, ["x"]):
            raw.lpush(f"{prefix}intake", _envelope({"task": task}, [["a.pdf"], {}, {}]))
        raw.lpush(f"{prefix}intake", _envelope({"task": "nope", "id": None}, [[], {}, {}]))
        upstream.send_task("dox.submit", **{**submit, "kwargs": {"user": "after-the-junk"}})
        admin = redis.Redis(host="127.0.0.1", port=port, password=ADMIN_PW)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _users(pg_url) != ["after-the-junk"]:
            assert worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert _users(pg_url) == ["after-the-junk"], log.read_text()[-3000:]
        assert worker.poll() is None
        assert admin.llen(f"{prefix}scan") == 0  # nothing forwarded onto a step queue
        text = log.read_text()
        assert "Unrecoverable error" not in text
        assert text.count("refused task dox.submit") == 8  # 5 sent by Celery, 3 written by hand
        assert text.count("not a task message") == 9  # 4 junk items, 5 envelopes with bad ids/names
        assert admin.zcard(f"{prefix}unacked_index") == 0  # no slot held by a message nobody can take
    finally:
        services.kill_group(worker)


def _envelope(headers: dict, body: list) -> bytes:
    """A raw kombu envelope for ``intake``, as a hand-written sender would push it."""
    import base64
    import json
    import uuid

    tag = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": "dox.submit", "id": tag, **headers},
            "properties": {
                "correlation_id": tag,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "intake"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": tag,
            },
        }
    ).encode()


def _users(url: str) -> list[str]:
    from sqlalchemy import create_engine, text

    from dox_tasks.db.engine import normalize_url

    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as c:
            return [r[0] for r in c.execute(text("select user_id from workflow_states"))]
    finally:
        engine.dispose()
