"""Beat with real processes: one sender, kill -9 of the holder, a Redis flush and restart.

Each test starts its own redis-server (it is flushed and its lock key killed) and
its own Postgres database; Beat runs as `dox beat` subprocesses. No worker is
needed: a run is recorded (queued) the moment Beat starts it, which is what the
exactly-once guarantee is about.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from services import RedisServer, clean_env, kill_group, spawn_dox
from sqlalchemy import create_engine, text

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.integration]


def job_yaml(name: str, cron: str, catch_up: str) -> str:
    return f"""name: {name}
version: "1"
trigger: {{type: schedule, cron: "{cron}", timezone: UTC, catch_up: {catch_up}}}
steps:
  - {{name: reap, task: dox.jobs.reap}}
"""


def write_defs(folder: Path, jobs: dict[str, tuple[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (cron, policy) in jobs.items():
        (folder / f"{name}.yaml").write_text(job_yaml(name, cron, policy))
    return folder


def runs(pg_url: str) -> list[tuple[str, str]]:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT rule_name, schedule_slot FROM workflow_states ORDER BY created_at")
        ).all()
    engine.dispose()
    return [(r[0], r[1]) for r in rows]


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def beat_env(tmp_path: Path, pg_url: str, redis_url: str, defs: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        tmp_path,
        DOX_BROKER_URL=redis_url,
        DOX_DATABASE_URL=pg_url,
        DOX_DEFS_DIR=str(defs),
        DOX_NAMESPACE="beattest",
        **extra,
    )


def migrate(env: dict[str, str], tmp_path: Path) -> None:
    from services import dox

    done = dox(["db", "upgrade"], env, tmp_path)
    assert done.returncode == 0, done.stderr


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_of_the_lock_holder_5s_before_a_slot_still_fires_it_once(tmp_path, pg_url, private_redis):
    defs = write_defs(tmp_path / "defs", {"every_20s": ("* * * * * */20", "skip")})
    env = beat_env(tmp_path, pg_url, private_redis.url, defs, DOX_BEAT_LOCK_TTL="6")
    migrate(env, tmp_path)
    lock = redis.Redis.from_url(private_redis.url)
    first = spawn_dox(["beat"], env, tmp_path / "beat1.log")
    wait_for(lambda: lock.get("beattest:beat:lock") is not None, 30, "the first beat to take the lock")
    holder_token = lock.get("beattest:beat:lock")
    second = spawn_dox(["beat"], env, tmp_path / "beat2.log")
    try:
        time.sleep(2)
        assert lock.get("beattest:beat:lock") == holder_token  # the standby waits
        # Next slot at least 8 s away, so the kill lands 5 s before it.
        now = datetime.now(UTC)
        slot = (now + timedelta(seconds=8)).replace(microsecond=0)
        slot += timedelta(seconds=(20 - slot.second % 20) % 20)
        time.sleep(max(0.0, (slot - timedelta(seconds=5) - datetime.now(UTC)).total_seconds()))
        kill_group(first)  # SIGKILL: no goodbye, the lock is not released
        key = slot.strftime("%Y-%m-%dT%H:%M:%SZ")
        wait_for(
            lambda: ("every_20s", key) in runs(pg_url),
            6 + 20,
            f"the standby to fire slot {key} (lock ttl 6 s)",
        )
        taken_by = lock.get("beattest:beat:lock")
        assert taken_by is not None and taken_by != holder_token
        time.sleep(3)
    finally:
        kill_group(second)
    slots = [s for name, s in runs(pg_url) if name == "every_20s"]
    assert slots.count(key) == 1
    assert len(slots) == len(set(slots)), slots  # no slot twice, before or after the take-over
    log2 = (tmp_path / "beat2.log").read_text()
    assert "holds the scheduler lock" in log2 and f"slot {key}: started" in log2


def test_redis_flush_and_beat_restart_fire_nothing_twice_and_nothing_out_of_policy(
    tmp_path, pg_url, private_redis
):
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    daily = f"{hour_ago.minute} {hour_ago.hour} * * *"
    defs = write_defs(
        tmp_path / "defs",
        {
            "missed_once": (daily, "once"),  # missed an hour ago, catch-up once
            "missed_skip": (daily, "skip"),  # missed an hour ago, no catch-up
            "done_once": (f"{two_hours_ago.minute} {two_hours_ago.hour} * * *", "once"),
            "every_10s": ("* * * * * */10", "skip"),
        },
    )
    env = beat_env(tmp_path, pg_url, private_redis.url, defs)
    migrate(env, tmp_path)
    # done_once already ran for its latest slot (say, before an earlier outage).
    done_slot = two_hours_ago.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    from dox_tasks import runtime
    from dox_tasks.db import records
    from dox_tasks.jobs.launch import start_run
    from dox_tasks.settings import Settings

    rt = runtime.configure(
        Settings().model_copy(
            update={
                "broker_url": private_redis.url,
                "database_url": pg_url,
                "defs_dir": defs,
                "namespace": "beattest",
                "home": tmp_path / "home",
            }
        )
    )
    assert start_run(rt, "done_once", done_slot).created
    # Not a fresh install: a Beat ran here before these slots (so missed ones are caught up).
    records.record_beat_start(rt.state, "an earlier beat", datetime.now(UTC) - timedelta(hours=3))
    runtime.configure(Settings())

    first = spawn_dox(["beat"], env, tmp_path / "beat1.log")
    try:
        wait_for(lambda: "missed_once" in {n for n, _ in runs(pg_url)}, 30, "the catch-up run")
        wait_for(lambda: sum(n == "every_10s" for n, _ in runs(pg_url)) >= 1, 20, "an on-time run")
    finally:
        kill_group(first)
    private_redis.flushall()  # the lock, the queued messages, everything Redis knew
    second = spawn_dox(["beat"], env, tmp_path / "beat2.log")
    try:
        time.sleep(25)  # two or three every_10s slots and plenty of ticks for the rest
    finally:
        kill_group(second)
    recorded = runs(pg_url)
    names = [n for n, _ in recorded]
    assert names.count("missed_once") == 1
    assert names.count("missed_skip") == 0
    assert names.count("done_once") == 1
    every = [s for n, s in recorded if n == "every_10s"]
    assert len(every) >= 3 and len(every) == len(set(every)), every
    log2 = (tmp_path / "beat2.log").read_text().splitlines()
    assert not [line for line in log2 if "missed_once" in line and "started" in line]
    assert [line for line in log2 if "missed_skip" in line and "past its deadline" in line]


def test_the_first_beat_ever_started_fires_nothing_as_catch_up(tmp_path, pg_url, private_redis):
    """A fresh install: jobs whose latest slot passed before Beat first started wait for
    their next slot (README: "runs once on restart" is about every later restart)."""
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    daily = f"{hour_ago.minute} {hour_ago.hour} * * *"
    defs = write_defs(
        tmp_path / "defs", {"missed_once": (daily, "once"), "every_10s": ("* * * * * */10", "skip")}
    )
    env = beat_env(tmp_path, pg_url, private_redis.url, defs, DOX_BEAT_LOCK_TTL="3")
    migrate(env, tmp_path)
    for n, log in enumerate(("beat1.log", "beat2.log")):  # the first start, then a restart
        beat = spawn_dox(["beat"], env, tmp_path / log)
        logged = tmp_path / log

        def seen(n: int = n, logged: Path = logged) -> bool:  # the on-time run and the refusal
            told = logged.exists() and "job missed_once slot" in logged.read_text()
            return told and sum(r == "every_10s" for r, _ in runs(pg_url)) > n

        try:
            wait_for(seen, 25, "an on-time run and the missed job's log line")
        finally:
            kill_group(beat)
    assert "missed_once" not in {name for name, _ in runs(pg_url)}
    for log in ("beat1.log", "beat2.log"):
        text = (tmp_path / log).read_text()
        assert "missed_once" in text and "before the first Beat start" in text and "no catch-up" in text


def test_a_second_run_for_the_same_slot_is_refused_whatever_sent_it(stack, harness_factory):
    from dox_tasks.jobs.launch import run_now, start_run

    h = harness_factory(stack)
    first = start_run(h.rt, "backup_config", "2026-11-22T02:30:00Z")
    again = start_run(h.rt, "backup_config", "2026-11-22T02:30:00Z", actor="someone-else")
    assert first.created and not again.created and again.workflow_id == first.workflow_id
    manual = run_now(h.rt, "backup_config", actor="operator")
    assert manual.created and manual.slot.startswith("manual:")
    # The manual run did not use up a slot: the next night's is still free.
    assert start_run(h.rt, "backup_config", "2026-11-23T02:30:00Z").created
    with pytest.raises(Exception, match="unknown scheduled job"):
        start_run(h.rt, "process_document_upload", "2026-11-22T02:30:00Z")


def test_dox_schedule_lists_every_job_with_its_next_run(tmp_path, stack, harness_factory):
    import json

    from services import dox, server_env

    from dox_tasks.jobs.launch import start_run

    h = harness_factory(stack)
    start_run(h.rt, "backup_database", "2026-11-22T02:00:00Z")
    done = dox(["schedule", "--json"], server_env(tmp_path, stack), tmp_path)
    assert done.returncode == 0, done.stderr
    jobs = {j["name"]: j for j in map(json.loads, done.stdout.splitlines())}
    assert set(jobs) == {
        "sync_team_coordination",
        "backup_database",
        "backup_config",
        "backup_documents",
        "maintenance_weekly",
        "reap_stuck_workflows",
        "retention_cleanup",
    }
    sync = jobs["sync_team_coordination"]
    assert (sync["cron"], sync["timezone"], sync["catch_up"]) == ("0 9 * * *", "UTC", "once")
    assert sync["next_run"].endswith("T09:00:00Z") and sync["last_run"] is None
    assert jobs["backup_database"]["last_run"]["slot"] == "2026-11-22T02:00:00Z"
    assert jobs["backup_database"]["last_run"]["status"] == "queued"
    ran_at = jobs["backup_database"]["last_run"]["started_at"]
    table = dox(["schedule"], server_env(tmp_path, stack, COLUMNS="250"), tmp_path)
    assert table.returncode == 0 and "reap_stuck_workflows" in table.stdout
    # The slot a run belongs to and when it actually ran are both shown; no Python None.
    line = next(x for x in table.stdout.splitlines() if "backup_database" in x)
    assert "2026-11-22T02:00:00Z" in line and ran_at in line, table.stdout
    assert "ran at" in table.stdout and "None" not in table.stdout
