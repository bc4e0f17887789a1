"""Per-user daily submission limit, exact under concurrency and idempotent per workflow.

Each workflow is admitted once per user and UTC day: the first time a workflow
id is seen it gets the next position, and a redelivered validate step gets the
*same* position back (so redeliveries and operator retries never count twice).
A workflow whose position exceeds the limit is ``rate_limited``.

The Redis implementation does this in one Lua script (atomic); the in-memory
twin does the same under a lock for the embedded default and unit tests.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
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
