"""The API's request limits that must hold across server processes, kept in Redis.

Three things, each one atomic Lua script or command, so ``dox api serve --workers N`` (and
several hosts behind one proxy) share them (through Redis's asyncio client: a request waiting
for Redis holds no thread):

- a token bucket per caller (``DOX_API_RATE_PER_MIN``): it holds one minute's worth of
  requests and refills continuously, so a client may burst up to the rate and then goes at
  the rate; Redis's own clock (``TIME``) is used, so server clocks need not agree;
- refused keys per client address: after ``DOX_API_AUTH_FAILURES_PER_MIN`` refusals the
  address is answered 429 until the minute that began with its first refusal is over;
- ``dox_api_auth_failures_total`` by reason, a Redis hash the exporter reads at a scrape.

When Redis cannot be reached the limits *fail open*: the request is served and a warning
is logged (at most once a minute per process). Keys are checked against PostgreSQL, not
Redis, so an outage of a counter store does not let anyone in; refusing every request
instead would turn a lost counter into a full outage of the API. What is lost while Redis
is down is throttling, and Redis is also the broker: submissions fail with 503 anyway.

The address check also reads the API keys' epoch (:func:`dox_tasks.apikeys.epoch_key`) in
the same script, so the key cache (:mod:`dox_tasks.api.keycache`) costs no round trip, and
takes the token of a caller already known (a key remembered under that very epoch, or
``API_KEY``): such a request costs one round trip. An epoch lost (a flushed Redis) is replaced
by a new random one there.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis
import redis.asyncio

from .apikeys import epoch_key, new_epoch

log = logging.getLogger("dox.api.limits")

WINDOW_S = 60
#: Why a request was refused, as ``dox_api_auth_failures_total``'s ``reason`` label: no key,
#: the verdicts of :func:`dox_tasks.apikeys.verify`, and ``scope`` (a key without the scope, 403).
FAILURE_REASONS = ("missing", "malformed", "unknown", "wrong_secret", "revoked", "expired", "scope")

# KEYS[1] the bucket; ARGV[1] capacity, ARGV[2] tokens a second. Returns 0, or the
# milliseconds until a token is there.
_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap, rate = tonumber(ARGV[CAP]), tonumber(ARGV[CAP + 1])
local b = redis.call('HMGET', KEYS[BUCKET], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000) end
redis.call('HSET', KEYS[BUCKET], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[BUCKET], math.ceil(cap / rate) + 1)
"""

# KEYS[1] the bucket; ARGV[1] capacity, ARGV[2] tokens a second. Returns 0, or the
# milliseconds until a token is there.
_TAKE = "local BUCKET, CAP = 1, 1\n" + _BUCKET + "return wait\n"

# KEYS[1] the address's refusals, KEYS[2] the key epoch, KEYS[3] (optional) a caller's bucket;
# ARGV[1] an epoch to set if there is none, ARGV[2] the epoch the caller was verified under
# ('*': any), ARGV[3], ARGV[4] capacity and tokens a second. The bucket's token is taken only
# if the address is not blocked and the epoch is ARGV[2]: a remembered key still good.
# Returns {refusals this minute, their TTL, the epoch, -1 (no token taken) or as _TAKE}.
_CHECK = (
    """
local n = redis.call('GET', KEYS[1]) or '0'
local ttl = redis.call('TTL', KEYS[1])
local e = redis.call('GET', KEYS[2])
if not e then e = ARGV[1]; redis.call('SET', KEYS[2], e) end
if not KEYS[3] or tonumber(n) >= tonumber(ARGV[5]) or (ARGV[2] ~= '*' and ARGV[2] ~= e) then
  return {n, ttl, e, -1}
end
local BUCKET, CAP = 3, 3
"""
    + _BUCKET
    + "return {n, ttl, e, wait}\n"
)

# KEYS[1] the address's refusals, KEYS[2] the totals hash; ARGV[1] reason, ARGV[2] window.
_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return n
"""


@dataclass(frozen=True)
class Refusal:
    """A limit reached: answer with 429 and ``Retry-After: retry_after`` seconds."""

    retry_after: int


@dataclass(frozen=True)
class Gate:
    """What :meth:`ApiLimits.check` found, in one round trip: whether the address is blocked,
    the API keys' epoch (None: Redis could not tell, use no remembered key) and, when a
    bucket was given and its token taken, ``took`` and the rate's refusal if it was empty."""

    blocked: Refusal | None = None
    epoch: str | None = None
    took: bool = False
    over_rate: Refusal | None = None


def _wait(wait_ms: int) -> Refusal | None:
    return Refusal(max(1, math.ceil(wait_ms / 1000))) if wait_ms else None


def failures_key(namespace: str) -> str:
    return f"{namespace}:api:auth_failures"


def failure_totals(client: redis.Redis, namespace: str) -> dict[str, int]:
    """``dox_api_auth_failures_total`` by reason, every known reason present (0 if none yet),
    so the first failure of a kind shows as an increase. Raises what Redis raises."""
    stored = client.hgetall(failures_key(namespace))
    totals = dict.fromkeys(FAILURE_REASONS, 0)
    for reason, count in stored.items():
        totals[reason.decode() if isinstance(reason, bytes) else str(reason)] = int(count)
    return totals


class ApiLimits:
    """The per-caller rate and the per-address refusal limit of one server process."""

    def __init__(self, url: str | None, namespace: str, rate_per_min: int, failures_per_min: int) -> None:
        client = (
            redis.asyncio.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5) if url else None
        )
        self.client, self.namespace = client, namespace
        self.rate_per_min, self.failures_per_min = rate_per_min, failures_per_min
        self._warned_at = -math.inf
        self._take = client.register_script(_TAKE) if client is not None else None
        self._fail = client.register_script(_FAIL) if client is not None else None
        self._check = client.register_script(_CHECK) if client is not None else None
        self._epoch_key = epoch_key(namespace)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _down(self, what: str, exc: Exception) -> None:
        """Fail open, saying so once a minute (a request per line would flood the log)."""
        if time.monotonic() - self._warned_at >= WINDOW_S:
            self._warned_at = time.monotonic()
            log.warning("API limits not enforced: Redis unavailable while %s (%s)", what, type(exc).__name__)

    def _address_key(self, address: str) -> str:
        return f"{self.namespace}:api:authfail:{address}"

    async def take(self, caller: str) -> Refusal | None:
        """One request by ``caller`` (``key:<prefix>`` or ``user:<name>``); a refusal when its
        bucket is empty."""
        key = self.bucket(caller)
        if self._take is None or key is None:
            return None
        try:
            wait_ms = int(
                await self._take(keys=[key], args=[self.rate_per_min, self.rate_per_min / WINDOW_S])
            )
        except redis.RedisError as exc:
            self._down("taking a request token", exc)
            return None
        return _wait(wait_ms)

    def bucket(self, caller: str) -> str | None:
        """The Redis key of ``caller``'s token bucket (None: the rate is not limited)."""
        return f"{self.namespace}:api:rate:{caller}" if self.rate_per_min else None

    async def check(self, address: str, bucket: str | None = None, verified_under: str = "*") -> Gate:
        """Whether ``address`` has used up its refusals for this minute, and the API keys'
        epoch; and, given the ``bucket`` of a caller already known (a key remembered under the
        epoch ``verified_under``, or ``*``: the operator), its request token, so such a request
        costs one round trip. A caller whose token was not taken here goes through :meth:`take`."""
        if self._check is None:
            return Gate()
        keys = [self._address_key(address), self._epoch_key]
        args: list[str | int | float] = [new_epoch(), verified_under]
        if bucket is not None:
            keys.append(bucket)
            args += [self.rate_per_min, self.rate_per_min / WINDOW_S]
        else:
            args += [0, 0]
        args.append(self.failures_per_min)
        try:
            count, ttl, epoch, wait_ms = await self._check(keys=keys, args=args)
        except redis.RedisError as exc:
            self._down("checking an address", exc)
            return Gate()
        epoch_text = epoch.decode("ascii", "replace") if isinstance(epoch, bytes) else str(epoch)
        if int(count) >= self.failures_per_min:
            return Gate(Refusal(max(1, int(ttl))), epoch_text)
        took = int(wait_ms) >= 0
        return Gate(None, epoch_text, took, _wait(int(wait_ms)) if took else None)

    async def failed(self, address: str, reason: str) -> int:
        """Count one refusal of ``address``; the refusals it now has this minute (0: unknown)."""
        if self._fail is None:
            return 0
        try:
            keys = [self._address_key(address), failures_key(self.namespace)]
            return int(await self._fail(keys=keys, args=[reason, WINDOW_S]))
        except redis.RedisError as exc:
            self._down("counting a refused key", exc)
            return 0

    async def counted(self, reason: str) -> None:
        """Count a refusal that is not the address's fault (a genuine key without the scope)."""
        if self.client is None:
            return
        try:
            await self.client.hincrby(failures_key(self.namespace), reason, 1)
        except redis.RedisError as exc:
            self._down("counting a refusal", exc)
