"""The live-events feed: the Redis stream ``<ns>:events`` from a position, with the gaps the
stream no longer holds replayed from ``workflow_events`` in PostgreSQL (the record).

A position is a :class:`Cursor`, sent to the client as each event's SSE ``id``:

* ``<ms>-<seq>`` — a stream entry id: everything after that entry is still to come.
* ``<ms>-<seq>.<µs>`` — a replayed row: the replay resumed from stream entry ``<ms>-<seq>`` and
  reached rows created at ``<µs>`` (microseconds since the epoch); resuming replays from there.

Why a replay cannot miss an event (docs/OPERATIONS.md §9.5 has the whole argument): every
event's row is committed *before* its XADD (:meth:`dox_tasks.events.EventBus.emit`), so an
entry's stream time is later than its row's ``created_at`` up to the clock skew between hosts
and the commit-to-XADD delay, both far below the overlap (``DOX_API_SSE_OVERLAP_S``, 60 s).
When the stream's oldest entry is newer than the client's position (trimmed past it, or the
stream deleted), rows created from ``position − overlap`` to ``oldest entry + overlap`` are
replayed, then the stream is read from the position (it starts at that oldest entry); if the
oldest entry moved meanwhile the replay goes round again. Events in the overlaps come twice:
delivery is at least once, and event ids are deterministic so a client drops repeats.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import asyncio as aredis

from ..db import queries
from ..db.store import StateStore, aware
from ..errors import TransientError

#: Rows per replay page (one query each) and entries per XREAD.
PAGE = 500
#: An XREAD blocks at most this long, so a shutting-down server ends its streams promptly.
POLL_S = 1.0
#: Workflow → user answers a connection remembers (an owner never changes); cleared when full.
OWNER_CACHE = 10_000

#: 10000-01-01 in milliseconds since the epoch: no position is at or after it.
_LAST_MS = 253_402_300_800_000
_ID = re.compile(r"^(\d{1,15})-(\d{1,19})(?:\.(\d{1,19}))?$")


@dataclass(frozen=True, order=True)
class StreamId:
    """A Redis stream entry id, ordered as Redis orders them."""

    ms: int
    seq: int = 0

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    @classmethod
    def of(cls, raw: bytes | str) -> StreamId:
        text = raw.decode() if isinstance(raw, bytes) else raw
        ms, _, seq = text.partition("-")
        return cls(int(ms), int(seq or 0))


@dataclass(frozen=True)
class Cursor:
    """Where a client is: after stream entry ``stream``; while replaying, also at row time ``row_us``."""

    stream: StreamId
    row_us: int | None = None

    def __str__(self) -> str:
        return str(self.stream) if self.row_us is None else f"{self.stream}.{self.row_us}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor an SSE id names, or None for text that is not one (also for times past
        the year 9999 and sequence numbers Redis cannot hold: they would fail mid-stream)."""
        m = _ID.match(text.strip())
        if m is None:
            return None
        ms, seq, row = int(m[1]), int(m[2]), int(m[3]) if m[3] is not None else None
        if ms >= _LAST_MS or seq >= 2**64 or (row is not None and row >= _LAST_MS * 1000):
            return None
        return cls(StreamId(ms, seq), row)


@dataclass(frozen=True)
class FeedEvent:
    """One event for the client: its SSE id, its type, its JSON."""

    id: str
    type: str
    data: str


@dataclass(frozen=True)
class Audience:
    """Whose events a client sees: one user's (``user``; None: everyone's), one workflow's or all."""

    user: str | None
    workflow_id: str | None = None


def _us(ts: datetime) -> int:
    delta = aware(ts) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _at(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _row_json(row: dict[str, Any]) -> str:
    """A replayed row in the shape of a stream entry's ``data``."""
    event = {
        "id": row["id"],
        "type": row["type"],
        "workflow_id": row["workflow_id"],
        "created_at": aware(row["created_at"]).isoformat(),
        "payload": row["payload"],
    }
    return json.dumps(event, sort_keys=True, default=str)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class EventFeed:
    """One client's feed. Yields :class:`FeedEvent` s, and None when nothing was sent for a
    heartbeat period (the caller writes a comment line); stops when ``stopping()`` is true.

    ``client`` is the connection for this feed alone (a blocked XREAD holds it); the caller
    closes it. Database reads run in a thread, off the event loop.
    """

    def __init__(
        self,
        client: aredis.Redis,
        stream: str,
        store: StateStore,
        audience: Audience,
        *,
        heartbeat_s: float,
        overlap_s: float,
        stopping: Callable[[], bool] = lambda: False,
    ):
        self.client, self.stream, self.store, self.audience = client, stream, store, audience
        self.heartbeat_s, self.overlap_us = heartbeat_s, int(overlap_s * 1_000_000)
        self.stopping = stopping
        self._owners: dict[str, str | None] = {}

    # -- Redis -----------------------------------------------------------------------
    async def _call(self, what: str, command: Any) -> Any:
        try:
            return await command
        except aredis.RedisError as exc:
            raise TransientError(f"live events: {what} failed on Redis: {exc}") from exc

    async def head(self) -> StreamId | None:
        """The oldest entry the stream holds (None: no stream, or an empty one)."""
        oldest = await self._call("XRANGE", self.client.xrange(self.stream, "-", "+", count=1))
        return StreamId.of(oldest[0][0]) if oldest else None

    async def newest(self) -> StreamId:
        """The newest entry's id (``0-0`` without a stream): where a client without a position starts."""
        last = await self._call("XREVRANGE", self.client.xrevrange(self.stream, "+", "-", count=1))
        return StreamId.of(last[0][0]) if last else StreamId(0, 0)

    async def start(self, cursor: Cursor | None) -> tuple[Cursor, bool]:
        """Where this feed begins, and whether it resumes (a new client starts after the newest
        entry, with no replay). Asked before the response starts, so a Redis that is down is a
        503 rather than a stream that ends at once."""
        if cursor is not None:
            await self.head()
            return cursor, True
        return Cursor(await self.newest()), False

    # -- the feed --------------------------------------------------------------------
    async def events(self, cursor: Cursor, resume: bool = True) -> AsyncIterator[FeedEvent | None]:
        """Every event after ``cursor`` the audience may see (replayed from PostgreSQL where the
        stream no longer holds them, when ``resume``), then the live ones as they come."""
        after = cursor.stream
        if resume:
            since_us = cursor.row_us if cursor.row_us is not None else after.ms * 1000
            async for replayed in self._replay(after, since_us):
                yield replayed
        async for item in self._tail(after):
            yield item

    async def _tail(self, after: StreamId) -> AsyncIterator[FeedEvent | None]:
        quiet_since = time.monotonic()
        block_ms = max(1, int(min(POLL_S, self.heartbeat_s) * 1000))
        while not self.stopping():
            reply = await self._call(
                "XREAD", self.client.xread({self.stream: str(after)}, count=PAGE, block=block_ms)
            )
            entries = reply[0][1] if reply else []
            for item in await self._visible(entries):
                yield item
                quiet_since = time.monotonic()
            if entries:
                after = StreamId.of(entries[-1][0])
            if time.monotonic() - quiet_since >= self.heartbeat_s:
                yield None
                quiet_since = time.monotonic()
            if len(entries) == PAGE:  # behind: was the stream trimmed past us meanwhile?
                async for replayed in self._replay(after, after.ms * 1000):
                    yield replayed
                    quiet_since = time.monotonic()

    async def _replay(self, after: StreamId, since_us: int) -> AsyncIterator[FeedEvent]:
        """The rows of the events the stream no longer holds after ``after`` (nothing when it
        holds them all), from ``since_us − overlap`` up to its oldest entry + overlap."""
        low = since_us - self.overlap_us
        key: tuple[datetime, str] | None = None
        while not self.stopping():
            head = await self.head()
            if head is not None and head <= after:
                return  # the stream holds every entry after `after`: the tail reads them
            upper = None if head is None else head.ms * 1000 + self.overlap_us
            rows = await asyncio.to_thread(
                queries.event_page,
                self.store,
                since=_at(low),
                before=None if upper is None else _at(upper),
                after=key,
                user=self.audience.user,
                workflow_id=self.audience.workflow_id,
                limit=PAGE,
            )
            for row in rows:
                yield FeedEvent(f"{after}.{_us(row['created_at'])}", row["type"], _row_json(row))
            if rows:
                key = (rows[-1]["created_at"], rows[-1]["id"])
            if len(rows) < PAGE:
                if head is None or await self.head() == head:
                    return
                # Trimmed further while we read: go round with a higher bound, from an overlap
                # before where we were (a row committed late, below the keyset, is caught).
                if key is not None:
                    low, key = _us(key[0]) - self.overlap_us, None

    async def _visible(self, entries: list[tuple[Any, dict[Any, Any]]]) -> list[FeedEvent]:
        """The entries this audience may see, as events."""
        parsed: list[tuple[str, str, str, str | None]] = []
        for entry_id, fields in entries:
            data = _text(fields.get(b"data", fields.get("data", b"{}")))
            kind = _text(fields.get(b"type", fields.get("type", b"message")))
            try:
                body = json.loads(data)
            except ValueError:
                continue  # not an event DOX wrote
            wid = body.get("workflow_id") if isinstance(body, dict) else None
            parsed.append((_text(entry_id), kind, data, wid if isinstance(wid, str) else None))
        wanted = self.audience.workflow_id
        if wanted is not None:
            parsed = [p for p in parsed if p[3] == wanted]
        if self.audience.user is not None:
            await self._learn_owners({p[3] for p in parsed if p[3] is not None})
            parsed = [p for p in parsed if p[3] is not None and self._owners.get(p[3]) == self.audience.user]
        return [FeedEvent(entry_id, kind, data) for entry_id, kind, data, _ in parsed]

    async def _learn_owners(self, workflow_ids: set[str]) -> None:
        unknown = workflow_ids - self._owners.keys()
        if not unknown:
            return
        if len(self._owners) + len(unknown) > OWNER_CACHE:
            self._owners.clear()
        found = await asyncio.to_thread(queries.workflow_users, self.store, unknown)
        # A workflow not found yet may be created in a moment: only found owners are kept.
        self._owners.update(found)
