"""API keys: what one is, how it is made, and how a presented one is checked.

A key is ``dox_<prefix>_<secret>``: the prefix is 12 lowercase hex characters, public
(logs, ``dox apikeys list``, the ``api_keys`` row), the secret 256 random bits in
URL-safe base64. Only the SHA-256 of the secret is stored: with 256 random bits a fast
hash cannot be searched, and every request can afford it. The full key is shown once,
when it is made. :func:`verify` never raises for what a caller sends: it returns a
:class:`KeyIdentity` or a :class:`KeyRefusal` with a reason code, so the API can answer
401 and log the reason without a try block around every request. A malformed key is
refused before any database read. The table itself is :mod:`dox_tasks.db.apikeys`'.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import redis

from .db import apikeys as table
from .db.store import StateStore, aware
from .db.store import now as db_now
from .errors import ApiKeyError, KeyChangeNotAnnounced, SubmissionError
from .identity import normalise_user
from .invisible import hidden
from .settings import Settings

#: What a key may do: submit documents, read its own user's workflows, read everyone's
#: (and the global metrics), operate (retry, cancel, pause intake, sync).
SCOPES: tuple[str, ...] = ("submit", "read", "read_all", "operate")
MAX_NAME_LENGTH = 100
#: Longer than any key: refused unread, so a huge header costs nothing.
MAX_KEY_LENGTH = 200
PREFIX_HEX = 12
_KEY = re.compile(r"dox_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_PREFIX = re.compile(r"[0-9a-f]{12}")

#: A scope that includes another: reading everyone's workflows includes reading one's own.
IMPLIES: dict[str, tuple[str, ...]] = {"read_all": ("read",)}

Reason = Literal["malformed", "unknown", "revoked", "expired", "wrong_secret"]


def grants(scopes: tuple[str, ...], scope: str) -> bool:
    """Whether ``scopes`` allow ``scope``, directly or through a scope that implies it."""
    return scope in scopes or any(scope in IMPLIES.get(s, ()) for s in scopes)


@dataclass(frozen=True)
class KeyIdentity:
    """Who a verified key acts as, and what it may do."""

    prefix: str
    name: str
    user: str
    user_display: str
    scopes: tuple[str, ...]
    #: When the key stops working (None: never), so a cached identity is still refused then.
    expires_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return grants(self.scopes, scope)


@dataclass(frozen=True)
class KeyRefusal:
    """Why a presented key is not accepted: a reason code and a sentence (no secret in either).
    ``prefix`` is the key's public prefix when it had one, for the log line."""

    reason: Reason
    message: str
    prefix: str | None = None


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``key`` is the full key, shown once; ``record`` is its row without the hash."""

    key: str
    record: dict[str, Any]


class _HasState(Protocol):
    @property
    def state(self) -> StateStore: ...


class _HasRedis(Protocol):
    """A runtime: the store, and the Redis the API servers read the key epoch from."""

    @property
    def state(self) -> StateStore: ...
    @property
    def redis(self) -> redis.Redis | None: ...
    @property
    def settings(self) -> Settings: ...


def epoch_key(namespace: str) -> str:
    """The Redis key holding the API keys' epoch: a random token, replaced by every
    revocation and rotation. An API server uses a key it verified before only while the
    token is the one it verified it under (:mod:`dox_tasks.api.keycache`)."""
    return f"{namespace}:apikeys:epoch"


def new_epoch() -> str:
    """A token never seen before (random, not a counter: a flushed Redis that started
    counting again could bring back a token some server's cache still holds)."""
    return secrets.token_hex(16)


def announce_change(target: StateStore | _HasState | _HasRedis, prefix: str, what: str, done: object) -> None:
    """Tell every API server that key ``prefix`` changed, *after* the change is committed:
    a server that read the old epoch verified against the old row, one that reads the new
    epoch verifies against the new row. A bare store reaches no Redis (tests, tools that
    run before any server); a runtime without Redis has no server caches to tell. Raises
    :class:`~dox_tasks.errors.KeyChangeNotAnnounced` (carrying ``done``) when Redis fails."""
    client = getattr(target, "redis", None)
    settings: Settings | None = getattr(target, "settings", None)
    if client is None:
        # A runtime with no Redis but a PostgreSQL database (a shell missing DOX_BROKER_URL)
        # may share that database with API servers it cannot tell: not a silent success.
        if settings is not None and settings.db_url.startswith("postgres"):
            raise KeyChangeNotAnnounced(
                f"API key {prefix} is {what} in the database, but no Redis is configured here"
                f" (DOX_BROKER_URL / DOX_REDIS_URL), so API servers could not be told: one that"
                f" verified the key in the last {settings.api_key_cache_s} s may keep accepting it"
                f" until then. Run it again with the servers' Redis, or"
                f" `redis-cli DEL {epoch_key(settings.namespace)}` there",
                done,
            )
        return
    assert settings is not None
    try:
        client.set(epoch_key(settings.namespace), new_epoch())
    except redis.RedisError as exc:
        raise KeyChangeNotAnnounced(
            f"API key {prefix} is {what} in the database, but Redis could not be told"
            f" ({type(exc).__name__}): an API server that verified the key in the last"
            f" {settings.api_key_cache_s} s may keep accepting it until then."
            f" Once Redis answers, `redis-cli DEL {epoch_key(settings.namespace)}` makes it immediate",
            done,
        ) from exc


def _store(target: StateStore | _HasState) -> StateStore:
    return target if isinstance(target, StateStore) else target.state


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A key's row as it may be shown: everything but the secret's hash."""
    return {k: v for k, v in row.items() if k != "secret_hash"}


def parse_scopes(scopes: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"submit,read"`` or a list → the scopes in :data:`SCOPES` order; a sentence for a bad one."""
    given = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    names = {s.strip() for s in given if s.strip()}
    if not names:
        raise ApiKeyError(f"give at least one scope; the scopes are {', '.join(SCOPES)}")
    unknown = sorted(names - set(SCOPES))
    if unknown:
        raise ApiKeyError(f"unknown scope {unknown[0]!r}; the scopes are {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in names)


def check_name(name: str) -> str:
    """A key's name: non-empty, at most 100 characters, nothing a reader cannot see."""
    for position, char in enumerate(name, 1):
        what = hidden(char)
        if what:
            raise ApiKeyError(f"key name refused: character {position} is {what} (U+{ord(char):04X})")
    if not name.strip():
        raise ApiKeyError("a key needs a non-empty name")
    if len(name) > MAX_NAME_LENGTH:
        raise ApiKeyError(f"a key name has at most {MAX_NAME_LENGTH} characters")
    return name


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise ApiKeyError(
            f"{prefix[:40]!r} is not a key prefix:"
            f" give the {PREFIX_HEX} hex characters `dox apikeys list` shows"
        )
    return prefix


def _new_key() -> tuple[str, str, str]:
    """(full key, prefix, secret hash)."""
    prefix, secret = secrets.token_hex(PREFIX_HEX // 2), secrets.token_urlsafe(32)
    return f"dox_{prefix}_{secret}", prefix, secret_hash(secret)


def create(
    target: StateStore | _HasState,
    name: str,
    user: str,
    scopes: str | list[str] | tuple[str, ...],
    expires: timedelta | None = None,
    now: datetime | None = None,
) -> CreatedKey:
    """Make and store a key for ``user`` (any spelling: stored in normal form and as written)."""
    name = check_name(name)
    try:
        normal = normalise_user(user)
    except SubmissionError as exc:
        raise ApiKeyError(str(exc)) from exc
    granted = parse_scopes(scopes)
    if expires is not None and expires <= timedelta(0):
        raise ApiKeyError("a key's lifetime must be positive, e.g. 90d")
    when = aware(now) if now else db_now()
    key, prefix, digest = _new_key()
    row = {
        "api_key": prefix,
        "name": name,
        "user_id": normal,
        "user_display": user,
        "scopes": list(granted),
        "secret_hash": digest,
        "created_at": when,
        "expires_at": when + expires if expires else None,
        "usage_count": 0,
    }
    table.insert_key(_store(target), row)
    return CreatedKey(key, public(row))


def list_keys(target: StateStore | _HasState) -> list[dict[str, Any]]:
    return [public(r) for r in table.list_keys(_store(target))]


def revoke(
    target: StateStore | _HasState | _HasRedis, prefix: str, now: datetime | None = None
) -> dict[str, Any]:
    """Revoke at once (a key revoked before stays revoked at its first time); its row after.
    Given a runtime, every API server's key cache learns of it at once (:func:`announce_change`;
    running it again for a revoked key announces again)."""
    row = table.revoke_key(_store(target), check_prefix(prefix), aware(now) if now else db_now())
    if row is None:
        raise ApiKeyError(f"no API key with prefix {prefix}")
    shown = public(row)
    announce_change(target, prefix, "revoked", shown)
    return shown


def rotate(
    target: StateStore | _HasState | _HasRedis,
    prefix: str,
    grace: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> tuple[CreatedKey, dict[str, Any]]:
    """A new key with the old one's name, user and scopes (and lifetime), working at once;
    the old key keeps working until min(its expiry, now + ``grace``). Returns the new key
    and the old key's row after. Given a runtime, API servers' key caches learn of it at once."""
    store = _store(target)
    check_prefix(prefix)
    if grace < timedelta(0):
        raise ApiKeyError("the grace period cannot be negative")
    when = aware(now) if now else db_now()
    old = table.get_key(store, prefix)
    if old is None:
        raise ApiKeyError(f"no API key with prefix {prefix}")
    if old["expires_at"] is not None and aware(old["expires_at"]) <= when:
        raise ApiKeyError(f"API key {prefix} has expired; create a new one")
    key, new_prefix, digest = _new_key()
    lifetime = aware(old["expires_at"]) - aware(old["created_at"]) if old["expires_at"] else None
    new_row = {
        "api_key": new_prefix,
        "secret_hash": digest,
        "created_at": when,
        "expires_at": when + lifetime if lifetime else None,
    }
    after = table.rotate_key(store, prefix, new_row, when, grace)
    if after is None:
        raise ApiKeyError(f"no API key with prefix {prefix}")
    made = table.get_key(store, new_prefix)
    assert made is not None
    result = CreatedKey(key, public(made)), public(after)
    announce_change(target, prefix, "rotated (its grace period set)", result)
    return result


def verify(store: StateStore, presented: object, now: datetime | None = None) -> KeyIdentity | KeyRefusal:
    """The identity of a presented key, or why it is refused. Never raises for what a caller sends
    (a database outage still raises, as everywhere). Shape first, so junk costs no database read."""
    if not isinstance(presented, str) or len(presented) > MAX_KEY_LENGTH or not presented.isascii():
        return KeyRefusal("malformed", "the API key is not in the form dox_<prefix>_<secret>")
    match = _KEY.fullmatch(presented)
    if not match:
        return KeyRefusal("malformed", "the API key is not in the form dox_<prefix>_<secret>")
    prefix, secret = match.groups()
    row = table.get_key(store, prefix)
    if row is None:
        return KeyRefusal("unknown", f"no API key with prefix {prefix}", prefix)
    if not hmac.compare_digest(row["secret_hash"], secret_hash(secret)):
        return KeyRefusal("wrong_secret", f"the secret of API key {prefix} does not match", prefix)
    when = aware(now) if now else db_now()
    if row["revoked_at"] is not None:
        return KeyRefusal("revoked", f"API key {prefix} was revoked", prefix)
    if row["expires_at"] is not None and aware(row["expires_at"]) <= when:
        return KeyRefusal("expired", f"API key {prefix} has expired", prefix)
    expires = aware(row["expires_at"]) if row["expires_at"] is not None else None
    return KeyIdentity(
        prefix, row["name"], row["user_id"], row["user_display"], tuple(row["scopes"]), expires
    )
