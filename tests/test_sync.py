"""The team coordination sync against fake health endpoints on loopback, with real workers.

The checks run on the ``coordination`` queue, served (as in production) by a
threads worker with a slot per service; everything else by a solo worker.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
import yaml
from fakehealth import FakeHealth, refused_url
from services import dox, kill_group, server_env, spawn_dox

from dox_tasks.contract import QUEUES
from dox_tasks.jobs.launch import run_now
from dox_tasks.jobs.sync.run import SERVICE_SCHEMA

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.integration]

TEAMS = ["platform", "infrastructure", "documents", "recognition", "security", "data", "frontend"]


@pytest.fixture
def fake():
    server = FakeHealth().start()
    yield server
    server.stop()


def teams_file(tmp_path, fake, overrides: dict[str, str], **limits):  # type: ignore[no-untyped-def]
    """20 services over 7 teams; service-N answers ok in 200 ms unless overridden."""
    services = []
    for n in range(20):
        name = f"svc{n:02d}"
        services.append(
            {
                "name": name,
                "health_url": overrides.get(name, fake.url("/ok?ms=200")),
                "team": TEAMS[n % 7],
                "depended_on_by": [TEAMS[(n + 1) % 7]],
            }
        )
    doc = {
        "check_timeout_s": 2,
        "slow_ms": 1000,
        "sync_deadline_s": 20,
        "escalate_after_s": 3600,
        **limits,
        "teams": [{"name": t} for t in TEAMS],
        "services": services,
    }
    path = tmp_path / "teams.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def checks_worker(tmp_path, request):  # type: ignore[no-untyped-def]
    """Start the production shape of the coordination worker: `dox worker -P threads -c 21`."""
    procs = []

    def start(h) -> None:  # type: ignore[no-untyped-def]
        env = server_env(
            tmp_path,
            h.settings,
            DOX_HOME=str(h.settings.home),
            DOX_TEAMS_FILE=str(h.settings.teams_file),
        )
        name = f"coord-{h.settings.namespace}@localhost"
        args = ["worker", "-Q", "coordination", "-P", "threads", "-c", "21", "-n", name]
        procs.append(spawn_dox([*args, "--without-mingle", "--without-gossip"], env, tmp_path / "coord.log"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if name in (h.app.control.inspect(timeout=0.5).ping() or {}):
                break
        else:
            raise AssertionError((tmp_path / "coord.log").read_text()[-2000:])
        h.worker(queues=[q for q in QUEUES if q not in ("coordination", "intake")])

    yield start
    for proc in procs:
        kill_group(proc, signal.SIGTERM)


def test_sync_classifies_every_answer_and_updates_banks_and_events(
    stack, harness_factory, tmp_path, fake, checks_worker
):
    path = teams_file(
        tmp_path,
        fake,
        {
            "svc01": fake.url("/slow?ms=1300"),
            "svc02": fake.url("/error"),
            "svc03": refused_url(),
            "svc04": fake.url("/hang"),
            "svc05": fake.url("/text"),
            "svc06": fake.url("/degraded"),
        },
    )
    settings = stack.model_copy(update={"teams_file": path})
    h = harness_factory(settings)
    banks = settings.memory_banks
    banks.mkdir(parents=True, exist_ok=True)
    (banks / "TEAM_platform.json").write_text("{ not json")  # a corrupt bank
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    (banks / "SERVICE_svc02.json").write_text(
        json.dumps({"schema": SERVICE_SCHEMA, "status": "down", "unhealthy_since": two_days_ago})
    )
    listener = redis.Redis.from_url(settings.broker_url).pubsub()
    listener.subscribe(f"{settings.namespace}.workflow.coordination.sync_completed")
    checks_worker(h)

    wid = run_now(h.rt, "sync_team_coordination", actor="test").workflow_id
    row = h.wait([wid], 60)[wid]
    assert row["current_state"] == "success", row["detail"]
    result = row["result"]
    services = result["services"]
    assert len(services) == 20
    expect = {
        "svc00": ("up", None),
        "svc01": ("degraded", "slow"),
        "svc02": ("down", "HTTP 500"),
        "svc03": ("down", "connection refused"),
        "svc04": ("down", "no answer within 2s"),
        "svc05": ("degraded", "not JSON"),
        "svc06": ("degraded", "reports status 'degraded'"),
    }
    for name, (status, cause) in expect.items():
        got = services[name]
        assert got["status"] == status, (name, got)
        assert (cause is None and got["cause"] is None) or cause in got["cause"], (name, got)
    not_up = {n: s for n, s in services.items() if n >= "svc07" and s["status"] != "up"}
    assert not not_up, not_up
    # Concurrent: the wall time is about one timeout, far below the sum of the latencies.
    latencies = sum(s["latency_ms"] or 0 for s in services.values()) / 1000
    assert result["duration_s"] < latencies * 0.6, (result["duration_s"], latencies)
    assert result["deadline_passed"] is False and result["unanswered"] == []

    teams = result["teams"]
    # svcNN is depended on by TEAMS[(N+1) % 7]: svc01..06 block teams 2..7 (index 1..6).
    for n in range(1, 7):
        team = TEAMS[(n + 1) % 7]
        assert teams[team]["blocked"], team
        assert f"svc{n:02d}" in [b["service"] for b in teams[team]["blockers"]]
    assert not teams["infrastructure"]["blocked"]  # depends on svc00, svc07, svc14: all up
    # svc02 has been down for two days (its bank says so): its dependents escalate.
    assert teams["recognition"]["escalated"] and not teams["security"]["escalated"]

    files = sorted(p.name for p in banks.glob("*.json"))
    assert sum(f.startswith("TEAM_") for f in files) == 7
    assert sum(f.startswith("SERVICE_") for f in files) == 20
    assert "SUPERVISOR.json" in files
    assert list(banks.glob("TEAM_platform.json.corrupt-*")), "the corrupt bank is kept aside"
    team = json.loads((banks / "TEAM_recognition.json").read_text())
    assert team["schema"] == "dox.memory-bank.team/1" and team["blocked"] and team["escalated"]
    svc = json.loads((banks / "SERVICE_svc02.json").read_text())
    assert svc["unhealthy_since"] == two_days_ago and svc["status"] == "down"
    supervisor = json.loads((banks / "SUPERVISOR.json").read_text())
    assert supervisor["last_sync"]["workflow_id"] == wid
    assert supervisor["last_sync"]["services"] == {"up": 14, "degraded": 3, "down": 3}

    types = [e["type"] for e in h.rt.state.events(wid)]
    assert types.count("coordination.check") == 20
    assert types.count("coordination.team_blocked") == 6
    assert "coordination.escalated" in types and "coordination.sync_completed" in types
    stream = redis.Redis.from_url(settings.broker_url).xrange(f"{settings.namespace}:events")
    assert any(fields[b"type"] == b"coordination.sync_completed" for _, fields in stream)
    message = None
    for _ in range(50):
        message = listener.get_message(timeout=0.1)
        if message and message["type"] == "message":
            break
    assert message and json.loads(message["data"])["workflow_id"] == wid


def test_a_hung_check_past_the_sync_deadline_does_not_hang_the_sync(
    stack, harness_factory, tmp_path, fake, checks_worker
):
    path = teams_file(tmp_path, fake, {"svc04": fake.url("/hang")}, check_timeout_s=30, sync_deadline_s=4)
    h = harness_factory(stack.model_copy(update={"teams_file": path}))
    checks_worker(h)
    wid = run_now(h.rt, "sync_team_coordination", actor="test").workflow_id
    row = h.wait([wid], 30)[wid]
    assert row["current_state"] == "success", row["detail"]
    result = row["result"]
    svc04 = result["services"]["svc04"]
    assert svc04["status"] == "down" and "before the sync deadline" in svc04["cause"], svc04
    assert sum(s["status"] == "up" for s in result["services"].values()) == 19
    assert result["duration_s"] < 30  # the deadline (4 s), not the check timeout (30 s)


def test_dox_sync_run_json(stack, harness_factory, tmp_path, fake, checks_worker):
    path = teams_file(tmp_path, fake, {"svc02": fake.url("/error")})
    h = harness_factory(stack.model_copy(update={"teams_file": path}))
    checks_worker(h)
    env = server_env(tmp_path, stack, DOX_TEAMS_FILE=str(path), DOX_HOME=str(stack.home))
    done = dox(["sync", "run", "--wait", "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "success" and result["slot"].startswith("manual:")
    assert set(result["services"]["svc02"]) == {"status", "latency_ms", "cause"}
    assert set(result["teams"]["documents"]) >= {"blocked", "escalated", "blockers"}
    assert isinstance(result["duration_s"], float)


def test_dox_sync_run_wait_exits_0_when_the_sync_ran_whatever_it_found(
    stack, harness_factory, tmp_path, fake, checks_worker
):
    """Every service down is a finding, not a failure of the sync: exit 0, and the summary
    says the run succeeded and which services are down."""
    path = teams_file(tmp_path, fake, {f"svc{n:02d}": refused_url() for n in range(20)})
    h = harness_factory(stack.model_copy(update={"teams_file": path}))
    checks_worker(h)
    env = server_env(tmp_path, stack, DOX_TEAMS_FILE=str(path), DOX_HOME=str(stack.home), COLUMNS="200")
    done = dox(["sync", "run", "--wait"], env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "success" in done.stdout and "down" in done.stdout and "svc19" in done.stdout, done.stdout
