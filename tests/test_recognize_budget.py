"""Recognition cannot be stalled by one document (issue 10, section 5).

Template matching runs in the sandbox child with text extraction, under the
parser's CPU limit; the shipped rules do not backtrack over blank runs; and
``dox defs validate`` warns about rules that would. Documents are written here;
the pipeline tests run ``dox run`` in the embedded default, as a person would.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pdfs  # noqa: F401 - puts examples/ (pdfgen) on sys.path
import pytest
from pdfgen import assemble, stream_obj  # on sys.path via tests/pdfs.py
from services import clean_env

from dox_tasks.sandbox import LimitExceeded, Limits, run_limited
from dox_tasks.settings import Settings
from dox_tasks.templates import MAX_TEXT, load_templates, recognize_text

#: A catastrophic rule: exponential on a line of spaces that does not end the line.
EVIL_TEMPLATE = """\
name: evil
description: a template whose rule backtracks exponentially over whitespace
threshold: 0.5
rules:
  - regex: '^(\\s+)+$'
    weight: 1
"""


def shipped_defs() -> Path:
    """The definitions that come with the DOX being tested (not necessarily this checkout's)."""
    return Settings().model_copy(update={"defs_dir": None}).definitions


def text_layer_pdf(text: str) -> bytes:
    """A one-page PDF whose text layer is exactly ``text`` (newlines as ``\\n`` escapes).

    The content stream is compressed, so 16,000 newlines make a ~660-byte file — the
    document from the issue.
    """
    body = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").replace("\n", "\\n")
    content = f"BT /F1 11 Tf 50 780 Td ({body}) Tj ET".encode("latin-1")
    return assemble(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
            b" /Resources << /Font << /F1 5 0 R >> >> >>",
            stream_obj(content, compress=True),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        ]
    )


def dox_run(folder: Path, tmp_path: Path, timeout: float, **env: str) -> dict[str, dict[str, Any]]:
    """``dox run --json`` on a folder in the embedded default; results by file name.

    Its own timeout (the old code matched in the worker without any limit and a
    test waiting on it would wait for 40 minutes): when it expires the command is
    killed and the test fails.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", "run", str(folder), "--json"],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path, **env),
        cwd=tmp_path,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return {Path(r["file"]).name: r for r in map(json.loads, proc.stdout.splitlines())}


def recognize_rows(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The recorded ``recognize`` step of each workflow, by workflow id."""
    db = sqlite3.connect(tmp_path / "home" / "dox.db")
    rows = db.execute(
        "select workflow_id, state, output, duration_ms from workflow_step_results where step = 'recognize'"
    ).fetchall()
    return {
        wid: {"state": state, "output": json.loads(out) if isinstance(out, str) else out, "ms": ms}
        for wid, state, out, ms in rows
    }


# -- (1) the newline document, in the embedded default ---------------------------------
@pytest.mark.parametrize("newlines", [16_000, MAX_TEXT - 1], ids=["issue-16k-newlines", "text-cap"])
def test_newline_document_is_matched_within_the_budget(tmp_path, newlines):
    """16,000 newlines cost 16 s of matching before (the cap ~40 min); now it ends at once.

    ``x`` first: a text layer of only whitespace is "no text layer" and never matched.
    The recorded outcome says matching ran to the end (``unrecognized``, not an
    over-budget ``unreadable``), and the recorded step took less than the default CPU
    budget of the parser (10 s) — the old code needed 17.5 s CPU for the 16k document.
    """
    folder = tmp_path / "in"
    folder.mkdir()
    data = text_layer_pdf("x" + "\n" * newlines)
    (folder / "blank-lines.pdf").write_bytes(data)
    got = dox_run(folder, tmp_path, timeout=90)["blank-lines.pdf"]
    assert (got["status"], got["recognition"]) == ("success", "unrecognized"), got
    (step,) = recognize_rows(tmp_path).values()
    assert step["state"] == "success"
    assert step["output"]["recognition"] == "unrecognized"
    assert "unreadable_reason" not in step["output"]
    assert step["ms"] < Settings().parser_cpu_s * 1000, step


# -- (2) a catastrophic rule trips the sandbox's CPU limit --------------------------------
def test_catastrophic_template_trips_the_cpu_budget_and_the_workflow_still_succeeds(tmp_path):
    defs = tmp_path / "defs"
    shutil.copytree(shipped_defs(), defs, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    (defs / "templates" / "evil.yaml").write_text(EVIL_TEMPLATE)
    folder = tmp_path / "in"
    folder.mkdir()
    # a line of spaces that ends in "!": ^(\s+)+$ tries 2^60 ways to split it
    (folder / "spaces.pdf").write_bytes(text_layer_pdf("x\n" + " " * 60 + "!"))
    (folder / "no-text.pdf").write_bytes(text_layer_pdf(""))  # a page with nothing to read
    results = dox_run(folder, tmp_path, timeout=90, DOX_DEFS_DIR=str(defs), DOX_PARSER_CPU_S="1")

    spaces, blank = results["spaces.pdf"], results["no-text.pdf"]
    # the document is safe and stored: success, just not recognised
    assert (spaces["status"], spaces["recognition"], spaces["template"]) == ("success", "unreadable", None)
    assert spaces["storage_key"]
    steps = recognize_rows(tmp_path)
    out = steps[spaces["workflow_id"]]["output"]
    assert out["unreadable_reason"] == "cpu_budget" and out["budget_phase"] == "matching", out
    assert "template matching exceeded its CPU budget of 1 s" in out["note"], out
    # "no text layer" is a different answer from "matching ran out of budget"
    assert (blank["status"], blank["recognition"]) == ("success", "unreadable")
    assert steps[blank["workflow_id"]]["output"]["unreadable_reason"] == "no_text_layer"


# -- the shipped rules at the cap ---------------------------------------------------------
INVOICE = "Tax Invoice\nInvoice No. 1\nDate of issue: x\nAmount due: x\nVAT\nPayment terms\n"
PURCHASE_ORDER = "Purchase Order\nPO number: x\nOrder date: x\nVendor x\nShip to\n"
CONTRACT = "Contract between the parties, term of, termination, governing law, signed\n"
ROOM = MAX_TEXT - 200


@pytest.mark.parametrize(
    "text",
    [
        "x" + "\n" * ROOM,
        "x" + " \n\t" * (ROOM // 3),
        INVOICE + "invoice number" + " " * ROOM + "!",
        INVOICE + "invoice date:" + "\n" * ROOM + "!",
        INVOICE + "total due" + " \n" * (ROOM // 2) + "!",
        PURCHASE_ORDER + "vendor:" + " " * ROOM + "!",
        PURCHASE_ORDER + "total " * (ROOM // 6),
        CONTRACT + "effective date" + " " * ROOM + "!",
        "a " * (ROOM // 2),  # one fuzzy window per word
    ],
    ids=[
        "newlines",
        "mixed-blank",
        "invoice-number-spaces",
        "invoice-date-newlines",
        "total-due-blank",
        "vendor-spaces",
        "many-totals",
        "effective-date-spaces",
        "many-words",
    ],
)
def test_shipped_templates_stay_within_a_small_cpu_budget_at_the_text_cap(text):
    """Hostile text at the cap, matched in a sandbox child with 3 s of CPU (not wall time)."""
    templates = load_templates(shipped_defs() / "templates")
    try:
        run_limited(lambda: asdict(recognize_text(templates, text)), limits=Limits(cpu_s=3, wall_s=60))
    except LimitExceeded as exc:
        pytest.fail(f"matching the shipped templates ran out of budget: {exc}")


# -- (3) dox defs validate warns ----------------------------------------------------------
def test_defs_validate_warns_on_backtracking_template_regexes(tmp_path):
    defs = tmp_path / "defs"
    shutil.copytree(shipped_defs(), defs, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    (defs / "templates" / "risky.yaml").write_text(
        textwrap.dedent(
            """\
            name: risky
            rules:
              - literal: invoice
              - regex: '^\\s*(tax\\s+)?invoice\\s*$'
            fields:
              ref:
                regex: 'ref(\\s*\\w+)*(?P<value>\\d+)'
            """
        )
    )
    env = clean_env(tmp_path)
    ok = subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", "defs", "validate", str(shipped_defs())],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0 and "warning:" not in ok.stderr, ok.stderr  # the shipped rules are clean
    res = subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", "defs", "validate", str(defs)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr  # a warning, not an error
    risky = str(defs / "templates" / "risky.yaml")
    lines = [line for line in res.stderr.splitlines() if "warning:" in line]
    assert len(lines) == 2, res.stderr
    rule, field = lines
    assert rule.startswith(f"{risky}:4: warning: rules[1] regex '^\\s*(tax\\s+)?invoice\\s*$': leading:")
    assert field.startswith(f"{risky}:7: warning: fields.ref regex 'ref(\\s*\\w+)*(?P<value>\\d+)': nested:")


@pytest.mark.parametrize(
    ("pattern", "shapes"),
    [
        (r"^\s*(tax\s+)?invoice\s*$", ["leading"]),
        (r"\s*(x\s+)?y\s*", ["leading"]),
        (r"(\s+)*", ["leading", "nested"]),
        (r"x(\s*\w+)*y", ["nested"]),
        (r"total\s*:?\s*(?P<value>\d+)", ["adjacent"]),
        (r"vendor\s*(?P<value>.+)", ["adjacent"]),
        (r"^[ \t]*(?:tax[ \t]+)?invoice[ \t]*$", []),
        (r"\Ainvoice\s*+(?::\s*+)?(?P<value>\d+)", []),
        (r"governed\s+by\s+the\s+laws?\s+of\s+(?P<value>[A-Za-z ]{2,40}?)[.\n]", []),
        (r"\d+\s+\d+", []),
    ],
)
def test_backtracking_heuristic(pattern, shapes):
    from dox_tasks.regexcheck import backtracking_warnings

    assert [w.split(":", 1)[0] for w in backtracking_warnings(pattern)] == shapes
