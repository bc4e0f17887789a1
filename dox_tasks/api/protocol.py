"""uvicorn's httptools protocol with a bound on how much of a request head it will read.

httptools (llhttp) has no header limit, and uvicorn's protocol sets none: every byte of a
request head is buffered until the blank line that ends it. Measured here: an 8 MB header
took 0.6 s to reach the app, a 64 MiB one 22 s of a core and 27 MiB of memory — all before
:class:`~dox_tasks.api.edge.HeaderLimit` could answer 431. (h11 has a bound,
``h11_max_incomplete_event_size``, 16 KiB by default, but it answers a plain-text 400 and
DOX serves with httptools for speed.) This subclass counts the bytes received while a
head is incomplete and, past :data:`MAX_HEAD_BYTES`, answers 431 and closes the
connection without reading further. The bound is deliberately above the app's 16 KiB: a
head between the two still gets the app's 431 problem document; this one is the backstop
for heads nobody would send in good faith. Memory per connection stays under the bound
plus one socket read.

Nor does uvicorn bound the *time* a head may take: a connection that sends nothing, or a
header line every few seconds, held its socket forever (no key needed, and not counted as a
request, so :class:`~dox_tasks.api.edge.ConcurrencyLimit` never saw it) — enough of them and
the process runs out of file handles. Each head must therefore be complete within
``DOX_API_HEAD_TIMEOUT_S`` (10 s) of the connection opening or of the previous answer ending:
after that the connection is closed, with a 408 problem document if a head had begun.

``dox api serve`` passes the class as uvicorn's ``http`` (a documented option that takes a
protocol class). The parent's methods are called unchanged; only ``data_received`` and two
parser callbacks are wrapped, so an uvicorn upgrade that renames them fails the test in
``tests/test_api_limits.py`` rather than silently dropping the bound.
"""

from __future__ import annotations

import asyncio
import functools
import json
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..settings import load
from .problems import MEDIA_TYPE, TYPE_BASE

#: Request line and headers together; beyond this the connection is answered and closed.
MAX_HEAD_BYTES = 64 * 1024


def _closing_problem(status: HTTPStatus, slug: str, detail: str) -> bytes:
    """A whole HTTP answer with a problem document, closing the connection (written raw:
    these are answered before, or instead of, a request the app could see)."""
    body = json.dumps(
        {"type": TYPE_BASE + slug, "title": status.phrase, "status": status.value, "detail": detail}
    ).encode()
    head = f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: {MEDIA_TYPE}\r\n"
    return head.encode() + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body


_ANSWER = _closing_problem(
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
    "headers-too-large",
    f"the request head exceeds {MAX_HEAD_BYTES // 1024} KiB; the connection is closed",
)
_SLOW = _closing_problem(
    HTTPStatus.REQUEST_TIMEOUT,
    "request-timeout",
    "the request head did not arrive in time; the connection is closed",
)
#: What uvicorn answers in plain text for a request httptools cannot parse.
_MALFORMED = _closing_problem(
    HTTPStatus.BAD_REQUEST,
    "malformed-request",
    "the request is not valid HTTP/1.1 (a control character in a header, a bad Content-Length"
    " or chunk size, …); the connection is closed",
)


@functools.cache
def head_timeout_s() -> float:
    """``DOX_API_HEAD_TIMEOUT_S``, read once per server process (uvicorn makes the protocol)."""
    return load().api_head_timeout_s


class BoundedHttpTools(HttpToolsProtocol):
    """HttpToolsProtocol that stops reading a request head past :data:`MAX_HEAD_BYTES` and
    closes a connection whose head takes longer than :func:`head_timeout_s`."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._in_head, self._head_bytes = True, 0
        self._head_timer: asyncio.TimerHandle | None = None

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(head_timeout_s(), self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
            return  # an answer is on its way (a pipelined request): never cut it
        if self._head_bytes:
            self.transport.write(_SLOW)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to an unparsable request, as a problem document (not plain text)."""
        self.transport.write(_MALFORMED)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head (uvicorn's keep-alive may close first)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # a kept-alive connection's next request

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            # A previous request's answer may still be on its way (pipelining): then no
            # answer of ours can be put in between, only the close.
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(_ANSWER)
            self.transport.close()
