"""Who is calling: an API key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

Keys are checked by :func:`dox_tasks.apikeys.verify`; the seed's ``API_KEY`` is one more,
operator key with every scope, acting as ``DOX_API_KEY_USER`` (compared in constant time).
A refusal is 401 with one log line naming the reason code and the key's public prefix, never
the secret; a key without the scope an endpoint needs is 403. Uses are counted in memory and
written with :func:`dox_tasks.db.apikeys.record_use` every :data:`FLUSH_EVERY_S` seconds by a
background task, so a request costs no database write.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from fastapi import Request

from .. import apikeys
from ..db import apikeys as table
from ..db.store import StateStore
from ..db.store import now as db_now
from ..identity import normalise_user
from ..settings import Settings, is_loopback
from .problems import Problem

log = logging.getLogger("dox.api.auth")

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


class Authenticator:
    """Turns a request's key into a :class:`Caller` or a 401 problem."""

    def __init__(self, settings: Settings, store: StateStore, usage: UsageCounter):
        self.store, self.usage, self.require = store, usage, settings.require_auth
        self._operator_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        operator = normalise_user(settings.api_key_user)
        self._operator = Caller(operator, apikeys.SCOPES, None, operator, settings.api_key_user)

    def _refuse(self, reason: str, prefix: str | None, detail: str) -> Problem:
        log.warning("API key refused: reason=%s prefix=%s", reason, prefix or "-")
        return Problem(401, "unauthorized", detail, _CHALLENGE)

    def __call__(self, request: Request) -> Caller:
        key = presented_key(request)
        if key is None:
            if not self.require and _addressed_to_loopback(request):
                return self._operator
            raise self._refuse("missing", None, "an API key is required: send Authorization: Bearer KEY")
        if self._operator_key and hmac.compare_digest(key.encode("utf-8", "replace"), self._operator_key):
            return self._operator
        found = apikeys.verify(self.store, key)
        if isinstance(found, apikeys.KeyRefusal):
            raise self._refuse(found.reason, found.prefix, "the API key is not valid")
        self.usage.hit(found.prefix, db_now())
        return Caller(found.user, found.scopes, found.prefix, found.name, found.user_display)


def needs(scope: str) -> Callable[[Request], Caller]:
    """A dependency: the caller, if its key has ``scope`` (403 otherwise)."""

    def check(request: Request) -> Caller:
        caller: Caller = request.app.state.authenticate(request)
        if not caller.allows(scope):
            raise Problem(403, "forbidden", f"this API key lacks the {scope!r} scope")
        return caller

    return check
