"""A tiny, dependency-free PDF writer: DOX's own sample documents and hostile test files.

It writes PDF objects by hand so tests can build exactly the structures that
matter (JavaScript in an object stream, name escapes, a looping page tree, a
compression bomb). The templates in ``workflow_defs/templates`` were tuned on
documents from this writer; the tests check them on documents from fpdf2, a
different generator.
"""

from __future__ import annotations

import zlib


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def content_stream(lines: list[str], size: int = 11) -> bytes:
    """A page content stream that draws each line with Helvetica, top to bottom."""
    ops = ["BT", f"/F1 {size} Tf", f"{size + 4} TL", "50 780 Td"]
    for line in lines:
        ops.append(f"({_escape(line)}) Tj T*")
    ops.append("ET")
    return "\n".join(ops).encode("latin-1")


def stream_obj(data: bytes, extra: str = "", compress: bool = False) -> bytes:
    if compress:
        data = zlib.compress(data)
        extra += " /Filter /FlateDecode"
    return b"<< /Length %d%s >>\nstream\n" % (len(data), extra.encode()) + data + b"\nendstream"


def assemble(objects: list[bytes], root: int = 1, info: int | None = None, trailer_extra: str = "") -> bytes:
    """Classic PDF with an xref table; object i+1 is ``objects[i]``."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    trailer = f"<< /Size {len(objects) + 1} /Root {root} 0 R"
    if info:
        trailer += f" /Info {info} 0 R"
    trailer += f"{trailer_extra} >>"
    out += b"trailer\n" + trailer.encode() + b"\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def assemble_with_objstm(plain: list[bytes], packed: list[bytes], root: int = 1) -> bytes:
    """PDF 1.5 with a cross-reference stream; ``packed`` objects live in a compressed ObjStm.

    Objects are numbered: plain first (1..p), then packed (p+1..p+k), then the
    object stream and the xref stream.
    """
    out = bytearray(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    entries: list[tuple[int, int, int]] = [(0, 0, 65535)]
    for i, body in enumerate(plain, start=1):
        entries.append((1, len(out), 0))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    first_packed = len(plain) + 1
    objstm_num = first_packed + len(packed)
    header, data = [], bytearray()
    for j, body in enumerate(packed):
        header.append(f"{first_packed + j} {len(data)}")
        data += body + b"\n"
        entries.append((2, objstm_num, j))
    head = (" ".join(header) + "\n").encode()
    payload = zlib.compress(head + bytes(data))
    entries.append((1, len(out), 0))
    out += (
        b"%d 0 obj\n<< /Type /ObjStm /N %d /First %d /Length %d /Filter /FlateDecode >>\nstream\n"
        % (objstm_num, len(packed), len(head), len(payload))
        + payload
        + b"\nendstream\nendobj\n"
    )
    xref_num = objstm_num + 1
    entries.append((1, len(out), 0))
    rows = b"".join(bytes([t]) + a.to_bytes(4, "big") + b.to_bytes(2, "big") for t, a, b in entries)
    comp = zlib.compress(rows)
    xref_off = entries[-1][1]
    out += (
        b"%d 0 obj\n<< /Type /XRef /Size %d /W [1 4 2] /Root %d 0 R /Length %d"
        b" /Filter /FlateDecode >>\nstream\n" % (xref_num, xref_num + 1, root, len(comp))
    )
    out += comp + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_off
    return bytes(out)


def text_pdf(pages: list[list[str]], catalog_extra: str = "", compress: bool = True) -> bytes:
    """A normal PDF with one page per list of lines."""
    n = len(pages)
    # 1 catalog, 2 pages, 3 font, then (page, content) pairs
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects = [
        f"<< /Type /Catalog /Pages 2 0 R{catalog_extra} >>".encode(),
        f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, lines in enumerate(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {5 + 2 * i} 0 R"
            " /Resources << /Font << /F1 3 0 R >> >> >>".encode()
        )
        objects.append(stream_obj(content_stream(lines), compress=compress))
    return assemble(objects)
