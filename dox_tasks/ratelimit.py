"""Per-user daily submission limit, exact under concurrency and idempotent per workflow.

Each workflow is admitted once per user and UTC day: the first time a workflow
id is seen it gets the next position, and a redelivered validate step gets the
*same* position back (so redeliveries and operator retries never count twice).
A workflow whose position exceeds the limit is ``rate_limited``.

The Redis implementation does this in one Lua script (atomic). The embedded default has
no Redis but must still count "per UTC day" across runs of `dox run`: its twin keeps one
small file per user and day in the state folder, changed under an exclusive file lock.
The in-memory one is for unit tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import redis

from .errors import TransientError

_ADMIT = """
local pos = redis.call('HGET', KEYS[1], ARGV[1])
if pos then return tonumber(pos) end
pos = redis.call('HLEN', KEYS[1]) + 1
redis.call('HSET', KEYS[1], ARGV[1], pos)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return pos
"""


def day_key(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%d")


class RateLimiter(Protocol):
    def admit(self, user: str, workflow_id: str, day: str) -> int:
        """Position of this workflow among the user's submissions that day (1-based)."""
        ...

    def count(self, user: str, day: str) -> int:
        """Submissions counted for the user that day."""
        ...


class RedisRateLimiter:
    def __init__(self, client: redis.Redis, namespace: str = "dox"):
        self.client = client
        self.namespace = namespace
        self._admit = client.register_script(_ADMIT)

    def _key(self, user: str, day: str) -> str:
        return f"{self.namespace}:ratelimit:{day}:{user}"

    def admit(self, user: str, workflow_id: str, day: str) -> int:
        try:
            return int(self._admit(keys=[self._key(user, day)], args=[workflow_id, 2 * 86400]))
        except redis.RedisError as exc:
            raise TransientError(f"rate limiter unavailable: {exc}") from exc

    def count(self, user: str, day: str) -> int:
        return int(self.client.hlen(self._key(user, day)))


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], dict[str, int]] = {}

    def admit(self, user: str, workflow_id: str, day: str) -> int:
        with self._lock:
            bucket = self._seen.setdefault((user, day), {})
            if workflow_id not in bucket:
                bucket[workflow_id] = len(bucket) + 1
            return bucket[workflow_id]

    def count(self, user: str, day: str) -> int:
        with self._lock:
            return len(self._seen.get((user, day), {}))


class FileRateLimiter:
    """The embedded default's limiter: ``<folder>/<day>/<sha256(user)>.json`` lists the
    user's workflows of that day in admission order. Each change happens under ``flock`` and
    is written to a temporary file and renamed, so a crash leaves the old list or the new
    one. Folders of days older than yesterday are removed as new days begin."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, user: str, day: str) -> Path:
        return self.folder / day / (hashlib.sha256(user.encode()).hexdigest() + ".json")

    @staticmethod
    def _read(path: Path) -> list[str]:
        try:
            return list(json.loads(path.read_text()))
        except FileNotFoundError:
            return []

    def admit(self, user: str, workflow_id: str, day: str) -> int:
        path = self._path(user, day)
        if not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._forget_before(day)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            seen = self._read(path)
            if workflow_id not in seen:
                seen.append(workflow_id)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(seen))
                os.replace(tmp, path)
            return seen.index(workflow_id) + 1

    def count(self, user: str, day: str) -> int:
        return len(self._read(self._path(user, day)))

    def _forget_before(self, day: str) -> None:
        keep = {day, (datetime.strptime(day, "%Y-%m-%d") - timedelta(days=1)).strftime("%Y-%m-%d")}
        for old in self.folder.iterdir():
            if old.is_dir() and old.name not in keep:
                for f in old.iterdir():
                    f.unlink(missing_ok=True)
                old.rmdir()
