"""One contract, three implementations: Redis (production), files in the state folder (the
embedded default) and memory (unit tests)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import services

from dox_tasks.ratelimit import FileRateLimiter, MemoryRateLimiter, RedisRateLimiter


@pytest.fixture(params=["memory", "files", "redis"])
def limiter(request, tmp_path):
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    if request.param == "files":
        yield FileRateLimiter(tmp_path / "ratelimit")
        return
    problem = services.redis_ok()
    if problem:
        services.unavailable("Redis", problem)
    import redis

    client = redis.Redis.from_url(services.REDIS_URL)
    ns = f"t{uuid.uuid4().hex[:8]}"
    yield RedisRateLimiter(client, ns)
    for key in client.scan_iter(f"{ns}:*"):
        client.delete(key)


def test_positions_are_exact_under_concurrency(limiter):
    ids = [f"wf-{i}" for i in range(50)]
    with ThreadPoolExecutor(20) as pool:
        positions = list(pool.map(lambda w: limiter.admit("dave", w, "2026-11-22"), ids))
    assert sorted(positions) == list(range(1, 51))
    assert limiter.count("dave", "2026-11-22") == 50


def test_redelivery_keeps_its_position(limiter):
    first = limiter.admit("erin", "wf-a", "2026-11-22")
    limiter.admit("erin", "wf-b", "2026-11-22")
    assert limiter.admit("erin", "wf-a", "2026-11-22") == first
    assert limiter.count("erin", "2026-11-22") == 2


def test_days_and_users_are_separate(limiter):
    assert limiter.admit("frank", "wf-1", "2026-11-22") == 1
    assert limiter.admit("frank", "wf-2", "2026-11-23") == 1
    assert limiter.admit("grace", "wf-3", "2026-11-22") == 1


def test_the_embedded_count_outlives_the_process_and_old_days_go(tmp_path):
    """`dox run` twice on one day: the second run counts on from the first."""
    first = FileRateLimiter(tmp_path / "rl")
    assert [first.admit("ann", f"w{i}", "2026-11-22") for i in range(3)] == [1, 2, 3]
    assert first.admit("ann", "w0", "2026-11-22") == 1  # idempotent per workflow
    later = FileRateLimiter(tmp_path / "rl")  # another process, same state folder
    assert later.admit("ann", "w3", "2026-11-22") == 4 and later.count("ann", "2026-11-22") == 4
    later.admit("ann", "x", "2026-11-23")
    later.admit("ann", "y", "2026-11-25")  # two days on: 11-22 is forgotten, 11-23 too
    assert sorted(p.name for p in (tmp_path / "rl").iterdir()) == ["2026-11-25"]
