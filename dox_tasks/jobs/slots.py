"""Cron slots and the catch-up decision, as pure functions of the clock.

A *slot* is the cron time a run belongs to (09:00 UTC on a given day), written
as ISO 8601 UTC (``2026-11-22T09:00:00Z``). Beat asks one question per job and
tick: "is the latest slot at or before now due?" The answer depends only on
the job's policy, the time and whether Postgres has a run for that slot — never
on what Beat remembers, because Redis (where Beat's memory would live) may be
flushed. Only the latest slot is ever considered, so a Beat that was down for a
week runs a ``once`` job once, not seven times; and only slots after the first Beat
start this database has recorded are caught up, so a fresh install fires nothing late.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from croniter import croniter

#: How late a ``skip`` job may still start by default (lock take-over plus margin).
DEFAULT_GRACE_S = 120


class CatchUp(StrEnum):
    ONCE = "once"
    SKIP = "skip"


@dataclass(frozen=True)
class Job:
    """One scheduled definition, as Beat sees it."""

    name: str
    cron: str
    timezone: str = "UTC"
    catch_up: CatchUp = CatchUp.SKIP
    deadline_s: int | None = None  # latest start after the slot; None = the policy's default

    def _tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def latest_slot(self, now: datetime) -> datetime:
        """The most recent cron time at or before ``now`` (UTC)."""
        local = (now.replace(microsecond=0) + timedelta(seconds=1)).astimezone(self._tz())
        prev: datetime = croniter(self.cron, local).get_prev(datetime)
        return prev.astimezone(UTC)

    def next_slot(self, now: datetime) -> datetime:
        """The first cron time strictly after ``now`` (UTC)."""
        local = now.astimezone(self._tz())
        nxt: datetime = croniter(self.cron, local).get_next(datetime)
        return nxt.astimezone(UTC)

    def deadline(self, slot: datetime, grace_s: int = DEFAULT_GRACE_S) -> datetime:
        """The latest moment a run for ``slot`` may start."""
        if self.deadline_s is not None:
            return slot + timedelta(seconds=self.deadline_s)
        if self.catch_up is CatchUp.ONCE:
            return self.next_slot(slot)  # any time before the next slot takes over
        return slot + timedelta(seconds=grace_s)


def slot_key(slot: datetime) -> str:
    return slot.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def manual_key(now: datetime) -> str:
    """A manual run's slot: never equal to a cron slot, so it does not use one up."""
    return "manual:" + now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_slot(key: str) -> datetime | None:
    if key.startswith("manual:"):
        return None
    return datetime.strptime(key, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Decision:
    job: str
    slot: str
    fire: bool
    why: str


def decide(
    job: Job,
    now: datetime,
    recorded: bool,
    grace_s: int = DEFAULT_GRACE_S,
    first_start: datetime | None = None,
) -> Decision:
    """Whether Beat should start ``job``'s latest slot now, and why (for the log).

    ``first_start`` is when the first Beat ever started against this database: a slot
    before it is run only on time, never as catch-up, so a fresh install does not fire
    every ``catch_up: once`` job the moment it starts."""
    slot = job.latest_slot(now)
    key = slot_key(slot)
    if recorded:
        return Decision(job.name, key, False, "already recorded")
    late = (now - slot).total_seconds()
    on_time = late <= grace_s
    if not on_time and first_start is not None and slot < first_start:
        since = slot_key(first_start)
        return Decision(job.name, key, False, f"before the first Beat start ({since}): no catch-up")
    if now <= job.deadline(slot, grace_s):
        why = "on time" if on_time else f"catch-up ({late:.0f}s late, policy {job.catch_up})"
        return Decision(job.name, key, True, why)
    return Decision(
        job.name, key, False, f"missed by {late:.0f}s: past its deadline (catch_up: {job.catch_up})"
    )
