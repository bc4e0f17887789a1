"""Templates, checked on documents from fpdf2 — not the generator they were tuned on."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pdfs
import pytest

from dox_tasks.steps.pdf import extract_text
from dox_tasks.templates import load_templates, parse_amount, parse_date, recognize_text

TEMPLATES = load_templates(Path(__file__).resolve().parent.parent / "workflow_defs" / "templates")


def text_of(lines: list[str]) -> str:
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(pdfs.fpdf_document(lines))
        f.flush()
        return str(extract_text(f.name, 5)["text"])


INVOICE = [
    "Globex GmbH",
    "Tax Invoice",
    "Invoice No. 2026/0815",
    "Date of issue: 3 March 2026",
    "Item: consulting, 10 h at 95.00",
    "Subtotal 950.00",
    "Tax 19%: 180.50",
    "Amount due: 1.130,50 EUR",
    "Payment terms: 14 days",
]
PURCHASE_ORDER = [
    "Initech",
    "Purchase Order",
    "Order Number: 4500012345",
    "Order date: March 5, 2026",
    "Supplier: Acme Widgets Inc",
    "Deliver to: Initech, Dock 2",
    "Total amount: $ 2,400.00",
]
CONTRACT = [
    "Master Services Contract",
    "Contract No: MSA-2026-9",
    "This contract is entered into by and between Umbrella Corp and Wayne Enterprises.",
    "Effective date: 2026-02-01",
    "The term of this contract is two years.",
    "Termination: either party may terminate for material breach.",
    "Governing law: this contract is governed by the laws of Delaware.",
    "Signed by both parties.",
]


@pytest.mark.parametrize(
    ("lines", "template", "fields"),
    [
        (
            INVOICE,
            "invoice",
            {"invoice_number": "2026/0815", "invoice_date": "2026-03-03", "total": "1130.50"},
        ),
        (
            PURCHASE_ORDER,
            "purchase_order",
            {
                "po_number": "4500012345",
                "order_date": "2026-03-05",
                "total": "2400.00",
                "currency": "USD",
            },
        ),
        (
            CONTRACT,
            "contract",
            {
                "contract_number": "MSA-2026-9",
                "effective_date": "2026-02-01",
                "governing_law": "Delaware",
            },
        ),
    ],
)
def test_documents_from_another_generator_match(lines, template, fields):
    match = recognize_text(TEMPLATES, text_of(lines))
    assert match.template == template
    assert 0.6 <= match.confidence <= 1
    for key, value in fields.items():
        assert match.fields.get(key) == value, (key, match.fields)


@pytest.mark.parametrize(
    "lines",
    [
        # a quotation looks like an invoice but asks for nothing yet
        [
            "Quotation",
            "Quote valid for 30 days",
            "Invoice number will follow on order",
            "Total due on acceptance: EUR 500.00",
        ],
        # a reminder letter mentions an invoice but is not one
        [
            "Dear customer,",
            "this is a friendly reminder that we have not yet received",
            "payment for your invoice. Please contact us.",
        ],
        # a newsletter about contracts is not a contract
        [
            "Newsletter March",
            "Five tips to negotiate better contracts with suppliers",
            "Our team grew by two people.",
        ],
        # an order confirmation e-mail printed to PDF
        ["Thanks for shopping with us!", "Your order is on its way.", "Track it online."],
    ],
)
def test_near_misses_do_not_match(lines):
    match = recognize_text(TEMPLATES, text_of(lines))
    assert match.template is None, (match, lines)


def test_fuzzy_rule_tolerates_a_typo():
    text = text_of([line.replace("Governing law", "Governinq Iaw") for line in CONTRACT])
    assert recognize_text(TEMPLATES, text).template == "contract"


@pytest.mark.parametrize(
    ("raw", "iso"),
    [
        ("2026-11-02", "2026-11-02"),
        ("3 March 2026", "2026-03-03"),
        ("March 5, 2026", "2026-03-05"),
        ("02.11.2026", "2026-11-02"),
        ("1st May 2026", "2026-05-01"),
    ],
)
def test_dates_become_iso(raw, iso):
    assert parse_date(raw) == iso


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1,240.50", "1240.50"), ("1.240,50", "1240.50"), ("300", "300.00"), ("12,50", "12.50")],
)
def test_amounts_become_decimal_strings(raw, value):
    assert parse_amount(raw) == value


def test_a_match_names_the_declared_fields_the_document_did_not_give():
    """The sample invoice gives no due date; without its date of issue, that is missing too."""
    sample = recognize_text(TEMPLATES, text_of(INVOICE))
    assert sample.template == "invoice" and sample.missing == ("due_date",), sample
    without_date = [line for line in INVOICE if not line.startswith("Date of issue")]
    match = recognize_text(TEMPLATES, text_of(without_date))
    assert match.template == "invoice" and set(match.missing) == {"invoice_date", "due_date"}, match
    declared = next(t for t in TEMPLATES if t.name == "invoice").fields
    assert set(match.missing) | set(match.fields) >= set(declared)
