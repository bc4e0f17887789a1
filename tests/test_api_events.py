"""``GET /api/v1/events`` as a client sees it: a real `dox api serve`, PostgreSQL and Redis.

Events are emitted through the real :class:`EventBus` (row first, then the stream) on
workflows the test creates, or by a real worker running a real workflow. A client reads,
disconnects, more happens, it resumes with ``Last-Event-ID``: every event arrives, none lost,
also when the stream was trimmed or deleted meanwhile (replayed from ``workflow_events``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pdfs
import pytest
import redis
import services
from apiserver import OPERATOR_KEY, Server, api_env, bearer, problem
from services import server_env
from stores import new_workflow

from dox_tasks import apikeys
from dox_tasks.api.event_feed import PAGE, Cursor, StreamId
from dox_tasks.api.events import STREAMS_PER_KEY
from dox_tasks.db import queries
from dox_tasks.db.store import StateStore, open_store
from dox_tasks.events import EventBus, RedisFanout
from dox_tasks.settings import stream_key

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_cursor_round_trips_and_refuses_what_it_never_sent() -> None:
    assert Cursor.parse("1765152000123-4") == Cursor(StreamId(1765152000123, 4))
    replaying = Cursor.parse(" 1765152000123-0.1765151940000001 ")
    assert replaying == Cursor(StreamId(1765152000123, 0), 1765151940000001)
    assert str(replaying) == "1765152000123-0.1765151940000001"
    assert StreamId.of(b"5-1") < StreamId(5, 2) < StreamId(6, 0)
    for text in ("", "0", "abc", "1-2-3", "1-", "-1", "1.5", "1-0.", "1-0.x", "1-18446744073709551616"):
        assert Cursor.parse(text) is None, text


@dataclass
class Sse:
    """One SSE connection, read event by event (comments as ``{"comment": …}``)."""

    response: httpx.Response
    client: httpx.Client
    lines: Iterator[str]

    @classmethod
    def open(cls, url: str, headers: dict[str, str]) -> Sse:
        client = httpx.Client(timeout=httpx.Timeout(10.0))
        response = client.send(client.build_request("GET", url, headers=headers), stream=True)
        return cls(response, client, response.iter_lines())

    def next(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        for line in self.lines:
            if line == "":
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            fields[name or "comment"] = value.removeprefix(" ")
        raise AssertionError("the stream ended")

    def until(self, wanted: set[str], timeout: float = 10) -> list[dict[str, str]]:
        """Events (SSE fields plus ``eid``, the event's own id) until every id of ``wanted`` came;
        fails after ``timeout`` seconds (heartbeats keep the connection, so time is checked here)."""
        seen: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout
        while not wanted <= {f["eid"] for f in seen}:
            assert time.monotonic() < deadline, f"missing {wanted - {f['eid'] for f in seen}}"
            fields = self.next()
            if "data" in fields:
                seen.append({**fields, "eid": json.loads(fields["data"])["id"]})
        return seen

    def close(self) -> None:
        self.response.close()
        self.client.close()


@dataclass
class World:
    server: Server
    store: StateStore
    bus: EventBus
    redis: redis.Redis
    stream: str

    def open(self, key: str = OPERATOR_KEY, query: str = "", last: str | None = None) -> Sse:
        headers = bearer(key)
        if last is not None:
            headers["Last-Event-ID"] = last
        return Sse.open(f"{self.server.url}/api/v1/events{query}", headers)

    def emit(self, workflow_id: str | None, n: int = 1, type_: str = "test.happened") -> list[str]:
        ids = []
        for _ in range(n):
            event_id = f"{workflow_id or 'none'}:{type_}:{uuid.uuid4().hex[:8]}"
            assert self.bus.emit(event_id, workflow_id, type_, {"n": len(ids)})
            ids.append(event_id)
        return ids


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One server for the module (its start dominates): each test owns its workflows; the
    last test stops it."""
    down = services.redis_ok()
    if down:
        services.unavailable("Redis", down)
    tmp_path = tmp_path_factory.mktemp("events")
    pg_url = services.create_database()
    store = open_store(pg_url)
    store.migrate()
    env = api_env(tmp_path, pg_url, services.REDIS_URL, DOX_API_SSE_HEARTBEAT_S="1")
    server = Server(env, tmp_path, tmp_path / "api.log")
    client = redis.Redis.from_url(services.REDIS_URL)
    ns = env["DOX_NAMESPACE"]
    bus = EventBus(store, RedisFanout(client, ns), tmp_path / "banks")
    yield World(server, store, bus, client, stream_key(ns))
    server.stop()
    client.delete(stream_key(ns))
    client.close()
    store.close()
    services.drop_database(pg_url)


def test_resume_with_last_event_id_loses_nothing(world: World) -> None:
    wid = new_workflow(world.store, user="alice")
    sse = world.open()
    first = world.emit(wid, 3)
    got = sse.until(set(first))
    assert [e["eid"] for e in got] == first
    assert [e["event"] for e in got] == ["test.happened"] * 3
    assert all(e["id"].count("-") == 1 and "." not in e["id"] for e in got)  # stream ids
    sse.close()

    missed = world.emit(wid, 4)  # while nobody listens
    sse = world.open(last=got[-1]["id"])
    again = sse.until(set(missed))
    assert [e["eid"] for e in again] == missed  # the stream still holds them: exactly those, in order
    live = world.emit(wid, 1)
    assert [e["eid"] for e in sse.until(set(live))] == live
    sse.close()


def test_resume_after_trim_or_delete_replays_from_postgres(world: World) -> None:
    wid = new_workflow(world.store, user="alice")
    sse = world.open()
    seen = sse.until(set(world.emit(wid, 2)))
    sse.close()

    missed = world.emit(wid, 5)
    world.redis.xtrim(world.stream, maxlen=1, approximate=False)  # only the newest is left
    sse = world.open(query=f"?last_event_id={seen[-1]['id']}")
    got = sse.until(set(missed))
    replayed = [e for e in got if "." in e["id"]]
    assert {e["eid"] for e in replayed} >= set(missed[:4]), "the trimmed ones come from PostgreSQL"
    assert all(e["id"].startswith(seen[-1]["id"] + ".") for e in replayed)
    rows = {r["id"]: r for r in queries.list_events(world.store)}
    for e in replayed:  # a replayed event is its row, in the stream's shape
        body = json.loads(e["data"])
        assert body["payload"] == rows[e["eid"]]["payload"]
        assert body["workflow_id"] == rows[e["eid"]]["workflow_id"]
    sse.close()

    # The stream deleted (a Redis restart without persistence), more events meanwhile.
    later = world.emit(wid, 3)
    world.redis.delete(world.stream)
    sse = world.open(last=got[-1]["id"])
    back = sse.until(set(later))
    resume_at = next(e for e in back if e["eid"] == later[0])["id"]
    assert "." in resume_at  # a replay position
    sse.close()

    # Resumed from the middle of a replay: the rest follows, then the new stream, live.
    sse = world.open(last=resume_at)
    assert {e["eid"] for e in sse.until(set(later[1:]))} >= set(later[1:])
    live = world.emit(wid, 1)
    assert sse.until(set(live))[-1]["eid"] == live[0]
    sse.close()


def test_a_replay_longer_than_a_page_is_whole_and_in_order(world: World) -> None:
    wid = new_workflow(world.store, user="frank")
    emitted = world.emit(wid, PAGE + 20)
    world.redis.delete(world.stream)
    sse = world.open(query=f"?workflow_id={wid}", last="0-0")
    got = sse.until(set(emitted), timeout=20)
    assert [e["eid"] for e in got] == emitted  # two pages, by (created_at, id), nothing twice
    sse.close()


def test_read_sees_its_users_events_read_all_sees_all(world: World) -> None:
    alice = new_workflow(world.store, user="dana")  # users no other test of the module has
    bob = new_workflow(world.store, sha="b" * 64, user="erin")
    reader = apikeys.create(world.store, "dana-reader", "dana", "read").key
    everyone = apikeys.create(world.store, "carol", "carol", "read,read_all").key
    before = world.emit(alice) + world.emit(bob) + world.emit(None)  # replayed (from 0-0) …
    mine = world.open(reader, last="0-0")
    every = world.open(everyone, last="0-0")
    only_bob = world.open(everyone, query=f"?workflow_id={bob}&last_event_id=0-0")
    after = world.emit(alice) + world.emit(bob) + world.emit(None)  # … and live
    end = world.emit(alice)

    assert {e["eid"] for e in mine.until(set(end))} == {before[0], after[0], end[0]}
    assert {e["eid"] for e in every.until(set(end))} >= {*before, *after, *end}  # + other tests' events
    bobs = only_bob.until({after[1]})
    assert {e["eid"] for e in bobs} == {before[1], after[1]}
    for sse in (mine, every, only_bob):
        sse.close()


def test_refusals_heartbeat_and_openapi(world: World) -> None:
    submitter = apikeys.create(world.store, "submit", "alice", "submit").key
    server = world.server
    problem(server.get("/api/v1/events"), 401)
    problem(server.get("/api/v1/events", bearer(submitter)), 403)
    bad = problem(server.get("/api/v1/events?last_event_id=yesterday", bearer(OPERATOR_KEY)), 400)
    assert "Last-Event-ID" in bad["detail"]
    far = {**bearer(OPERATOR_KEY), "Last-Event-ID": "999999999999999-0"}  # after the year 9999
    problem(server.get("/api/v1/events", far), 400)
    problem(server.get("/api/v1/events?workflow_id=../x", bearer(OPERATOR_KEY)), 422)

    sse = world.open()
    assert sse.response.headers["content-type"].startswith("text/event-stream")
    assert sse.response.headers["cache-control"] == "no-cache"
    assert sse.next() == {"retry": "3000"}
    started = time.monotonic()
    assert sse.next() == {"comment": "heartbeat"}  # DOX_API_SSE_HEARTBEAT_S=1
    assert time.monotonic() - started < 3
    sse.close()

    doc = server.get("/api/v1/openapi.json")[2]
    ok = doc["paths"]["/api/v1/events"]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["text/event-stream"]


def _sse_connections(world: World) -> int:
    name = world.stream.removesuffix(":events") + ".events"
    return sum(1 for c in world.redis.client_list() if c.get("name") == name)


def test_one_key_cannot_hold_every_stream(world: World) -> None:
    """One read key opened all 256 streams of a process and every other user's was 503."""
    before = _sse_connections(world)
    greedy = apikeys.create(world.store, "greedy", "gina", "read").key
    other = apikeys.create(world.store, "other", "hal", "read").key
    streams = [world.open(greedy) for _ in range(STREAMS_PER_KEY)]
    assert all(s.response.status_code == 200 for s in streams)
    refused = world.open(greedy)
    assert refused.response.status_code == 429 and refused.response.headers["retry-after"] == "5"
    assert "close one" in json.loads(refused.response.read())["detail"]
    refused.close()
    theirs = world.open(other)
    assert theirs.response.status_code == 200
    theirs.close()
    streams.pop().close()  # one given back: the key may open one again
    deadline = time.monotonic() + 5
    while (again := world.open(greedy)).response.status_code == 429 and time.monotonic() < deadline:
        again.close()
        time.sleep(0.1)
    assert again.response.status_code == 200
    for s in [*streams, again]:
        s.close()
    deadline = time.monotonic() + 10  # every Redis connection given back before the next test
    while _sse_connections(world) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sse_connections(world) == before


def test_disconnect_frees_its_connection_and_server_stops_promptly(world: World) -> None:
    before = _sse_connections(world)  # 0 unless an earlier test failed with its stream open
    clients = [world.open(), world.open()]
    assert clients[0].next() == {"retry": "3000"}
    assert _sse_connections(world) == before + 2
    for sse in clients:
        sse.close()
    deadline = time.monotonic() + 5
    while _sse_connections(world) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sse_connections(world) == before

    listening = world.open()
    assert listening.next() == {"retry": "3000"}
    started = time.monotonic()
    log = world.server.stop()
    assert time.monotonic() - started < 5, log
    assert "graceful shutdown exceeded" not in log and "Traceback" not in log, log
    listening.close()


def test_a_real_workflow_is_seen_live_and_replayed(tmp_path: Path, dox: Any) -> None:
    env = server_env(tmp_path, dox.settings, API_KEY=OPERATOR_KEY)
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        url = f"{server.url}/api/v1/events"
        live = Sse.open(url, bearer(OPERATOR_KEY))
        wid = dox.submit(pdfs.simple(), user="alice")
        dox.wait([wid])
        rows = queries.list_events(dox.rt.state, workflow_id=wid)
        assert [r["type"] for r in rows] == ["workflow.success"]
        got = live.until({rows[0]["id"]}, timeout=20)
        assert got[-1]["event"] == "workflow.success"
        live.close()
        dox.rt.redis.delete(stream_key(dox.settings.namespace))
        resume = {**bearer(OPERATOR_KEY), "Last-Event-ID": got[-1]["id"]}
        replay = Sse.open(f"{url}?workflow_id={wid}", resume)
        assert replay.until({rows[0]["id"]})[0]["event"] == "workflow.success"
        replay.close()
    finally:
        server.stop()


def test_redis_unreachable_is_a_503_problem(tmp_path: Path, pg_url: str) -> None:
    dead = f"redis://127.0.0.1:{services.free_port()}/0"
    env = api_env(tmp_path, pg_url, services.REDIS_URL, DOX_REDIS_URL=dead)
    server = Server(env, tmp_path, tmp_path / "api.log")
    try:
        answer = server.get("/api/v1/events", bearer(OPERATOR_KEY))
        assert "unavailable" in problem(answer, 503)["detail"]
        assert server.get("/health")[0] == 200  # the server goes on
    finally:
        log = server.stop()
    assert "Traceback" not in log
