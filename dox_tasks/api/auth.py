"""Who is calling: an API key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

Keys are checked by :func:`dox_tasks.apikeys.verify` and remembered while no key is revoked
or rotated (:mod:`dox_tasks.api.keycache`); the seed's ``API_KEY`` is one more,
operator key with every scope, acting as ``DOX_API_KEY_USER`` (compared in constant time).
A refusal is 401 with one ``authentication failed`` log line naming the reason code, the key's
public prefix (never the secret) and the client address; a key without the scope an endpoint
needs is 403, logged as ``authorization refused``. Both lines go to the ``dox.api.security``
logger (also ``$DOX_LOG_DIR/auth.log``) and count in ``dox_api_auth_failures_total``. An
address with too many refusals in a minute, and a caller over its request rate, get 429
(:mod:`dox_tasks.apilimits`, in Redis). Uses are counted in memory and
written with :func:`dox_tasks.db.apikeys.record_use` every :data:`FLUSH_EVERY_S` seconds by a
background task, so a request costs no database write.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import anyio.to_thread
from fastapi import Request

from .. import apikeys
from ..apilimits import ApiLimits, Gate, Refusal
from ..db import apikeys as table
from ..db.store import StateStore
from ..db.store import now as db_now
from ..identity import normalise_user
from ..settings import Settings, is_loopback
from .keycache import KeyCache
from .problems import Problem

log = logging.getLogger("dox.api.auth")
#: Refusals only: the lines the seed's daily security check counts (``auth.log``).
security = logging.getLogger("dox.api.security")

FLUSH_EVERY_S = 5.0
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Caller:
    """A verified caller: the user it acts as, its scopes, its key's prefix (None: API_KEY),
    the name operator actions record as their actor (the key's name, else the user) and the
    user as written (what a workflow it submits shows as ``user_display``)."""

    user: str
    scopes: tuple[str, ...]
    prefix: str | None
    name: str
    #: The user as the key's creator wrote it (``Alice``; ``user`` is its normal form).
    user_display: str | None = None

    def allows(self, scope: str) -> bool:
        return apikeys.grants(self.scopes, scope)


class UsageCounter:
    """Key uses since the last flush; one ``record_use`` transaction per flush. The app
    flushes every ``every_s`` seconds in the background and once more at shutdown."""

    def __init__(self, store: StateStore, every_s: float = FLUSH_EVERY_S):
        self.store, self.every_s = store, every_s
        self._counts: dict[str, tuple[int, datetime]] = {}
        self._lock = threading.Lock()

    def hit(self, prefix: str, when: datetime) -> None:
        with self._lock:
            uses, last = self._counts.get(prefix, (0, when))
            self._counts[prefix] = (uses + 1, max(last, when))

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
        if not counts:
            return
        try:
            table.record_use(self.store, counts)
        except Exception:  # noqa: BLE001 - counts are kept for the next flush, the request goes on
            log.warning("could not record API key usage; keeping %d key(s) for the next flush", len(counts))
            with self._lock:
                for prefix, (uses, last) in counts.items():
                    more, later = self._counts.get(prefix, (0, last))
                    self._counts[prefix] = (uses + more, max(last, later))


def _addressed_to_loopback(request: Request) -> bool:
    """Whether the request names this machine in its Host header. Without keys
    (REQUIRE_AUTH=false, loopback only) a web page could still reach the API through a name
    that resolves to 127.0.0.1 (DNS rebinding): its requests carry that name, not localhost."""
    host = urlsplit("//" + request.headers.get("host", "")).hostname
    return host is not None and is_loopback(host)


def presented_key(request: Request) -> str | None:
    """The key in the request's headers; ``""`` for an Authorization header that is not Bearer."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else ""
    return request.headers.get("x-api-key")


def client_address(request: Request) -> str:
    """The client's address as the logs and the per-address limit name it: the peer, or the
    address ``X-Forwarded-For`` names when the peer is a trusted proxy (already made an IP
    address or escaped text by :class:`~dox_tasks.api.edge.ClientAddress`)."""
    return request.client.host if request.client and request.client.host else "-"


def _too_many(refusal: Refusal, detail: str) -> Problem:
    return Problem(429, "too-many-requests", detail, {"Retry-After": str(refusal.retry_after)})


class Authenticator:
    """Turns a request's key into a :class:`Caller`, or a 401 (or 429) problem.

    Awaited on the event loop: Redis through its asyncio client, and a worker thread only
    for what blocks, the database read of a key not in this process's :class:`KeyCache`."""

    def __init__(self, settings: Settings, store: StateStore, usage: UsageCounter, limits: ApiLimits):
        self.store, self.usage, self.limits, self.require = store, usage, limits, settings.require_auth
        self._operator_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        operator = normalise_user(settings.api_key_user)
        self._operator = Caller(operator, apikeys.SCOPES, None, operator, settings.api_key_user)
        self.cache: KeyCache[Caller] = KeyCache(settings.api_key_cache_s)

    async def _refuse(self, address: str, reason: str, prefix: str | None, detail: str) -> Problem:
        line = "authentication failed: reason=%s prefix=%s client=%s"
        security.warning(line, reason, prefix or "-", address)
        if await self.limits.failed(address, reason) == self.limits.failures_per_min:
            security.warning(
                "authentication throttled: client=%s had %d keys refused within a minute;"
                " answered 429 until that minute is over",
                address,
                self.limits.failures_per_min,
            )
        return Problem(401, "unauthorized", detail, _CHALLENGE)

    async def _admit(self, caller: Caller, gate: Gate | None = None) -> Caller:
        """The caller, if its request rate allows one more request (per key, else per user);
        the token was taken already if ``gate`` says so."""
        if gate is not None and gate.took:
            refusal = gate.over_rate
        else:
            refusal = await self.limits.take(_bucket_of(caller))
        if refusal:
            rate = self.limits.rate_per_min
            raise _too_many(refusal, f"more than {rate} requests a minute with this API key; slow down")
        return caller

    async def __call__(self, request: Request) -> Caller:
        key = presented_key(request)
        if key is None and not self.require and _addressed_to_loopback(request):
            return await self._admit(self._operator)
        address = client_address(request)
        operator = bool(
            key
            and self._operator_key
            and hmac.compare_digest(key.encode("utf-8", "replace"), self._operator_key)
        )
        # A caller known before the round trip has its request token taken in it: the operator,
        # or a key remembered under an epoch (taken only if that is still Redis's epoch).
        known = (self._operator, "*") if operator else self.cache.peek(key) if key else None
        bucket = self.limits.bucket(_bucket_of(known[0])) if known else None
        gate = await self.limits.check(address, bucket, known[1] if known else "*")
        if gate.blocked:
            raise _too_many(
                gate.blocked, "too many refused API keys from this address; wait before trying again"
            )
        if key is None:
            detail = "an API key is required: send Authorization: Bearer KEY"
            raise await self._refuse(address, "missing", None, detail)
        if operator:
            return await self._admit(self._operator, gate)
        if gate.epoch is None:  # Redis cannot say whether a key changed: trust nothing remembered
            self.cache.clear()
        when = db_now()
        caller = self.cache.get(key, gate.epoch, when)
        if caller is None:
            found = await anyio.to_thread.run_sync(apikeys.verify, self.store, key)
            if isinstance(found, apikeys.KeyRefusal):
                raise await self._refuse(address, found.reason, found.prefix, "the API key is not valid")
            caller = Caller(found.user, found.scopes, found.prefix, found.name, found.user_display)
            self.cache.put(key, caller, gate.epoch, found.expires_at)  # the epoch read before the row
        assert caller.prefix is not None
        self.usage.hit(caller.prefix, when)
        # A token taken in the round trip was this key's own (the same key, so the same prefix).
        return await self._admit(caller, gate)


def _bucket_of(caller: Caller) -> str:
    return f"key:{caller.prefix}" if caller.prefix else f"user:{caller.user}"


def needs(scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """A dependency: the caller, if its key has ``scope`` (403 otherwise, counted as a failure
    with reason ``scope`` but not against the address: the key itself is genuine)."""

    async def check(request: Request) -> Caller:
        authenticate: Authenticator = request.app.state.authenticate
        caller = await authenticate(request)
        if not caller.allows(scope):
            security.warning(
                "authorization refused: scope=%s prefix=%s client=%s",
                scope,
                caller.prefix or "-",
                client_address(request),
            )
            await authenticate.limits.counted("scope")
            raise Problem(403, "forbidden", f"this API key lacks the {scope!r} scope")
        return caller

    return check
