"""The DOX Beat scheduler: one sender at a time, decisions from Postgres.

Run it with ``dox beat`` (``celery beat -S dox_tasks.jobs.beat:DoxScheduler``).
Any number of Beat processes may run; each tick, a process first holds or
tries to take the lock (a Redis key with a TTL, owned by a random token —
redis-py's :class:`~redis.lock.Lock`), and only the holder looks at the
schedule. A holder killed with SIGKILL stops renewing; its key expires after
``DOX_BEAT_LOCK_TTL`` seconds and a standby, trying every second, takes over
within TTL + 1 s (30 s + 1 s by default, bounded below 60 s by the settings).

Why not celery-redbeat: it keeps each entry's ``last_run_at`` in Redis, and
Redis here keeps nothing on disk — after a flush every entry looks due at once.
DOX needs only the lock from Redis; the slots live in Postgres (``schedule_slot``,
unique per job), so even two holders at once (a paused process waking after its
lock expired) cannot start a slot twice. See docs/SCHEDULING.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from celery.beat import Scheduler
from redis.exceptions import LockError, RedisError

from .. import runtime
from ..db import records
from ..errors import DoxError
from .launch import start_run
from .slots import Job, decide, slot_key

log = logging.getLogger("dox.beat")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class SchedulerLock:
    """Who may send: a Redis key holding this process's token, renewed every tick."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: int):
        self.ttl_s = ttl_s
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = client.lock(key, timeout=ttl_s, blocking=False, thread_local=False)
        self.held = False

    def hold(self) -> bool:
        """Renew the lock if held, else try to take it; True while this process is the sender."""
        try:
            if self.held:
                try:
                    self._lock.reacquire()
                    return True
                except LockError:
                    log.warning("beat lost its lock (expired or Redis flushed); trying to take it back")
                    self.held = False
            self.held = bool(self._lock.acquire(blocking=False, token=self.identity.encode()))
            if self.held:
                log.info("beat %s holds the scheduler lock (ttl %ss)", self.identity, self.ttl_s)
        except RedisError as exc:
            log.error("beat cannot reach Redis for its lock (%s): not sending", exc)
            self.held = False
        return self.held

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(LockError, RedisError):
                self._lock.release()
            self.held = False


class DoxScheduler(Scheduler):
    """Celery's Scheduler with DOX's tick: lock, then for each job, decide from Postgres."""

    #: Seconds between ticks; also how quickly a standby notices a free lock.
    tick_s = 1.0

    def __init__(self, app: Any, *args: Any, clock: Clock = utcnow, **kwargs: Any):
        import beat_schedule

        self.rt = runtime.get()
        self.clock = clock
        self.jobs: dict[str, Job] = beat_schedule.build(self.rt.definitions.values())
        client = self.rt.redis
        if client is None:
            raise DoxError("dox beat needs Redis for its lock: set DOX_BROKER_URL=redis://… or DOX_REDIS_URL")
        self.lock = SchedulerLock(
            client, f"{self.rt.settings.namespace}:beat:lock", self.rt.settings.beat_lock_ttl_s
        )
        self._recorded: dict[str, str] = {}  # job -> its latest slot known to have a run
        #: When the first Beat started against this database (slots before: no catch-up).
        self.first_start = records.record_beat_start(self.rt.state, self.lock.identity, self.clock())
        super().__init__(app, *args, **kwargs)
        log.info("beat schedules %d job(s): %s", len(self.jobs), ", ".join(sorted(self.jobs)) or "none")

    def setup_schedule(self) -> None:
        """No Celery entries: the jobs come from workflow_defs/ (beat_schedule.build)."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.lock.hold():
            return self.tick_s
        now = self.clock()
        for job in self.jobs.values():
            try:
                self._consider(job, now)
            except Exception as exc:  # noqa: BLE001 - one job's problem must not stop the others
                log.error("beat could not start job %s: %s", job.name, exc)
        return self.tick_s

    def _consider(self, job: Job, now: datetime) -> None:
        slot = slot_key(job.latest_slot(now))
        if self._recorded.get(job.name) == slot:
            return
        recorded = self.rt.state.run_for_slot(job.name, slot) is not None
        decision = decide(job, now, recorded, self.rt.settings.beat_grace_s, self.first_start)
        if decision.fire:
            launch = start_run(self.rt, job.name, decision.slot)
            if launch.created:
                log.info(
                    "job %s slot %s: started (%s) as workflow %s",
                    job.name,
                    decision.slot,
                    decision.why,
                    launch.workflow_id,
                )
            else:
                log.info("job %s slot %s: already run by another sender", job.name, decision.slot)
        elif not recorded:
            log.warning("job %s slot %s not run: %s", job.name, decision.slot, decision.why)
        self._recorded[job.name] = slot

    def close(self) -> None:
        self.lock.release()
        super().close()

    @property
    def info(self) -> str:
        return f"DOX (lock ttl {self.lock.ttl_s}s, {len(self.jobs)} jobs)"
