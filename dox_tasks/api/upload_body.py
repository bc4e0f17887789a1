"""An upload's body, read as it arrives: never whole in memory, never through Starlette's forms.

Starlette's ``request.form()`` spools a whole multipart body before a handler runs, so an
upload would cost its size in memory or a second copy on disk. Here the ASGI ``receive``
messages are read one at a time, each wait bounded by ``DOX_API_BODY_TIMEOUT_S`` (a client
that stops sending is answered 408), and

- a raw body (``Content-Type: application/pdf`` and the like) is the document itself;
- a ``multipart/form-data`` body goes through python-multipart's push parser: the small
  fields (``source``, ``metadata``) are kept, the ``file`` part's bytes are handed on as
  they are parsed.

Either way the document's bytes are counted and refused (413) the moment they pass
``MAX_FILE_SIZE_MB``. Intake reads them synchronously, in a worker thread, through
:class:`ThreadReader`, which fetches each piece from the event loop: the bytes go from the
socket into DOX's staging file once, a piece (at most :data:`PIECE` bytes) at a time.
Every refusal is raised from ``read`` (or before intake starts), so intake's staging
removes its partial file and writes no row.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import anyio.from_thread
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from .problems import Problem

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

#: The most a read hands on at once (intake's staging asks for 1 MiB at a time).
PIECE = 1024 * 1024
#: ``metadata`` is a JSON object of at most this many bytes; ``source`` at most this many.
MAX_METADATA = 16 * 1024
MAX_SOURCE = 200
#: Multipart framing and fields a body may carry beyond the document's own size limit.
FORM_ALLOWANCE = 64 * 1024
#: File names are at most this many bytes of UTF-8 (the common file-system limit).
MAX_NAME_BYTES = 255
MAX_BOUNDARY = 70
_CLOSE = {"Connection": "close"}


class BodyStream:
    """The request body, ASGI message by message; each wait ends after ``timeout_s``."""

    def __init__(self, receive: Receive, timeout_s: float):
        self._receive, self.timeout_s = receive, timeout_s
        self.done = False

    async def next(self) -> bytes:
        """The next non-empty piece of the body, or ``b""`` once it has all arrived."""
        while not self.done:
            try:
                with anyio.fail_after(self.timeout_s):
                    message = await self._receive()
            except TimeoutError:
                raise Problem(
                    408,
                    "request-timeout",
                    f"the request body stopped arriving (nothing for {self.timeout_s:g} s);"
                    " nothing was kept: send it again",
                    {"Retry-After": "1", **_CLOSE},
                ) from None
            if message["type"] == "http.disconnect":
                raise Problem(
                    400, "client-disconnected", "the client went away before the body ended", _CLOSE
                )
            self.done = not message.get("more_body", False)
            body = bytes(message.get("body", b""))
            if body:
                return body
        return b""

    async def read_all(self, limit: int, what: str) -> bytes:
        """A small body whole (a JSON request), refused with 413 past ``limit`` bytes."""
        data = bytearray()
        while piece := await self.next():
            data += piece
            if len(data) > limit:
                raise Problem(413, "too-large", f"{what} is larger than {limit} bytes", _CLOSE)
        return bytes(data)


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "too-large",
        f"the document is larger than the {limit / 1048576:g} MiB limit (MAX_FILE_SIZE_MB); nothing was kept",
        _CLOSE,
    )


class Upload(Protocol):
    """A document's bytes as they arrive; ``b""`` only once the whole body was accepted."""

    async def read(self, size: int) -> bytes: ...


class RawUpload:
    """The body is the document."""

    def __init__(self, body: BodyStream, limit: int):
        self._body, self._limit, self._count = body, limit, 0
        self._left = b""

    async def read(self, size: int) -> bytes:
        piece = self._left or await self._body.next()
        piece, self._left = piece[:size], piece[size:]
        self._count += len(piece)
        if self._count > self._limit:
            raise too_large(self._limit)
        return piece


class MultipartUpload:
    """A ``multipart/form-data`` body: ``source`` and ``metadata`` fields, then the ``file``.

    The fields must come before the file part (as S3's form uploads ask): intake needs them
    to write the row, and the row is written once the file's bytes are staged. Fields after
    it, a second file, an unknown field or a body without its closing boundary are refused
    (400) before any row exists.
    """

    FIELDS = {"source": MAX_SOURCE, "metadata": MAX_METADATA}

    def __init__(self, body: BodyStream, boundary: bytes, limit: int):
        self._body, self._limit = body, limit
        if len(boundary) > MAX_BOUNDARY:  # RFC 2046's limit
            raise _bad(f"the multipart boundary is longer than {MAX_BOUNDARY} characters")
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )
        self.fields: dict[str, bytearray] = {}
        self.file_name: str | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = bytearray(), bytearray()
        self._current: str | None = None  # the field being read; "file" for the document
        self._file_seen = self._ended = False
        self._count = 0
        self._pending = bytearray()

    # -- the parser's callbacks ------------------------------------------------------
    def _part_begin(self) -> None:
        self._headers, self._current = {}, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        kind, params = parse_options_header(self._headers.get(b"content-disposition"))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if kind != b"form-data" or not name:
            raise _bad("a part has no Content-Disposition: form-data with a name")
        if name == "file":
            if self._file_seen:
                raise _bad("the body has more than one file part: send one document per request")
            self._file_seen = True
            raw = params.get(b"filename")
            self.file_name = raw.decode("utf-8", "replace") if raw is not None else None
        elif self._file_seen:
            raise _bad(
                f"the field {name[:40]!r} comes after the file part: send source and metadata before file"
            )
        elif name not in self.FIELDS:
            raise _bad(f"unknown form field {name[:40]!r}: the fields are file, source and metadata")
        elif name in self.fields:
            raise _bad(f"the field {name!r} is given twice")
        else:
            self.fields[name] = bytearray()
        self._current = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current == "file":
            self._count += end - start
            if self._count > self._limit:
                raise too_large(self._limit)
            self._pending += data[start:end]
        elif self._current is not None:
            value = self.fields[self._current]
            value += data[start:end]
            if len(value) > self.FIELDS[self._current]:
                raise Problem(
                    413,
                    "too-large",
                    f"{self._current} is longer than {self.FIELDS[self._current]} bytes",
                    _CLOSE,
                )

    def _part_end(self) -> None:
        self._current = None

    def _end(self) -> None:
        self._ended = True

    # -- reading -------------------------------------------------------------------
    async def _feed(self) -> None:
        piece = await self._body.next()
        if piece:
            try:
                self._parser.write(piece)
            except MultipartParseError as exc:
                raise _bad(f"the multipart body is malformed ({exc})") from None
        if self._body.done and not self._ended:
            raise _bad("the multipart body ended before its closing boundary")

    async def start(self) -> None:
        """Read the fields, up to the start of the file part (400 if there is none)."""
        while not self._file_seen:
            if self._ended:
                raise _bad("the form has no file part: send the document as the field 'file'")
            await self._feed()

    async def read(self, size: int) -> bytes:
        while not self._pending and not self._ended:
            await self._feed()
        piece = bytes(self._pending[:size])
        del self._pending[:size]
        return piece

    @property
    def source(self) -> str | None:
        raw = self.fields.get("source")
        if raw is None:
            return None
        text = bytes(raw).decode("utf-8", "replace")
        if any(unicodedata.category(ch) in _UNSAFE for ch in text):
            raise Problem(422, "invalid-source", "source must be text without control characters")
        return text

    @property
    def metadata(self) -> dict[str, Any] | None:
        return parse_metadata(self.fields.get("metadata"))


#: How deep ``metadata`` may nest (objects and arrays): far beyond any real use, far below
#: where checking it, storing it or sending it would run out of stack.
MAX_METADATA_DEPTH = 32


def parse_metadata(raw: bytes | bytearray | None) -> dict[str, Any] | None:
    """The ``metadata`` field: a JSON object (422 for anything else)."""
    if raw is None:
        return None
    try:  # NaN, Infinity and 1e999 (a float too large) are not JSON the database accepts
        value = json.loads(bytes(raw), parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict) or not _storable(value):
        raise Problem(
            422,
            "invalid-metadata",
            f"metadata must be a JSON object (without NUL characters, nested at most"
            f" {MAX_METADATA_DEPTH} deep) of at most {MAX_METADATA} bytes",
        )
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is too large for a number")
    return number


def _storable(value: Any) -> bool:
    """No NUL character in any key or string (PostgreSQL text cannot hold one) and nested at
    most :data:`MAX_METADATA_DEPTH` deep; walked without recursion."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return False
        elif isinstance(item, dict | list):
            if depth > MAX_METADATA_DEPTH:
                return False
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return True


def _bad(detail: str) -> Problem:
    return Problem(400, "bad-upload", detail, _CLOSE)


class ThreadReader:
    """A blocking ``read`` over an :class:`Upload`, for intake running in a worker thread
    (started by anyio): each read waits for the event loop to fetch the next piece.

    Make it with :meth:`start`, which reads the first piece on the event loop: a document
    that fits in it (most do) then costs the thread no trip back to the loop at all."""

    def __init__(self, upload: Upload, first: bytes, ended: bool):
        self._upload, self._first, self._ended = upload, first, ended

    @classmethod
    async def start(cls, upload: Upload) -> ThreadReader:
        first = bytearray()
        while len(first) < PIECE:
            piece = await upload.read(PIECE - len(first))
            if not piece:
                return cls(upload, bytes(first), ended=True)
            first += piece
        return cls(upload, bytes(first), ended=False)

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else PIECE
        if self._first:
            piece, self._first = self._first[:size], self._first[size:]
            return piece
        if self._ended:
            return b""
        return anyio.from_thread.run(self._upload.read, size)


_SEPARATORS = re.compile(r"[\\/]")
#: Controls, format characters (bidirectional overrides), surrogates, line/paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def safe_name(raw: str | None) -> str | None:
    """The base name of what a client called its file, safe to record and show: no folder
    parts (``../../x.pdf`` is ``x.pdf``), no control or bidirectional characters, at most
    :data:`MAX_NAME_BYTES` bytes of UTF-8 (cut in the stem, keeping a short extension).
    None when nothing is left."""
    if not raw:
        return None
    text = "".join(ch for ch in raw if unicodedata.category(ch) not in _UNSAFE)
    base = _SEPARATORS.split(text)[-1].strip()
    if base in ("", ".", ".."):
        return None
    if len(base.encode("utf-8")) <= MAX_NAME_BYTES:
        return base
    stem, dot, ext = base.rpartition(".")
    if not dot or len(ext.encode("utf-8")) > 16:
        stem, dot, ext = base, "", ""
    room = MAX_NAME_BYTES - len((dot + ext).encode("utf-8"))
    return stem.encode("utf-8")[:room].decode("utf-8", "ignore") + dot + ext


def header_text(value: str | None) -> str | None:
    """A header value as UTF-8 text (ASGI servers hand header bytes over as Latin-1)."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value
