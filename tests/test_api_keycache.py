"""The API key cache against revocation, on real `dox api serve` processes, PostgreSQL and Redis.

A server process remembers a key it verified (:mod:`dox_tasks.api.keycache`) only while the
key epoch in Redis is the one it verified it under. Here: a key revoked behind the servers'
backs (the bare store tells no Redis) is still accepted by a warm cache — the cache is really
used — until `dox apikeys revoke` announces it, after which every process refuses it on the
very next request; a rotation with no grace the same; an epoch lost from Redis (a flush)
admits no revoked key. The cache itself is unit-tested at the end.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from apiserver import Server, api_env, bearer, problem
from services import dox, free_port

from dox_tasks import apikeys
from dox_tasks.api.keycache import KeyCache
from dox_tasks.db import queries
from dox_tasks.db.store import open_store
from dox_tasks.errors import ApiKeyError, KeyChangeNotAnnounced
from dox_tasks.runtime import Runtime
from dox_tasks.settings import load

PATH = "/api/v1/workflows/no-such-id"  # 404 for a valid key, 401 for a refused one


def _env(tmp_path: Path, pg_url: str, redis_url: str) -> dict[str, str]:
    """With a rate limit, so a remembered key's request token is taken in the epoch's round
    trip, and only while the epoch is the one the key was verified under."""
    limits = {"DOX_API_RATE_PER_MIN": "6000", "DOX_API_AUTH_FAILURES_PER_MIN": "1000"}
    env = api_env(tmp_path, pg_url, redis_url, **limits)
    upgraded = dox(["db", "upgrade"], env, tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    return env


def _statuses(servers: list[Server], key: str, rounds: int = 8) -> set[int]:
    """The statuses ``key`` gets from every server, ``rounds`` requests each (new connections:
    the kernel spreads them over a server's --workers processes)."""
    return {servers[n % len(servers)].get(PATH, bearer(key))[0] for n in range(rounds * len(servers))}


@pytest.mark.postgres
@pytest.mark.redis
def test_revocation_and_rotation_reach_every_warm_process_at_once(tmp_path, pg_url, redis_url):
    env = _env(tmp_path, pg_url, redis_url)
    store = open_store(pg_url)
    gone, rotated = (apikeys.create(store, name, "alice", "read") for name in ("gone", "rotated"))
    servers = [Server(env, tmp_path, tmp_path / "api1.log", ["--workers", "2"])]
    try:
        servers.append(Server(env, tmp_path, tmp_path / "api2.log"))
        for made in (gone, rotated):
            assert _statuses(servers, made.key) == {404}  # verified, now cached everywhere
        # Revoked without telling Redis (a bare store): warm processes still accept it, so
        # the requests above were answered from the cache, not PostgreSQL.
        apikeys.revoke(store, gone.record["api_key"])
        assert 404 in _statuses(servers, gone.key)
        # `dox apikeys revoke` (again: an earlier revocation stands) announces it: refused by
        # every process on the very next request.
        revoked = dox(["apikeys", "revoke", gone.record["api_key"]], env, tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        assert _statuses(servers, gone.key) == {401}
        # A rotation without grace ends the old key at once; the new one works.
        out = dox(["apikeys", "rotate", rotated.record["api_key"], "--grace", "0s"], env, tmp_path)
        assert out.returncode == 0, out.stderr
        assert _statuses(servers, rotated.key) == {401}
        assert _statuses(servers, out.stdout.strip()) == {404}
    finally:
        store.close()
        logged = "".join(server.stop() for server in servers)
    assert "reason=revoked" in logged and "reason=expired" in logged and "Traceback" not in logged


@pytest.mark.postgres
@pytest.mark.redis
def test_an_epoch_lost_from_redis_admits_no_revoked_key(tmp_path, pg_url, redis_url):
    """A flushed Redis forgets the epoch: the next request makes a new random one (a counter
    starting again could repeat the token a cache holds), so nothing cached before is used."""
    env = _env(tmp_path, pg_url, redis_url)
    store = open_store(pg_url)
    made = apikeys.create(store, "flushed", "alice", "read")
    server = Server(env, tmp_path, tmp_path / "api.log")
    client = redis.Redis.from_url(redis_url)
    try:
        assert _statuses([server], made.key, 3) == {404}
        epoch = client.get(apikeys.epoch_key(env["DOX_NAMESPACE"]))
        assert epoch and len(epoch) == 32
        apikeys.revoke(store, made.record["api_key"])  # Redis not told
        assert _statuses([server], made.key, 1) == {404}  # the warm cache
        client.delete(apikeys.epoch_key(env["DOX_NAMESPACE"]))  # what FLUSHALL does to it
        assert problem(server.get(PATH, bearer(made.key)), 401)
        assert client.get(apikeys.epoch_key(env["DOX_NAMESPACE"])) not in (None, epoch)
    finally:
        client.close()
        store.close()
        server.stop()


def test_a_revocation_redis_cannot_hear_is_refused_loudly(tmp_path, monkeypatch):
    """The row is revoked (the database refuses the key from then on) and the command fails
    saying how long a warm cache may still accept it and to run it again."""
    monkeypatch.setenv("DOX_DATABASE_URL", f"sqlite:///{tmp_path / 'dox.db'}")
    monkeypatch.setenv("DOX_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("DOX_API_KEY_CACHE_S", "30")
    rt = Runtime(load())
    try:
        rt.state.migrate()
        made = apikeys.create(rt, "lost", "alice", "read")
        with pytest.raises(
            KeyChangeNotAnnounced, match=r"revoked in the database, but Redis could not be told.* 30 s"
        ) as told:
            apikeys.revoke(rt, made.record["api_key"])
        assert isinstance(told.value, ApiKeyError) and told.value.done["revoked_at"] is not None
        assert apikeys.verify(rt.state, made.key) == apikeys.KeyRefusal(
            "revoked", f"API key {made.record['api_key']} was revoked", made.record["api_key"]
        )
    finally:
        rt.close()


def test_the_cli_without_redis_still_records_and_shows_the_new_key(tmp_path):
    """`rotate` and `revoke` done in the database while Redis is unreachable: the new key is
    still printed (it is shown only once), the action recorded, and the exit is 1 with the
    sentence saying what to do."""
    db_url = f"sqlite:///{tmp_path / 'keys.db'}"
    env = api_env(tmp_path, db_url, f"redis://127.0.0.1:{free_port()}/0")
    assert dox(["db", "upgrade"], env, tmp_path).returncode == 0
    made = dox(["apikeys", "create", "ci", "--user", "alice", "--scope", "read"], env, tmp_path)
    assert made.returncode == 0, made.stderr
    old = made.stdout.strip().split("_")[1]
    rotated = dox(["apikeys", "rotate", old, "--grace", "0s"], env, tmp_path)
    assert rotated.returncode == 1 and "Redis could not be told" in rotated.stderr, rotated.stderr
    assert "apikeys:epoch" in rotated.stderr and "Traceback" not in rotated.stderr
    new = rotated.stdout.strip()
    assert new.startswith("dox_") and new.split("_")[1] != old
    revoked = dox(["apikeys", "revoke", new.split("_")[1]], env, tmp_path)
    assert revoked.returncode == 1 and "revoked at" in revoked.stdout, revoked.stderr
    store = open_store(db_url)
    try:
        types = ("apikey.create", "apikey.rotate", "apikey.revoke")
        recorded = queries.list_events(store, types=types, limit=10, newest_first=False)
        assert [e["type"] for e in recorded] == list(types)
        assert isinstance(apikeys.verify(store, new), apikeys.KeyRefusal)
    finally:
        store.close()


# -- the cache on its own ------------------------------------------------------------------
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_cache_answers_only_under_its_epoch_before_expiry_and_age():
    cache: KeyCache[str] = KeyCache(lifetime_s=60, max_entries=2)
    cache.put("k1", "alice", "e1", NOW + timedelta(hours=1))
    assert cache.get("k1", "e1", NOW) == "alice"
    assert cache.get("k2", "e1", NOW) is None  # never verified
    assert cache.get("k1", None, NOW) is None  # Redis could not say
    assert cache.get("k1", "e1", NOW + timedelta(hours=1)) is None  # expired: and dropped
    assert cache.get("k1", "e1", NOW) is None
    cache.put("k1", "alice", "e1", None)
    assert cache.get("k1", "e2", NOW) is None and len(cache) == 0  # another epoch: dropped
    cache.put("k1", "alice", None, None)  # verified without an epoch: not kept
    assert len(cache) == 0


def test_the_cache_is_bounded_and_ages_out(monkeypatch):
    cache: KeyCache[str] = KeyCache(lifetime_s=60, max_entries=2)
    for key in ("a", "b"):
        cache.put(key, key, "e", None)
    assert cache.get("a", "e", NOW) == "a"  # a is now the most recently used
    cache.put("c", "c", "e", None)
    assert cache.get("b", "e", NOW) is None and cache.get("a", "e", NOW) == "a" and len(cache) == 2
    later = time.monotonic() + 61
    monkeypatch.setattr("dox_tasks.api.keycache.time.monotonic", lambda: later)
    assert cache.get("a", "e", NOW) is None
    off: KeyCache[str] = KeyCache(lifetime_s=0)
    off.put("a", "a", "e", None)
    assert off.get("a", "e", NOW) is None


@pytest.mark.postgres
@pytest.mark.redis
def test_an_epoch_put_back_to_an_old_value_admits_no_revoked_key(tmp_path, pg_url, redis_url):
    """Redis restarted from a snapshot taken before a revocation's announcement brings back
    the epoch a process cached the revoked key under. A process that has already seen the
    newer epoch (on any key's request) must not use what it verified under the older one."""
    env = _env(tmp_path, pg_url, redis_url)
    store = open_store(pg_url)
    gone, other = (apikeys.create(store, name, "alice", "read") for name in ("gone", "other"))
    server = Server(env, tmp_path, tmp_path / "api.log")
    client = redis.Redis.from_url(redis_url)
    ekey = apikeys.epoch_key(env["DOX_NAMESPACE"])
    try:
        assert _statuses([server], gone.key, 2) == {404}  # cached under the old epoch
        old = client.get(ekey)
        revoked = dox(["apikeys", "revoke", gone.record["api_key"]], env, tmp_path)
        assert revoked.returncode == 0, revoked.stderr
        assert client.get(ekey) != old
        assert _statuses([server], other.key, 2) == {404}  # the process sees the new epoch
        client.set(ekey, old)  # the snapshot restored
        assert _statuses([server], gone.key, 2) == {401}
    finally:
        client.close()
        store.close()
        server.stop()


def test_an_epoch_once_replaced_never_answers_again():
    cache: KeyCache[str] = KeyCache(lifetime_s=60)
    cache.put("k1", "alice", "e1", None)
    assert cache.get("k2", "e2", NOW) is None  # another key's request sees e2
    assert cache.get("k1", "e1", NOW) is None and cache.peek("k1") is None  # e1 back: nothing
    cache.get("k2", "e2", NOW)
    cache.put("k1", "alice", "e1", None)  # a slow request that read e1 before e2 was seen
    assert len(cache) == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_a_revocation_from_a_shell_without_redis_is_not_silent(tmp_path, pg_url, redis_url):
    """`dox apikeys revoke` run where no Redis is configured (only the database URL) cannot
    tell the servers: it must say so (exit 1), not report success while a warm cache
    keeps accepting the key."""
    env = _env(tmp_path, pg_url, redis_url)
    store = open_store(pg_url)
    made = apikeys.create(store, "shell", "alice", "read")
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        assert _statuses([server], made.key, 2) == {404}
        shell = {k: v for k, v in env.items() if k not in ("DOX_BROKER_URL", "DOX_REDIS_URL")}
        revoked = dox(["apikeys", "revoke", made.record["api_key"]], shell, tmp_path)
        accepted = 404 in _statuses([server], made.key, 1)
        assert not (revoked.returncode == 0 and accepted), (revoked.stdout, revoked.stderr)
    finally:
        store.close()
        server.stop()
