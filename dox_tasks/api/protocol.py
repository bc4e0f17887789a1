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

``dox api serve`` passes the class as uvicorn's ``http`` (a documented option that takes a
protocol class). The parent's methods are called unchanged; only ``data_received`` and two
parser callbacks are wrapped, so an uvicorn upgrade that renames them fails the test in
``tests/test_api_limits.py`` rather than silently dropping the bound.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .problems import MEDIA_TYPE, TYPE_BASE

#: Request line and headers together; beyond this the connection is answered and closed.
MAX_HEAD_BYTES = 64 * 1024

_BODY = json.dumps(
    {
        "type": TYPE_BASE + "headers-too-large",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": f"the request head exceeds {MAX_HEAD_BYTES // 1024} KiB; the connection is closed",
    }
).encode()
_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    + f"content-type: {MEDIA_TYPE}\r\ncontent-length: {len(_BODY)}\r\nconnection: close\r\n\r\n".encode()
    + _BODY
)


class BoundedHttpTools(HttpToolsProtocol):
    """HttpToolsProtocol that stops reading a request head past :data:`MAX_HEAD_BYTES`."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

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
