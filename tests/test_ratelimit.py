"""One contract, two implementations: Redis (production) and memory (embedded)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import services

from dox_tasks.ratelimit import MemoryRateLimiter, RedisRateLimiter


@pytest.fixture(params=["memory", "redis"])
def limiter(request):
    if request.param == "memory":
        yield MemoryRateLimiter()
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
