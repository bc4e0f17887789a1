"""``GET /api/v1/events``: the live events as Server-Sent Events, resumable and at least once.

Each event is ``id:`` (its position, see :mod:`.event_feed`), ``event:`` (its type) and
``data:`` (the event's JSON: ``id``, ``type``, ``workflow_id``, ``created_at``, ``payload``). A
client resumes with ``Last-Event-ID`` (browsers send it on their own when they reconnect) or
``?last_event_id=`` (for clients that cannot set headers; the header wins, being the newer
position after an automatic reconnect). An SSE comment line (``: heartbeat``) follows every
``DOX_API_SSE_HEARTBEAT_S`` quiet seconds, so proxies keep the connection.

A ``read`` key sees the events of its user's workflows; ``read_all`` every event (also those of
no workflow: intake switches, maintenance). ``?workflow_id=`` narrows to one workflow.

Each stream has a Redis connection of its own (a blocked XREAD holds it), named
``<namespace>.events`` and closed when the client goes. uvicorn waits for open responses
before it stops and tells the app nothing, so the exit signal is chained here: on SIGTERM or
SIGINT every stream ends within :data:`~.event_feed.POLL_S` and the server stops promptly.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import StreamingResponse
from redis import asyncio as aredis

from ..errors import DoxError
from ..settings import Settings, stream_key
from .auth import Caller, needs
from .event_feed import POLL_S, Audience, Cursor, EventFeed, FeedEvent
from .problems import Problem

log = logging.getLogger("dox.api.events")

#: What a browser waits before it reconnects (the SSE ``retry:`` field), in milliseconds.
RETRY_MS = 3000
MEDIA_TYPE = "text/event-stream"


#: Live event streams one key (or API_KEY) may hold open in one server process. A listener
#: needs one or two; without a bound one key took every stream the process allows (256 with
#: the default DOX_API_MAX_CONCURRENT) and every other user's stream was 503.
STREAMS_PER_KEY = 16


class EventStreamResponse(StreamingResponse):
    media_type = MEDIA_TYPE
    #: Called once the response has ended, however it ended (the body generator's own
    #: ``finally`` does not run when the client is gone before the body starts).
    on_close: Callable[[], None] = staticmethod(lambda: None)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _hold_stream(request: Request, caller: Caller) -> Callable[[], None]:
    """Count one more open stream for the caller's key (429 past :data:`STREAMS_PER_KEY`);
    returns what gives it back."""
    held: Counter[str] | None = getattr(request.app.state, "streams_by_key", None)
    if held is None:
        held = request.app.state.streams_by_key = Counter()
    who = f"key:{caller.prefix}" if caller.prefix else f"user:{caller.user}"
    if held[who] >= STREAMS_PER_KEY:
        raise Problem(
            429,
            "too-many-streams",
            f"this API key already holds {STREAMS_PER_KEY} live event streams on this server;"
            " close one before opening another",
            {"Retry-After": "5"},
        )
    held[who] += 1

    def release() -> None:
        held[who] -= 1
        if held[who] <= 0:
            del held[who]

    return functools.partial(_once, [release])


def _once(pending: list[Callable[[], None]]) -> None:
    while pending:
        pending.pop()()


def _chain_exit_signals(stopping: threading.Event) -> Callable[[], None]:
    """Set ``stopping`` on SIGTERM/SIGINT, then call the handler already there (uvicorn's)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    chained: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue  # not a server that handles it: leave the default alone

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            stopping.set()
            previous(signum, frame)

        signal.signal(sig, handler)
        chained[sig] = previous

    def restore() -> None:
        for sig, previous in chained.items():
            signal.signal(sig, previous)

    return restore


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    stopping = threading.Event()
    app.state.events_stopping = stopping
    restore = _chain_exit_signals(stopping)
    try:
        yield
    finally:
        stopping.set()
        restore()


router = APIRouter(prefix="/api/v1", lifespan=_lifespan)

_EVENT_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `id:`, `event:` (the type) and `data:` (the event's JSON)"
        " per event; `: heartbeat` comment lines when quiet. Never ends on its own.",
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
    }
}


def _frame(event: FeedEvent) -> bytes:
    kind = event.type.replace("\r", " ").replace("\n", " ")
    data = event.data.replace("\r", " ").replace("\n", " ")  # JSON has no raw newlines; be sure
    return f"id: {event.id}\nevent: {kind}\ndata: {data}\n\n".encode()


async def _stream(
    feed: EventFeed, cursor: Cursor, resume: bool, client: aredis.Redis
) -> AsyncIterator[bytes]:
    """The response body; the connection is closed however it ends (a client that goes away
    cancels this at its current await)."""
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        async for item in feed.events(cursor, resume):
            yield b": heartbeat\n\n" if item is None else _frame(item)
    except DoxError as exc:  # Redis or PostgreSQL went away: the client reconnects and resumes
        log.warning("live events stream ended: %s", exc)
    except Exception:  # noqa: BLE001 - the response has started: log it, end the stream
        log.exception("live events stream failed")
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def _open_client(settings: Settings) -> aredis.Redis:
    if not settings.redis:
        raise Problem(503, "unavailable", "live events need Redis (DOX_REDIS_URL or a Redis broker)")
    return aredis.Redis.from_url(
        settings.redis,
        single_connection_client=True,
        client_name=f"{settings.namespace}.events",
        socket_connect_timeout=5,
        socket_timeout=POLL_S + 10,
    )


@router.get(
    "/events",
    tags=["events"],
    response_class=EventStreamResponse,
    responses=_EVENT_STREAM_DOC,
)
async def events(
    request: Request,
    caller: Caller = Depends(needs("read")),
    last_event_id: str | None = Query(
        None, max_length=64, description="Resume after this event id (when `Last-Event-ID` cannot be sent)."
    ),
    workflow_id: str | None = Query(
        None, pattern=r"^[0-9A-Za-z-]{1,36}$", description="Only the events of this workflow."
    ),
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID", max_length=64),
) -> EventStreamResponse:
    """Live events as Server-Sent Events, from the Redis stream, resumable with `Last-Event-ID`
    (replayed from PostgreSQL where the stream no longer holds them): at least once, so drop
    repeats by the event's own `id` in `data`. Scope `read` (own user's) or `read_all`."""
    given = last_event_id_header or last_event_id
    cursor = Cursor.parse(given) if given else None
    if given and cursor is None:
        raise Problem(400, "bad-event-id", "Last-Event-ID is not an event id this API sent")
    rt = request.app.state.runtime
    settings: Settings = rt.settings
    audience = Audience(None if caller.allows("read_all") else caller.user, workflow_id)
    release = _hold_stream(request, caller)
    try:
        client = _open_client(settings)
    except BaseException:
        release()
        raise
    stopping: threading.Event = request.app.state.events_stopping
    feed = EventFeed(
        client,
        stream_key(settings.namespace),
        rt.state,
        audience,
        heartbeat_s=settings.api_sse_heartbeat_s,
        overlap_s=settings.api_sse_overlap_s,
        stopping=stopping.is_set,
    )
    try:
        start, resume = await feed.start(cursor)
    except BaseException:
        release()
        with anyio.CancelScope(shield=True):
            await client.aclose()
        raise
    answer = EventStreamResponse(
        _stream(feed, start, resume, client),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    answer.on_close = release
    return answer
