"""Write the sample inbox (examples/inbox/) that `dox run examples/inbox` processes.

Run: python examples/make_samples.py [OUTDIR]. The expected outcome of each file
is declared in examples/inbox/EXPECTED.json, and tests/test_examples.py checks it.
"""

from __future__ import annotations

import json
import sys
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pdfgen import assemble, content_stream, stream_obj, text_pdf  # noqa: E402

INVOICE = [
    "ACME Supplies Ltd",
    "12 Harbour Road, Dublin",
    "",
    "INVOICE",
    "Invoice Number: INV-2026-0042",
    "Invoice Date: 2026-11-02",
    "Due Date: 2026-12-02",
    "Bill To: Northwind Traders",
    "",
    "Description            Qty   Unit Price   Amount",
    "A4 paper, box of 5     10    25.00        250.00",
    "Subtotal: 250.00",
    "VAT 20%: 50.00",
    "Total Due: EUR 300.00",
    "Payment terms: 30 days net. Thank you for your business.",
]
PURCHASE_ORDER = [
    "Northwind Traders",
    "PURCHASE ORDER",
    "PO Number: PO-88731",
    "Order Date: 2026-10-15",
    "Vendor: Globex Corporation",
    "Ship To: Northwind Traders, Warehouse 3",
    "Delivery Date: 2026-11-30",
    "Item                  Qty    Unit Price",
    "Steel bolts M8          500    1.20",
    "Order Total: USD 1,240.50",
    "Authorized by: Purchasing Department",
]
CONTRACT = [
    "SERVICES AGREEMENT",
    "Contract No: C-2026-117",
    "Effective Date: 2026-11-01",
    "This Agreement is made between Initech LLC (the Client)",
    "and Hooli Inc (the Provider).",
    "1. Term. This Agreement remains in force for twelve (12) months.",
    "2. Termination. Either party may terminate with 30 days written notice.",
    "3. Governing Law. This Agreement is governed by the laws of Ireland.",
    "IN WITNESS WHEREOF the parties have signed this Agreement.",
    "Signature: ____________   Signature: ____________",
]
MEMO = [
    "Engineering memo",
    "Subject: front-end guidelines",
    "We write our web pages in TypeScript that compiles to JavaScript.",
    "Never paste JavaScript into PDF forms; /JavaScript actions are blocked by DOX.",
]


def png_bytes() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = b"\x00\xff\x00\x00"
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def javascript_pdf() -> bytes:
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction 5 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 6 0 R >> >> >>",
        stream_obj(content_stream(["Open me"])),
        b"<< /Type /Action /S /JavaScript /JS (app.alert\\('hi'\\);) >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    return assemble(objects)


def encrypted_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(BytesIO(text_pdf([["Board minutes, confidential"]]))))
    writer.encrypt(user_password="s3cret", owner_password="owner", algorithm="AES-128")
    buf = BytesIO()
    writer.write(buf)
    return buf.getvalue()


SAMPLES: dict[str, tuple[bytes, dict[str, object]]] = {}


def build() -> dict[str, tuple[bytes, dict[str, object]]]:
    invoice = text_pdf([INVOICE])
    return {
        "invoice-acme.pdf": (invoice, {"status": "success", "template": "invoice"}),
        "invoice-copy-of-acme.pdf": (
            invoice,
            {"status": "duplicate", "duplicate_of": "invoice-acme.pdf"},
        ),
        "purchase-order-globex.pdf": (
            text_pdf([PURCHASE_ORDER]),
            {"status": "success", "template": "purchase_order"},
        ),
        "contract-initech.pdf": (
            text_pdf([CONTRACT, ["Schedule A: services", "Monthly report"]]),
            {"status": "success", "template": "contract"},
        ),
        "memo-mentions-javascript.pdf": (text_pdf([MEMO]), {"status": "success", "template": None}),
        "empty.pdf": (b"", {"status": "rejected", "reason": "empty"}),
        "photo-renamed.pdf": (png_bytes(), {"status": "rejected", "reason": "type_mismatch"}),
        "truncated.pdf": (
            invoice[: len(invoice) // 2],
            {"status": "rejected", "reason": "truncated"},
        ),
        "javascript.pdf": (javascript_pdf(), {"status": "rejected", "reason": "javascript"}),
        "encrypted.pdf": (encrypted_pdf(), {"status": "rejected", "reason": "encrypted"}),
    }


def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, outcome) in build().items():
        (outdir / name).write_bytes(data)
        expected[name] = outcome
    # EXPECTED.json sits in the inbox too, so `dox run` treats it as a document: JSON is not
    # an accepted type, which makes it the sample for type_not_allowed.
    expected["EXPECTED.json"] = {"status": "rejected", "reason": "type_not_allowed"}
    (outdir / "EXPECTED.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(f"wrote {len(expected)} samples to {outdir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "inbox")
