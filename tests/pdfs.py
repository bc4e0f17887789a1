"""Documents for tests, made by the tests.

Ordinary documents come from fpdf2 (a different generator than the one the
templates were tuned on); hostile structures are written by hand with
examples/pdfgen.py so each test gets exactly the structure it is about.
"""

from __future__ import annotations

import base64
import sys
import zlib
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from pdfgen import (  # noqa: E402
    assemble,
    assemble_with_objstm,
    content_stream,
    stream_obj,
    text_pdf,
)

EICAR = base64.b64decode(
    b"WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo="
)


def fpdf_document(lines: list[str], *, font_size: int = 11) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Times", size=font_size)
    for line in lines:
        pdf.multi_cell(0, 6, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def simple(text: str = "Hello from DOX tests") -> bytes:
    return text_pdf([[text]])


def unique(n: int) -> bytes:
    """A distinct, valid one-page PDF per n (no accidental duplicates)."""
    return text_pdf([[f"Test document number {n}", "Nothing to see here."]])


def truncated() -> bytes:
    data = simple()
    return data[: len(data) - 40]


def malformed() -> bytes:
    # Ends properly, but the cross-reference offsets point at garbage.
    data = simple().replace(b"xref\n0 ", b"xref\n0 ")
    head, _, _ = data.partition(b"xref")
    return head + b"xref\n0 3\nthis is not a table\ntrailer\n<< /Root 99 0 R >>\nstartxref\n9\n%%EOF\n"


def javascript_plain() -> bytes:
    from make_samples import javascript_pdf  # type: ignore[import-not-found]

    return javascript_pdf()


def javascript_escaped_name() -> bytes:
    """/J#61vaScript is /JavaScript with an escaped 'a' — same name to a PDF reader."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /Names << /J#61vaScript 5 0 R >> >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
        stream_obj(content_stream(["Hi"])),
        b"<< /Names [(x) 6 0 R] >>",
        b"<< /S /J#61vaScript /J#53 (app.alert\\(2\\)) >>",
    ]
    return assemble(objects)


def javascript_in_object_stream() -> bytes:
    """The action sits inside a compressed object stream, invisible to a byte grep."""
    plain = [
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
        stream_obj(content_stream(["Hi"]), compress=True),
    ]
    packed = [b"<< /S /JavaScript /JS (app.alert\\(3\\)) >>"]
    return assemble_with_objstm(plain, packed)


def mentions_javascript() -> bytes:
    return text_pdf(
        [
            [
                "Our style guide covers JavaScript and /JavaScript actions.",
                "The word /JS appears here only as text.",
            ]
        ]
    )


def looping_page_tree() -> bytes:
    """The page tree's kid points back at its own parent: a naive walk never ends."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R] /Count 1 >>",
    ]
    return assemble(objects)


def compression_bomb(inflated_mib: int = 600) -> bytes:
    """A small file whose one stream inflates to hundreds of MiB of zeros."""
    comp = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    data = b"".join(comp.compress(chunk) for _ in range(inflated_mib)) + comp.flush()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(data) + data + b"\nendstream",
    ]
    return assemble(objects)


def encrypted(user_password: str = "s3cret", owner_password: str = "owner") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(BytesIO(simple("Secret minutes"))))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="AES-128")
    buf = BytesIO()
    writer.write(buf)
    return buf.getvalue()


def owner_only_encrypted() -> bytes:
    """Opens without a password (restrictions only): accepted, flagged owner_password."""
    return encrypted(user_password="", owner_password="owner-only")


def eicar_pdf() -> bytes:
    """A valid PDF that carries the EICAR test string in an (uncompressed) embedded stream."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        stream_obj(content_stream(["Quarterly report"])),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        stream_obj(EICAR, extra=" /Type /EmbeddedFile"),
    ]
    return assemble(objects)


def png() -> bytes:
    from make_samples import png_bytes  # type: ignore[import-not-found]

    return png_bytes()
