"""Slots and catch-up as pure functions of a controlled clock (no sleeping until 9 AM)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import beat_schedule
from dox_tasks.definitions import load_all
from dox_tasks.jobs.slots import CatchUp, Job, decide, manual_key, parse_slot, slot_key
from dox_tasks.settings import Settings

SYNC = Job("sync_team_coordination", "0 9 * * *", "UTC", CatchUp.ONCE)
BACKUP = Job("backup_database", "0 2 * * *", "UTC", CatchUp.ONCE, deadline_s=79140)
REAPER = Job("reap_stuck_workflows", "*/5 * * * *", "UTC", CatchUp.SKIP)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "slot"),
    [
        ("2026-11-22T08:59:59", "2026-11-21T09:00:00Z"),
        ("2026-11-22T09:00:00", "2026-11-22T09:00:00Z"),
        ("2026-11-22T09:00:00.500000", "2026-11-22T09:00:00Z"),
        ("2026-11-22T23:59:59", "2026-11-22T09:00:00Z"),
    ],
)
def test_latest_slot_is_the_cron_time_at_or_before_now(now, slot):
    assert slot_key(SYNC.latest_slot(at(now))) == slot


def test_next_slot_and_a_local_timezone():
    assert slot_key(SYNC.next_slot(at("2026-11-22T09:00:00"))) == "2026-11-23T09:00:00Z"
    paris = Job("x", "0 9 * * *", "Europe/Paris", CatchUp.ONCE)
    assert slot_key(paris.latest_slot(at("2026-11-22T12:00:00"))) == "2026-11-22T08:00:00Z"  # CET
    assert slot_key(paris.latest_slot(at("2026-07-01T12:00:00"))) == "2026-07-01T07:00:00Z"  # CEST


def test_beat_down_across_the_9am_slot_runs_the_sync_once_on_restart():
    restart = at("2026-11-22T11:30:00")
    d = decide(SYNC, restart, recorded=False)
    assert d.fire and d.slot == "2026-11-22T09:00:00Z" and "catch-up" in d.why
    # The run is recorded: the next tick (or a second Beat) does not fire it again.
    assert not decide(SYNC, restart + timedelta(seconds=1), recorded=True).fire


def test_a_week_down_runs_only_the_latest_slot():
    d = decide(SYNC, at("2026-11-29T10:00:00"), recorded=False)
    assert d.fire and d.slot == "2026-11-29T09:00:00Z"


def test_skip_job_fires_within_grace_not_after():
    assert decide(REAPER, at("2026-11-22T10:01:30"), recorded=False, grace_s=120).fire
    late = decide(REAPER, at("2026-11-22T10:02:30"), recorded=False, grace_s=120)
    assert not late.fire and "past its deadline" in late.why


def test_backup_deadline_ends_its_day():
    assert decide(BACKUP, at("2026-11-22T23:58:00"), recorded=False).fire
    # After midnight the latest slot is tomorrow's 02:00... not yet: still 2026-11-22's, past deadline.
    assert not decide(BACKUP, at("2026-11-23T01:59:30"), recorded=False).fire


def test_after_a_redis_flush_only_once_jobs_without_a_record_fire():
    """Beat's memory is gone; the decision uses only the clock and Postgres' records."""
    now = at("2026-11-22T15:03:00")
    recorded = {"backup_database": True, "sync_team_coordination": False, "reap_stuck_workflows": False}
    fired = {j.name for j in (SYNC, BACKUP, REAPER) if decide(j, now, recorded[j.name]).fire}
    assert fired == {"sync_team_coordination"}


def test_manual_slots_never_use_up_a_cron_slot():
    key = manual_key(at("2026-11-22T09:00:00"))
    assert key.startswith("manual:") and key != "2026-11-22T09:00:00Z"
    assert parse_slot(key) is None
    assert parse_slot("2026-11-22T09:00:00Z") == at("2026-11-22T09:00:00")


def test_shipped_schedule_has_the_default_jobs():
    jobs = beat_schedule.build(load_all(Settings().definitions).values())
    expected = {
        "sync_team_coordination": ("0 9 * * *", "once"),
        "backup_database": ("0 2 * * *", "once"),
        "backup_config": ("30 2 * * *", "once"),
        "backup_documents": ("0 3 * * *", "once"),
        "reap_stuck_workflows": ("*/5 * * * *", "skip"),
        "maintenance_weekly": ("0 2 * * 0", "once"),
        "retention_cleanup": ("0 4 * * *", "once"),
    }
    assert set(jobs) == set(expected)
    for name, (cron, policy) in expected.items():
        assert (jobs[name].cron, jobs[name].catch_up.value, jobs[name].timezone) == (cron, policy, "UTC")


def test_no_catch_up_for_slots_before_the_first_beat_start():
    job = Job("sync", "0 9 * * *", catch_up=CatchUp.ONCE)
    nine = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    first = nine + timedelta(hours=1)  # the install's first Beat started at 10:00
    late = decide(job, first + timedelta(minutes=5), recorded=False, first_start=first)
    assert not late.fire and "before the first Beat start (2026-11-23T10:00:00Z)" in late.why
    # On time is not catch-up: a first start within the grace still runs its slot.
    assert decide(job, nine + timedelta(seconds=30), False, first_start=nine + timedelta(seconds=20)).fire
    # The next day's slot is after the first start: caught up once after an outage.
    next_day = decide(job, nine + timedelta(days=1, hours=3), recorded=False, first_start=first)
    assert next_day.fire and next_day.why.startswith("catch-up")
