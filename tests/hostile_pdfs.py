"""Hand-written PDFs that hide script and launch actions, and near-misses that must pass.

Each document is assembled object by object with a correct cross-reference table
(or stream), so pypdf's strict mode opens it: a rejection is about the action, never
about a damaged file. ``build`` writes a classic file, ``update`` appends an
incremental revision (which may give an object number a second generation), and
``build_objstm`` packs objects into a compressed object stream.

The catalog of documents at the bottom is shared by the unit tests (``inspect_pdf``)
and the end-to-end tests (embedded default, real services).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping

Ref = tuple[int, int]

HEADER = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
#: A one-line piece of JavaScript, escaped for a PDF literal string.
JS = b"(app.alert\\(1\\))"


def _refs(objects: Mapping[int | Ref, bytes]) -> dict[Ref, bytes]:
    return {(k, 0) if isinstance(k, int) else k: v for k, v in objects.items()}


def _xref_table(entries: dict[int, tuple[int, int]], free_head: bool) -> bytes:
    """Subsections of contiguous numbers; ``entries`` maps number -> (offset, generation)."""
    rows: dict[int, bytes] = {n: b"%010d %05d n \n" % entry for n, entry in entries.items()}
    if free_head:
        rows[0] = b"0000000000 65535 f \n"
    out = bytearray(b"xref\n")
    numbers = sorted(rows)
    start = 0
    while start < len(numbers):
        end = start
        while end + 1 < len(numbers) and numbers[end + 1] == numbers[end] + 1:
            end += 1
        out += b"%d %d\n" % (numbers[start], end - start + 1)
        for n in numbers[start : end + 1]:
            out += rows[n]
        start = end + 1
    return bytes(out)


def _body(out: bytearray, objects: dict[Ref, bytes]) -> dict[int, tuple[int, int]]:
    entries: dict[int, tuple[int, int]] = {}
    for (num, gen), body in sorted(objects.items()):
        entries[num] = (len(out), gen)
        out += b"%d %d obj\n" % (num, gen) + body + b"\nendobj\n"
    return entries


def build(objects: Mapping[int | Ref, bytes], root: Ref = (1, 0), trailer_extra: bytes = b"") -> bytes:
    """A classic PDF: every object, an xref table, a trailer naming ``root``."""
    refs = _refs(objects)
    out = bytearray(HEADER)
    entries = _body(out, refs)
    xref = len(out)
    out += _xref_table(entries, free_head=True)
    size = max(n for n, _ in refs) + 1
    out += b"trailer\n<< /Size %d /Root %d %d R%s >>\n" % (size, *root, trailer_extra)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def update(base: bytes, objects: Mapping[int | Ref, bytes], root: Ref = (1, 0)) -> bytes:
    """``base`` plus an incremental revision: new objects, their xref section, /Prev."""
    prev = int(re.findall(rb"startxref\s+(\d+)", base)[-1])
    size = int(re.findall(rb"/Size (\d+)", base)[-1])
    refs = _refs(objects)
    out = bytearray(base)
    entries = _body(out, refs)
    xref = len(out)
    out += _xref_table(entries, free_head=True)  # pypdf expects each section to start at 0
    size = max(size, *(n + 1 for n, _ in refs))
    out += b"trailer\n<< /Size %d /Root %d %d R /Prev %d >>\n" % (size, *root, prev)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def build_objstm(plain: Mapping[int, bytes], packed: Mapping[int, bytes], root: int = 1) -> bytes:
    """PDF 1.5: ``packed`` objects live in a compressed /ObjStm, found via an xref stream."""
    out = bytearray(HEADER)
    rows: dict[int, tuple[int, int, int]] = {0: (0, 0, 65535)}
    for num, body in sorted(plain.items()):
        rows[num] = (1, len(out), 0)
        out += b"%d 0 obj\n" % num + body + b"\nendobj\n"
    stm = max([*plain, *packed]) + 1
    header, data = [], bytearray()
    for index, (num, body) in enumerate(sorted(packed.items())):
        header.append(b"%d %d" % (num, len(data)))
        data += body + b"\n"
        rows[num] = (2, stm, index)
    head = b" ".join(header) + b"\n"
    payload = zlib.compress(head + bytes(data))
    rows[stm] = (1, len(out), 0)
    out += b"%d 0 obj\n<< /Type /ObjStm /N %d /First %d /Length %d /Filter /FlateDecode >>\nstream\n" % (
        stm,
        len(packed),
        len(head),
        len(payload),
    )
    out += payload + b"\nendstream\nendobj\n"
    xref_num = stm + 1
    rows[xref_num] = (1, len(out), 0)
    table = b"".join(
        bytes([kind]) + a.to_bytes(4, "big") + b.to_bytes(2, "big")
        for _, (kind, a, b) in sorted(rows.items())
    )
    assert sorted(rows) == list(range(xref_num + 1)), "object numbers must be contiguous"
    comp = zlib.compress(table)
    out += (
        b"%d 0 obj\n<< /Type /XRef /Size %d /W [1 4 2] /Root %d 0 R /Length %d /Filter /FlateDecode >>\n"
        b"stream\n" % (xref_num, xref_num + 1, root, len(comp))
    )
    out += comp + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % rows[xref_num][1]
    return bytes(out)


def build_hybrid_shadow(table: Mapping[int | Ref, bytes], packed: Mapping[int, bytes]) -> bytes:
    """A hybrid file (PDF 1.5): an xref table for old readers plus a hidden /XRefStm.

    ``packed`` objects sit in an object stream the table does not list; the xref
    stream maps them there. A number in both ``table`` and ``packed`` has two copies:
    pypdf takes the table's, a reader that prefers the xref stream takes the packed one.
    """
    out = bytearray(HEADER)
    entries: dict[int, tuple[int, int]] = {}
    numbers = {num: body for (num, _), body in _refs(table).items()}
    for num, body in sorted(numbers.items()):
        entries[num] = (len(out), 0)
        out += b"%d 0 obj\n" % num + body + b"\nendobj\n"
    stm = max([*numbers, *packed]) + 1
    header, data = [], bytearray()
    for num, body in sorted(packed.items()):
        header.append(b"%d %d" % (num, len(data)))
        data += body + b"\n"
    head = b" ".join(header) + b"\n"
    payload = zlib.compress(head + bytes(data))
    stm_offset = len(out)
    out += b"%d 0 obj\n<< /Type /ObjStm /N %d /First %d /Length %d /Filter /FlateDecode >>\nstream\n" % (
        stm,
        len(packed),
        len(head),
        len(payload),
    )
    out += payload + b"\nendstream\nendobj\n"
    xref_num = stm + 1
    rows = {num: (2, stm, index) for index, num in enumerate(sorted(packed))}
    rows[stm] = (1, stm_offset, 0)
    rows[xref_num] = (1, len(out), 0)
    subsections = b" ".join(b"%d 1" % num for num in sorted(rows))
    table_rows = b"".join(
        bytes([kind]) + a.to_bytes(4, "big") + b.to_bytes(2, "big")
        for _, (kind, a, b) in sorted(rows.items())
    )
    comp = zlib.compress(table_rows)
    xrefstm_offset = len(out)
    out += (
        b"%d 0 obj\n<< /Type /XRef /Size %d /W [1 4 2] /Index [%s] /Length %d /Filter /FlateDecode >>\n"
        b"stream\n" % (xref_num, xref_num + 1, subsections, len(comp))
    )
    out += comp + b"\nendstream\nendobj\n"
    xref = len(out)
    out += _xref_table(entries, free_head=True)
    out += b"trailer\n<< /Size %d /Root 1 0 R /XRefStm %d >>\n" % (xref_num + 1, xrefstm_offset)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d%s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def content(text: bytes = b"Hello") -> bytes:
    return stream(b"BT /F1 12 Tf 50 780 Td (" + text + b") Tj ET")


def skeleton(catalog: bytes = b"", page: bytes = b"", text: bytes = b"Hello") -> dict[int | Ref, bytes]:
    """Objects 1-5 of a one-page document: catalog, pages, page, content, font."""
    return {
        1: b"<< /Type /Catalog /Pages 2 0 R " + catalog + b" >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> " + page + b" >>",
        4: content(text),
        5: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }


def doc(
    catalog: bytes = b"",
    page: bytes = b"",
    extra: Mapping[int | Ref, bytes] | None = None,
    text: bytes = b"Hello",
    trailer_extra: bytes = b"",
) -> bytes:
    """A one-page document with ``catalog``/``page`` entries and objects 6, 7, … in ``extra``."""
    objects = skeleton(catalog, page, text)
    objects.update(extra or {})
    return build(objects, trailer_extra=trailer_extra)


def link(action: bytes, extra: bytes = b"") -> bytes:
    """An inline link annotation carrying ``action`` as its /A."""
    return b"<< /Type /Annot /Subtype /Link /Rect [50 50 200 80] /A " + action + extra + b" >>"


JS_ACTION = b"<< /S /JavaScript /JS " + JS + b" >>"
LAUNCH_ACTION = b"<< /S /Launch /F (calc.exe) >>"
GOTO = b"<< /S /GoTo /D [3 0 R /Fit] >>"


# -- the placements of section 1: each must end rejected, reason javascript ------------------


def _two_generations_by_reference() -> bytes:
    """6 0 is harmless, 6 1 (a later revision) launches; the catalog picks 6 1."""
    base = doc(b"/OpenAction 6 0 R", extra={6: GOTO})
    catalog = skeleton(b"/OpenAction 6 1 R")[1]
    return update(base, {1: catalog, (6, 1): LAUNCH_ACTION})


def _two_generations_by_trailer() -> bytes:
    """The trailer's /Root is 1 1, a catalog from the later revision; 1 0 is harmless."""
    catalog = b"<< /Type /Catalog /Pages 2 0 R /OpenAction " + LAUNCH_ACTION + b" >>"
    return update(doc(), {(1, 1): catalog}, root=(1, 1))


def _objstm(catalog: bytes = b"", page: bytes = b"", extra: Mapping[int, bytes] | None = None) -> bytes:
    """The catalog and page live in a compressed object stream."""
    objects = skeleton(catalog, page)
    packed: dict[int, bytes] = {1: objects[1], 3: objects[3], **(extra or {})}
    plain = {n: objects[n] for n in (2, 4, 5)}
    return build_objstm(plain, packed)


def _outline(action: bytes) -> bytes:
    return doc(
        b"/Outlines 6 0 R",
        extra={
            6: b"<< /Type /Outlines /First 7 0 R /Last 7 0 R /Count 1 >>",
            7: b"<< /Title (Introduction) /Parent 6 0 R /A " + action + b" >>",
        },
    )


def _long_reference_chain(length: int = 3000) -> bytes:
    """3,000 actions, each /Next a reference to the following one; the last runs JavaScript.

    Far deeper than Python's recursion limit: a recursive walk would give up.
    """
    extra: dict[int | Ref, bytes] = {
        6 + i: b"<< /S /GoTo /D [3 0 R /Fit] /Next %d 0 R >>" % (7 + i) for i in range(length)
    }
    extra[6 + length] = JS_ACTION
    return doc(b"/OpenAction 6 0 R", extra=extra)


HOSTILE: dict[str, Callable[[], bytes]] = {
    # /OpenAction in the catalog
    "openaction-js-inline": lambda: doc(b"/OpenAction " + JS_ACTION),
    "openaction-launch-inline": lambda: doc(b"/OpenAction " + LAUNCH_ACTION),
    "openaction-js-indirect": lambda: doc(
        b"/OpenAction 6 0 R", extra={6: b"<< /S /JavaScript /JS 7 0 R >>", 7: stream(b"app.alert(1)")}
    ),
    "openaction-escaped-launch": lambda: doc(b"/OpenAction << /S /L#61unch /F (calc.exe) >>"),
    "openaction-lowercase-launch": lambda: doc(b"/OpenAction << /S /launch /F (calc.exe) >>"),
    # additional actions of the catalog, a page, an annotation, a form field
    "catalog-aa-inline": lambda: doc(b"/AA << /WC " + JS_ACTION + b" >>"),
    "catalog-aa-reference": lambda: doc(b"/AA 6 0 R", extra={6: b"<< /WC " + LAUNCH_ACTION + b" >>"}),
    "catalog-aa-indirect-action": lambda: doc(b"/AA << /WC 6 0 R >>", extra={6: LAUNCH_ACTION}),
    "page-aa-inline": lambda: doc(page=b"/AA << /O " + JS_ACTION + b" >>"),
    "page-aa-reference": lambda: doc(page=b"/AA 6 0 R", extra={6: b"<< /C " + JS_ACTION + b" >>"}),
    "annotation-aa-inline": lambda: doc(
        page=b"/Annots [6 0 R]",
        extra={6: b"<< /Type /Annot /Subtype /Link /Rect [0 0 9 9] /AA << /E " + JS_ACTION + b" >> >>"},
    ),
    "annotation-aa-reference": lambda: doc(
        page=b"/Annots [<< /Type /Annot /Subtype /Link /Rect [0 0 9 9] /AA 6 0 R >>]",
        extra={6: b"<< /E " + LAUNCH_ACTION + b" >>"},
    ),
    "annotation-inline-a-inline": lambda: doc(page=b"/Annots [" + link(LAUNCH_ACTION) + b"]"),
    "annotations-array-reference": lambda: doc(
        page=b"/Annots 6 0 R", extra={6: b"[" + link(GOTO) + b" " + link(JS_ACTION) + b"]"}
    ),
    "form-field-aa-inline": lambda: doc(
        b"/AcroForm << /Fields [6 0 R] >>",
        extra={6: b"<< /FT /Tx /T (amount) /Rect [0 0 9 9] /AA << /K " + JS_ACTION + b" >> >>"},
    ),
    "form-field-aa-reference": lambda: doc(
        b"/AcroForm << /Fields [6 0 R] >>",
        extra={6: b"<< /FT /Tx /T (amount) /AA 7 0 R >>", 7: b"<< /V " + JS_ACTION + b" >>"},
    ),
    "form-field-inline-kid-widget": lambda: doc(
        b"/AcroForm << /Fields [<< /FT /Btn /T (send) /Kids [<< /Subtype /Widget /Rect [0 0 9 9] /A "
        + LAUNCH_ACTION
        + b" >>] >>] >>"
    ),
    # outline items, /Next chains
    "outline-item-a-inline": lambda: _outline(JS_ACTION),
    "outline-item-a-next": lambda: _outline(b"<< /S /GoTo /D [3 0 R /Fit] /Next " + LAUNCH_ACTION + b" >>"),
    "next-chain-dict": lambda: doc(b"/OpenAction << /S /GoTo /D [3 0 R /Fit] /Next " + JS_ACTION + b" >>"),
    "next-chain-array": lambda: doc(
        b"/OpenAction << /S /GoTo /D [3 0 R /Fit] /Next [<< /S /Named /N /NextPage >> "
        + LAUNCH_ACTION
        + b"] >>"
    ),
    "next-chain-nested": lambda: doc(
        b"/OpenAction " + b"<< /S /Named /N /NextPage /Next " * 40 + LAUNCH_ACTION + b" >>" * 40
    ),
    "next-chain-3000-references": _long_reference_chain,
    # the document-level JavaScript name tree
    "names-javascript-inline": lambda: doc(b"/Names << /JavaScript << /Names [(a) " + JS_ACTION + b"] >> >>"),
    "names-javascript-escaped": lambda: doc(
        b"/Names << /J#61vaScript << /Names [(a) 6 0 R] >> >>", extra={6: JS_ACTION}
    ),
    # /S as a reference to a name object
    "s-reference-inline-action": lambda: doc(
        b"/OpenAction << /S 6 0 R /F (calc.exe) >>", extra={6: b"/Launch"}
    ),
    "s-reference-indirect-action": lambda: doc(
        b"/OpenAction 6 0 R", extra={6: b"<< /S 7 0 R /F (calc.exe) >>", 7: b"/Launch"}
    ),
    "s-reference-in-annotation": lambda: doc(
        page=b"/Annots [" + link(b"<< /S 6 0 R /F (x.exe) >>") + b"]", extra={6: b"/Launch"}
    ),
    # one object number, two generations
    "two-generations-reference": _two_generations_by_reference,
    "two-generations-trailer": _two_generations_by_trailer,
    # object streams
    "objstm-catalog-inline-openaction": lambda: _objstm(b"/OpenAction " + LAUNCH_ACTION),
    "objstm-page-inline-annotation": lambda: _objstm(page=b"/Annots [" + link(JS_ACTION) + b"]"),
    "objstm-packed-aa": lambda: _objstm(page=b"/AA 6 0 R", extra={6: b"<< /O " + LAUNCH_ACTION + b" >>"}),
    "objstm-hybrid-shadow-copy": lambda: build_hybrid_shadow(
        {**skeleton(b"/OpenAction 6 0 R"), 6: GOTO},
        {6: LAUNCH_ACTION},
    ),
    # javascript: links
    "uri-javascript-scheme": lambda: doc(
        page=b"/Annots [" + link(b"<< /S /URI /URI (javascript:app.alert\\(1\\)) >>") + b"]"
    ),
    "uri-javascript-mixed-case-padded": lambda: doc(
        b"/OpenAction << /S /URI /URI (\\001\\040 JaVaScRiPt:alert\\(1\\)) >>"
    ),
    "uri-javascript-tab-inside": lambda: doc(b"/OpenAction << /S /URI /URI (java\\tscript:alert\\(1\\)) >>"),
    "uri-javascript-hex-reference": lambda: doc(
        b"/OpenAction << /S /URI /URI 6 0 R >>", extra={6: b"<" + b"javascript:void(0)".hex().encode() + b">"}
    ),
}


# -- must pass: accepted, no flags ------------------------------------------------------------

NEAR_MISSES: dict[str, Callable[[], bytes]] = {
    "openaction-fit": lambda: doc(b"/OpenAction [3 0 R /Fit]"),
    "openaction-goto": lambda: doc(b"/OpenAction " + GOTO),
    "uri-mentions-javascript": lambda: doc(
        page=b"/Annots [" + link(b"<< /S /URI /URI (http://example.com/JavaScript-guide) >>") + b"]"
    ),
    "uri-javascript-in-query": lambda: doc(
        page=b"/Annots [" + link(b"<< /S /URI /URI (https://example.com/?go=javascript:alert) >>") + b"]"
    ),
    "named-print": lambda: doc(b"/OpenAction << /S /Named /N /Print >>"),
    "content-stream-mentions-javascript": lambda: doc(
        text=b"Use /JavaScript /JS /Launch and JavaScript: here"
    ),
    "title-metadata-mentions-javascript": lambda: doc(
        b"/Outlines 7 0 R",
        extra={
            6: b"<< /Title (JavaScript /JS /Launch guide) /Subject (javascript:alert\\(1\\))"
            b" /Keywords /JavaScript >>",
            7: b"<< /Type /Outlines /First 8 0 R /Last 8 0 R /Count 1 >>",
            8: b"<< /Title (About JavaScript) /Parent 7 0 R /A " + GOTO + b" >>",
        },
        trailer_extra=b" /Info 6 0 R",
    ),
    "reference-cycle": lambda: doc(
        b"/OpenAction 6 0 R",
        extra={
            6: b"<< /S /GoTo /D [3 0 R /Fit] /Next 7 0 R >>",
            7: b"<< /S /Named /N /FirstPage /Next 6 0 R >>",
        },
    ),
    "dangling-reference": lambda: doc(b"/PieceInfo << /X 99 0 R >>"),
    "huge-array-of-one-reference": lambda: doc(
        b"/PieceInfo << /X [" + b"6 0 R " * 100_000 + b"] >>", extra={6: GOTO}
    ),
}

#: Actions that run no code: each accepted inline in /OpenAction.
ACCEPTED_ACTIONS: dict[str, bytes] = {
    "GoTo": GOTO,
    "URI-https": b"<< /S /URI /URI (https://example.com/) >>",
    "URI-mailto": b"<< /S /URI /URI (mailto:ops@example.com) >>",
    "Named": b"<< /S /Named /N /NextPage >>",
    "Thread": b"<< /S /Thread /D 0 >>",
    "Hide": b"<< /S /Hide /T (field) >>",
    "SetOCGState": b"<< /S /SetOCGState /State [/Toggle] >>",
    "ResetForm": b"<< /S /ResetForm >>",
    "Trans": b"<< /S /Trans /Trans << /S /Dissolve >> >>",
    "Rendition": b"<< /S /Rendition /OP 0 >>",
}


# -- embedded files: accepted and flagged by default ------------------------------------------


def embedded_name_tree() -> bytes:
    return doc(
        b"/Names << /EmbeddedFiles << /Names [(notes.txt) 6 0 R] >> >>",
        extra={
            6: b"<< /Type /Filespec /F (notes.txt) /EF << /F 7 0 R >> >>",
            7: stream(b"just some notes", b" /Type /EmbeddedFile"),
        },
    )


def embedded_attachment_annotation() -> bytes:
    return doc(
        page=b"/Annots [<< /Type /Annot /Subtype /FileAttachment /Rect [0 0 9 9] /FS "
        b"<< /Type /Filespec /F (a.txt) /EF << /F 6 0 R >> >> >>]",
        extra={6: stream(b"attached", b" /Type /EmbeddedFile")},
    )


EMBEDDED: dict[str, Callable[[], bytes]] = {
    "embedded-name-tree": embedded_name_tree,
    "embedded-attachment-annotation": embedded_attachment_annotation,
}
