"""The strict structural reader: pypdf's reader, watched where a viewer reads otherwise.

:func:`dox_tasks.steps.pdf.inspect_pdf` parses *strictly*: pypdf's lenient mode
quietly repairs truncated and damaged files, which is the opposite of validation.
Strict is not enough either. Where pypdf and a viewer would read the same bytes as
different objects (cross-reference sections the chain does not reach, an object not
at its listed offset, object streams whose header disagrees with the cross-reference
data), a hostile file could show the policy walk one document and a viewer another.
This module owns those structural checks, and following a reference (:func:`get`,
:func:`resolve`: a reference to an unlisted object is null, not repaired), which the
policy and the walk both do and which must be the same for both.
"""

from __future__ import annotations

import re
from io import BytesIO
from typing import IO, Any

from pypdf import PdfReader
from pypdf.errors import LimitReachedError, PdfReadError
from pypdf.generic import IndirectObject, StreamObject, read_object

#: Bytes the shadow walk may parse out of object streams: at least this much, or
#: OBJSTM_PARSE_RATIO times the file's size (each byte of a valid object stream is parsed once).
MAX_OBJSTM_PARSE_BYTES = 16 * 1024 * 1024
OBJSTM_PARSE_RATIO = 10
#: PDF white-space (PDF 32000 7.2.3, NUL among it), for the raw scans of the file below.
_WS = rb"\x00\t\n\f\r "
#: Raw tokens of cross-reference data, for the check that pypdf read all of it.
_XREF_TABLE_RE = re.compile(rb"(?<![^" + _WS + rb")>\]}])xref[" + _WS + rb"]+(?:\d|trailer)")
_TRAILER_RE = re.compile(rb"(?<![^" + _WS + rb")>\]}])trailer[" + _WS + rb"]*<<")
_XREF_TYPE_RE = re.compile(rb"/XRef(?![^" + _WS + rb"()<>\[\]{}/%])")
_OBJ_HEAD_RE = re.compile(rb"(?<![0-9])[0-9]+[" + _WS + rb"]+[0-9]+[" + _WS + rb"]+$")
_WS_SPLIT = re.compile(rb"[" + _WS + rb"]+")
_SKIP_RE = re.compile(rb"(?:[" + _WS + rb"]|%[^\r\n]*)*")
#: How far before ``/XRef`` the object header is looked for; chunk size of the scan.
_XREF_DICT_WINDOW = 64 * 1024
_SCAN_CHUNK = 1024 * 1024
_MAX_XREF_SECTIONS = 10_000
_MAX_REF_HOPS = 16


class Malformed(PdfReadError):
    """A structure a conforming writer never produces and viewers read otherwise than pypdf."""


class Reader(PdfReader):
    """pypdf's strict reader, watched where it would read a file otherwise than a viewer.

    * It records which cross-reference sections it read (``sections``), so sections the
      chain does not reach (a linearized file's first-page section that the main one
      does not point back to) can be found.
    * A listed object that is not where its cross-reference entry says is looked up
      in the raw bytes by pypdf, which takes the *first* ``N G obj`` of the file; a
      viewer reads what is at the offset. Any such relocation is malformed.
    * Object streams are checked before pypdf reads them (:meth:`packed`): pypdf finds
      a packed object by its number, a viewer by its index, so numbers must be unique,
      at the index the cross-reference data gives, with increasing, non-overlapping
      offsets (which also keeps parsing linear).
    """

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self.sections: set[int] = set()
        self._offsets: dict[int, dict[int, Any]] | None = None
        self._checked_objstm: set[int] = set()
        self._parse_budget = max(MAX_OBJSTM_PARSE_BYTES, OBJSTM_PARSE_RATIO * size)
        super().__init__(stream, strict=True)

    def _read_xref_tables_and_trailers(self, stream: Any, startxref: int | None, xref_issue_nr: int) -> None:
        super()._read_xref_tables_and_trailers(stream, startxref, xref_issue_nr)
        self._offsets = {gen: dict(nums) for gen, nums in self.xref.items()}

    def _read_xref(self, stream: Any) -> int | None:
        self.sections.add(stream.tell() - 1)  # at the "x" of "xref"
        return super()._read_xref(stream)

    def _read_pdf15_xref_stream(self, stream: Any) -> StreamObject:
        start = stream.tell() - 1
        stream.seek(start)
        head = stream.read(256)
        match = _SKIP_RE.match(head)
        self.sections.add(start + (match.end() if match else 0))  # at the object number
        stream.seek(start + 1)
        return super()._read_pdf15_xref_stream(stream)

    def get_object(self, indirect_reference: int | IndirectObject) -> Any:
        obj = super().get_object(indirect_reference)
        if isinstance(indirect_reference, int):
            num, gen = indirect_reference, 0
        else:
            num, gen = indirect_reference.idnum, indirect_reference.generation
        listed = (self._offsets or {}).get(gen, {}).get(num)
        if listed is not None and self.xref.get(gen, {}).get(num) != listed:
            raise Malformed(
                f"object {num} {gen} is not at the offset its cross-reference entry gives"
                " (a copy elsewhere in the file would be read instead)"
            )
        return obj

    def _get_object_from_stream(self, indirect_reference: IndirectObject) -> Any:
        stmnum = self.xref_objStm[indirect_reference.idnum][0]
        if stmnum not in self._checked_objstm:
            nested = stmnum in self.xref_objStm  # an object stream packed in one: never valid
            stm = None if nested else super().get_object(IndirectObject(stmnum, 0, self))
            if not isinstance(stm, StreamObject):
                raise Malformed(f"object stream {stmnum} is not a stream in a numbered object")
            self.packed(stm, stmnum)
        return super()._get_object_from_stream(indirect_reference)

    def packed(self, stm: StreamObject, stmnum: int) -> list[tuple[int, Any]]:
        """Check an object stream; its objects the cross-reference data maps elsewhere.

        The first time, every entry is parsed (and the ones pypdf would take from here
        are handed to its cache, so nothing is parsed twice); later, only the others.
        """
        first_time = stmnum not in self._checked_objstm
        self._checked_objstm.add(stmnum)
        data = stm.get_data()
        first = resolve(self, dict.get(stm, "/First"))
        count = resolve(self, dict.get(stm, "/N"))
        if not isinstance(first, int) or not isinstance(count, int) or not 0 <= first <= len(data):
            raise Malformed(f"object stream {stmnum} has no valid /N and /First")
        tokens = [token for token in _WS_SPLIT.split(data[:first]) if token]
        if count < 0 or len(tokens) < 2 * count or not all(t.isdigit() for t in tokens[: 2 * count]):
            raise Malformed(f"object stream {stmnum} has a header that does not list /N objects")
        entries = [(int(tokens[2 * i]), int(tokens[2 * i + 1])) for i in range(count)]
        seen: set[int] = set()
        last = -1
        for index, (num, offset) in enumerate(entries):
            if num in seen:
                raise Malformed(f"object stream {stmnum} lists object {num} twice")
            if offset <= last or first + offset >= len(data):
                raise Malformed(f"object stream {stmnum} has offsets out of order or past its end")
            listed = self.xref_objStm.get(num)
            if listed is not None and listed[0] == stmnum and listed[1] != index:
                raise Malformed(
                    f"object {num} is entry {index} of object stream {stmnum},"
                    f" but the cross-reference data says entry {listed[1]}"
                )
            seen.add(num)
            last = offset
        buf = BytesIO(data)
        found: list[tuple[int, Any]] = []
        for index, (num, offset) in enumerate(entries):
            mine = self.xref_objStm.get(num, (None, None))[0] == stmnum
            if mine and not first_time:
                continue
            start = first + offset
            buf.seek(start)
            obj = read_object(buf, self)
            self._parse_budget -= buf.tell() - start
            if self._parse_budget < 0:
                raise LimitReachedError("object streams take too long to parse")
            if first_time and index + 1 < len(entries):
                after = _SKIP_RE.match(data, first + entries[index + 1][1])
                if buf.tell() > (after.end() if after else 0):
                    nxt = entries[index + 1][0]
                    raise Malformed(f"objects {num} and {nxt} overlap in object stream {stmnum}")
            if not mine:
                found.append((num, obj))
            elif (0, num) not in self.resolved_objects:
                self.cache_indirect_object(0, num, obj)
        return found

    def check_unread_sections(self, fh: IO[bytes]) -> None:
        """Cross-reference data in the file that pypdf's chain (startxref, /Prev, /XRefStm)
        does not reach is malformed: a viewer may start there (pdf.js starts a linearized
        file at its first-page section) and see other objects and another /Root.
        Walking those sections instead would need a second reader per section (the same
        number can mean another offset there); a conforming writer never leaves them.
        """
        tables: set[int] = set()
        trailers: set[int] = set()
        streams: set[int] = set()
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(0)
        base = 0  # file offset of the end of what was read
        keep = b""
        while base < size:
            chunk = fh.read(_SCAN_CHUNK)
            if not chunk:
                break
            buf = keep + chunk
            origin = base - len(keep)
            base += len(chunk)
            # Matches near the end are judged next round, with what follows them.
            low = max(0, len(keep) - 64) if origin else 0
            high = len(buf) if base >= size else len(buf) - 64
            for regex, into in ((_XREF_TABLE_RE, tables), (_TRAILER_RE, trailers)):
                into.update(origin + m.start() for m in regex.finditer(buf, low) if m.start() < high)
            for m in _XREF_TYPE_RE.finditer(buf, low):
                if m.start() < high:
                    streams.add(origin + _header_before(buf, m.start()))
            if len(tables) + len(trailers) + len(streams) > _MAX_XREF_SECTIONS:
                raise LimitReachedError("too many cross-reference sections")
            keep = buf[-_XREF_DICT_WINDOW:]
        read_trailers = {min((t for t in trailers if t > x), default=-1) for x in tables & self.sections}
        unread = sorted((tables | streams) - self.sections) + sorted(trailers - read_trailers)
        if unread:
            raise Malformed(
                f"cross-reference data at byte {unread[0]} is not reached from the file's last"
                " startxref (a viewer that starts there sees other objects)"
            )


def _header_before(buf: bytes, pos: int) -> int:
    """Where the ``N G obj`` that holds ``/XRef`` at ``pos`` starts (``pos`` if none near)."""
    low = max(0, pos - _XREF_DICT_WINDOW)
    end = buf.rfind(b"obj", low, pos)
    while end >= 0:
        m = _OBJ_HEAD_RE.search(buf, max(low, end - 48), end)
        if m:
            return m.start()
        end = buf.rfind(b"obj", low, end)
    return pos


def _listed(reader: PdfReader, ref: IndirectObject) -> bool:
    """Whether the file's cross-reference data has this (number, generation)."""
    if ref.generation == 0 and ref.idnum in reader.xref_objStm:
        return True
    return ref.idnum in reader.xref.get(ref.generation, {})


def get(reader: PdfReader, ref: IndirectObject) -> Any:
    """One reference followed; ``None`` for a reference to nothing.

    A reference to an object the file does not list is null (PDF 32000 7.3.10); pypdf
    first looks for it in the raw bytes (as a repairing viewer would), and only
    errors reading an object the file *does* list make the document malformed.
    """
    try:
        return reader.get_object(ref)
    except PdfReadError:
        if _listed(reader, ref):
            raise
        return None


def resolve(reader: PdfReader, value: Any) -> Any:
    """Follow references to the object itself (an ``/S`` may be a reference to a name)."""
    for _ in range(_MAX_REF_HOPS):
        if not isinstance(value, IndirectObject):
            return value
        value = get(reader, value)
    raise LimitReachedError(f"more than {_MAX_REF_HOPS} references in a row")
