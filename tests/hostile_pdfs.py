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


def _body(
    out: bytearray, objects: dict[Ref, bytes], heads: Mapping[int, bytes] | None = None
) -> dict[int, tuple[int, int]]:
    """Objects written in order; ``heads[num]`` is written at the listed offset, before ``num G obj``."""
    entries: dict[int, tuple[int, int]] = {}
    for (num, gen), body in sorted(objects.items()):
        entries[num] = (len(out), gen)
        out += (heads or {}).get(num, b"") + b"%d %d obj\n" % (num, gen) + body + b"\nendobj\n"
    return entries


def build(
    objects: Mapping[int | Ref, bytes],
    root: Ref = (1, 0),
    trailer_extra: bytes = b"",
    unlisted: bytes = b"",
    heads: Mapping[int, bytes] | None = None,
) -> bytes:
    """A classic PDF: every object, an xref table, a trailer naming ``root``.

    ``unlisted`` is written right after the header and listed nowhere; ``heads`` puts
    bytes between an object's listed offset and its ``N G obj`` (see :func:`_body`).
    """
    refs = _refs(objects)
    out = bytearray(HEADER + unlisted)
    entries = _body(out, refs, heads)
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


def build_objstm(
    plain: Mapping[int, bytes],
    packed: Mapping[int, bytes] | list[tuple[int, bytes]],
    root: int = 1,
    header: bytes | None = None,
) -> bytes:
    """PDF 1.5: ``packed`` objects live in a compressed /ObjStm, found via an xref stream.

    ``packed`` as a list keeps its order and may name a number twice: the xref stream
    then points at the last entry with that number. ``header`` replaces the stream's
    list of (number, offset) pairs.
    """
    out = bytearray(HEADER)
    rows: dict[int, tuple[int, int, int]] = {0: (0, 0, 65535)}
    for num, body in sorted(plain.items()):
        rows[num] = (1, len(out), 0)
        out += b"%d 0 obj\n" % num + body + b"\nendobj\n"
    items = sorted(packed.items()) if isinstance(packed, Mapping) else list(packed)
    stm = max([*plain, *(num for num, _ in items)]) + 1
    pairs, data = [], bytearray()
    for index, (num, body) in enumerate(items):
        pairs.append(b"%d %d" % (num, len(data)))
        data += body + b"\n"
        rows[num] = (2, stm, index)
    head = (b" ".join(pairs) if header is None else header) + b"\n"
    payload = zlib.compress(head + bytes(data))
    rows[stm] = (1, len(out), 0)
    count = len(items) if header is None else len(header.split()) // 2
    out += b"%d 0 obj\n<< /Type /ObjStm /N %d /First %d /Length %d /Filter /FlateDecode >>\nstream\n" % (
        stm,
        count,
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


# -- read one way by pypdf, another by viewers: rejected as malformed ---------------------------
# (security review of issue 10: each of these was accepted, and pdf.js or PDFium ran the action)


def _nul_embedded() -> bytes:
    """``/EmbeddedFiles\\0``: pypdf's key is ``/EmbeddedFiles\\x00``, a viewer's ``/EmbeddedFiles``."""
    return doc(
        b"/Names << /EmbeddedFiles\0<< /Names [(a.txt) 6 0 R] >> >>",
        extra={
            6: b"<< /Type /Filespec /F (a.txt) /E\0F << /F 7 0 R >> >>",
            7: stream(b"notes", b" /Type\0/EmbeddedFile"),
        },
    )


def _comments_decoy() -> bytes:
    """The xref entry of the catalog points at two comments and then the launching
    catalog (what a viewer reads); pypdf skips one comment, fails, and searches the file
    for the first ``1 0 obj``: a harmless copy that no xref lists."""
    decoy = b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    return build(skeleton(b"/OpenAction " + LAUNCH_ACTION), unlisted=decoy, heads={1: b"%a\n%b\n"})


def _objstm_duplicate_number() -> bytes:
    """Object 6 is packed twice; the xref stream points at the second (a launch), pypdf takes the first."""
    objects = skeleton(b"/OpenAction 6 0 R")
    plain = {n: objects[n] for n in (1, 2, 3, 4, 5)}
    return build_objstm(plain, [(6, GOTO), (6, LAUNCH_ACTION)])


def _objstm_duplicate_number_first_listed() -> bytes:
    """As above, but the xref entry names the first copy: still two objects 6 in one stream."""
    objects = skeleton(b"/OpenAction 6 0 R")
    plain = {n: objects[n] for n in (1, 2, 3, 4, 5)}
    return build_objstm(plain, [(6, GOTO), (7, b"null")], header=b"6 0 6 35")


def _linearized(first_page_chained: bool, evil: bool = True) -> bytes:
    """A linearized file: the first-page xref section right after the linearization
    dictionary (where pdf.js starts) lists an evil catalog 9 and names it /Root.

    ``first_page_chained``: the file's last startxref points at the first-page section
    whose /Prev is the main one (as linearized files are written) - pypdf reads both
    and walks object 9. Otherwise the last startxref points at the main section, which
    has no /Prev, and pypdf never sees the first-page section nor object 9.
    """
    lin = b"10 0 obj\n<< /Linearized 1 /L %010d /H [1 1] /O 3 /E 1 /N 1 /T 1 >>\nendobj\n"
    first_page = (
        b"xref\n9 1\n%010d 00000 n \ntrailer\n<< /Size 11 /Root 9 0 R /Prev %010d >>\nstartxref\n0\n%%%%EOF\n"
    )
    out = bytearray(HEADER + lin % 0)
    first_page_at = len(out)
    out += first_page % (0, 0)
    entries = _body(out, _refs(skeleton()))
    evil_at = len(out)
    action = LAUNCH_ACTION if evil else GOTO
    out += b"9 0 obj\n<< /Type /Catalog /Pages 2 0 R /OpenAction " + action + b" >>\nendobj\n"
    entries[10] = (len(HEADER), 0)
    main_at = len(out)
    out += _xref_table(entries, free_head=True)
    out += b"trailer\n<< /Size 11 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        first_page_at if first_page_chained else main_at
    )
    out[first_page_at : first_page_at + len(first_page % (0, 0))] = first_page % (evil_at, main_at)
    out[len(HEADER) : len(HEADER) + len(lin % 0)] = lin % len(out)
    return bytes(out)


def _orphan_xref_stream() -> bytes:
    """An xref stream no startxref or /Prev leads to (a viewer rebuilding the file reads it)."""
    rows = b"\x01" + (0).to_bytes(4, "big") + b"\x00\x00"
    return doc(extra={6: stream(rows, b" /Type /XRef /Size 1 /W [1 4 2] /Root 1 0 R")})


def _objstm_overlapping(n: int = 3000) -> bytes:
    """An unused object stream of ``n`` entries at increasing offsets into one string of
    nested parentheses: entry i is the string from byte i, so parsing them all is
    quadratic in ``n``."""
    objects = skeleton()
    plain: dict[int | Ref, bytes] = {num: objects[num] for num in (1, 2, 3, 4, 5)}
    body = b"(" * n + b")" * n
    header = b" ".join(b"%d %d" % (100 + i, i) for i in range(n))
    head = header + b"\n"
    payload = zlib.compress(head + body)
    extra = b"<< /Type /ObjStm /N %d /First %d /Length %d /Filter /FlateDecode >>\nstream\n" % (
        n,
        len(head),
        len(payload),
    )
    plain[6] = extra + payload + b"\nendstream"
    return build(plain)


def _objstm_same_offset(n: int = 2000) -> bytes:
    """An unused object stream naming ``n`` objects, all at offset 0 of one ``n``-element array."""
    objects = skeleton()
    plain: dict[int | Ref, bytes] = {num: objects[num] for num in (1, 2, 3, 4, 5)}
    head = b" ".join(b"%d 0" % (100 + i) for i in range(n)) + b"\n"
    payload = zlib.compress(head + b"[" + b"0 " * n + b"]")
    plain[6] = (
        b"<< /Type /ObjStm /N %d /First %d /Length %d /Filter /FlateDecode >>\nstream\n"
        % (
            n,
            len(head),
            len(payload),
        )
        + payload
        + b"\nendstream"
    )
    return build(plain)


MALFORMED: dict[str, Callable[[], bytes]] = {
    # a NUL byte ends a name for viewers, not for pypdf
    "nul-after-s-launch": lambda: doc(b"/OpenAction << /S\0/Launch /F (calc.exe) >>"),
    "nul-after-js-key": lambda: doc(b"/OpenAction << /S /Rendition /JS\0" + JS + b" >>"),
    "nul-after-javascript-names": lambda: doc(
        b"/Names << /JavaScript\0<< /Names [(a) 6 0 R] >> >>", extra={6: b"<< /S /Named /N /NextPage >>"}
    ),
    "nul-after-xfa": lambda: doc(b"/AcroForm << /Fields [] /XFA\0 6 0 R >>", extra={6: stream(b"<xdp/>")}),
    "nul-after-uri-key": lambda: doc(
        page=b"/Annots [" + link(b"<< /S /URI /URI\0(javascript:app.alert\\(1\\)) >>") + b"]"
    ),
    "nul-after-gotor": lambda: doc(page=b"/Annots [" + link(b"<< /S\0/GoToR /F (other.pdf) >>") + b"]"),
    "nul-escaped-in-name": lambda: doc(b"/OpenAction << /S#00/Launch /F (calc.exe) >>"),
    "nul-embedded-files": _nul_embedded,
    # an xref offset that pypdf cannot read there, so it takes another copy
    "xref-offset-two-comments-decoy": _comments_decoy,
    # object streams: one number twice
    "objstm-duplicate-number": _objstm_duplicate_number,
    "objstm-duplicate-number-first-listed": _objstm_duplicate_number_first_listed,
    # cross-reference data pypdf's chain does not reach
    "linearized-first-page-xref-unchained": lambda: _linearized(first_page_chained=False),
    "orphan-xref-stream": _orphan_xref_stream,
}

#: Structures built to make the walk slow: each an answer (a rejection) within a second.
COSTLY: dict[str, Callable[[], bytes]] = {
    "objstm-same-offset": _objstm_same_offset,
    "objstm-overlapping-entries": _objstm_overlapping,
}

#: Well-formed and harmless, but close to the above: each accepted, no flags.
STRUCTURE_NEAR_MISSES: dict[str, Callable[[], bytes]] = {
    "linearized-first-page-xref-chained": lambda: _linearized(first_page_chained=True, evil=False),
    "escaped-space-in-font-name": lambda: doc(
        extra={7: b"<< /Type /Font /Subtype /TrueType /BaseFont /Times#20New#20Roman,Bold >>"},
        page=b"/Annots [] /PieceInfo << /F 7 0 R >>",
    ),
    "one-comment-before-object": lambda: build(skeleton(), heads={1: b"%comment\n"}),
    "jbig2-image": lambda: doc(
        page=b"/PieceInfo << /Im 6 0 R >>",
        extra={
            6: stream(
                b"\x97JB2\r\n\x1a\n\x01\x00\x00\x00\x01" + b"\x00" * 40,
                b" /Type /XObject /Subtype /Image /Width 8 /Height 8 /BitsPerComponent 1"
                b" /ColorSpace /DeviceGray /Filter /JBIG2Decode",
            )
        },
    ),
    "dct-image-in-flate": lambda: doc(
        page=b"/PieceInfo << /Im 6 0 R >>",
        extra={
            6: stream(
                zlib.compress(b"\xff\xd8\xff\xd9"),
                b" /Type /XObject /Subtype /Image /Width 1 /Height 1 /BitsPerComponent 8"
                b" /ColorSpace /DeviceGray /Filter [/FlateDecode /DCTDecode]",
            )
        },
    ),
}


#: javascript: behind control bytes that PDFDocEncoding turns into accents (0x18-0x1F).
def _uri_after(byte: int) -> Callable[[], bytes]:
    uri = b"<< /S /URI /URI (" + bytes([byte]) + b"javascript:app.alert\\(1\\)) >>"
    return lambda: doc(page=b"/Annots [" + link(uri) + b"]")


HOSTILE.update({f"uri-javascript-after-0x{byte:02x}": _uri_after(byte) for byte in range(0x18, 0x20)})
HOSTILE["uri-base-javascript-after-0x1f"] = lambda: doc(b"/URI << /Base (\x1fjavascript:x/) >>")
#: Linearized as written: the last startxref leads to the first-page section, read too.
HOSTILE["linearized-first-page-catalog"] = lambda: _linearized(first_page_chained=True)
HOSTILE["js-key-escaped-space"] = lambda: doc(b"/OpenAction << /S /Rendition /JS#20x " + JS + b" >>")
