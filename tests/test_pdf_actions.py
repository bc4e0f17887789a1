"""Script and launch actions anywhere in a PDF (issue 10, section 1).

Unit tests call ``inspect_pdf`` directly on hand-written documents (tests/hostile_pdfs.py):
every placement of an action, every row of the policy table, near-misses that must
pass, embedded files flagged or refused, and structures meant to exhaust a naive walk.
The end-to-end tests send the same documents through ``dox run`` (embedded default)
and through a real worker on Redis, Postgres and clamd.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import hostile_pdfs as hp
import pytest
from pypdf import PdfReader
from pypdf.generic import IndirectObject
from services import clean_env, dox

from dox_tasks.contract import DocumentResult
from dox_tasks.steps import pdf as pdf_step
from dox_tasks.steps import pdf_policy, pdf_reader
from dox_tasks.steps.pdf import inspect_pdf

ALL_DOCS = {**hp.HOSTILE, **hp.NEAR_MISSES, **hp.EMBEDDED, **hp.STRUCTURE_NEAR_MISSES}


def inspect(tmp_path: Path, data: bytes, **kw: Any) -> dict[str, Any]:
    path = tmp_path / "doc.pdf"
    path.write_bytes(data)
    return inspect_pdf(str(path), **kw)


def strictly_valid(data: bytes) -> None:
    """pypdf's strict mode opens it and can read every listed object: the file is sound."""
    reader = PdfReader(BytesIO(data), strict=True)
    assert len(reader.pages) == 1
    for gen, numbers in reader.xref.items():
        for num in numbers:
            reader.get_object(IndirectObject(num, gen, reader))
    for num in reader.xref_objStm:
        reader.get_object(num)


@pytest.mark.parametrize("name", sorted(ALL_DOCS))
def test_hand_made_documents_are_well_formed(name: str) -> None:
    strictly_valid(ALL_DOCS[name]())


@pytest.mark.parametrize("name", sorted(hp.HOSTILE))
def test_action_placements_are_rejected_javascript(tmp_path: Path, name: str) -> None:
    got = inspect(tmp_path, hp.HOSTILE[name]())
    assert got["reason"] == "javascript", got
    assert got["detail"].startswith("the PDF ") and "(" in got["detail"]
    assert got["pages"] == 1


def test_detail_names_where_the_action_was_found(tmp_path: Path) -> None:
    assert inspect(tmp_path, hp.HOSTILE["openaction-js-inline"]())["detail"] == (
        "the PDF runs JavaScript when opened (/Root /OpenAction /JS)"
    )
    launch = inspect(tmp_path, hp.HOSTILE["openaction-launch-inline"]())["detail"]
    assert launch == "the PDF launches a program or file when opened (/Root /OpenAction /S /Launch)"
    page = inspect(tmp_path, hp.HOSTILE["page-aa-inline"]())["detail"]
    assert "on a viewer event" in page and "/Kids[0] /AA /O" in page
    field = inspect(tmp_path, hp.HOSTILE["form-field-aa-inline"]())["detail"]
    assert "/AcroForm /Fields[0] /AA /K" in field


def test_detail_keeps_hostile_names_readable(tmp_path: Path) -> None:
    """A name from the file (here with a newline and an ESC) is shown, not obeyed."""
    data = hp.doc(b"/Nasty#0A#1B[31m << /OpenAction " + hp.JS_ACTION + b" >>")
    detail = inspect(tmp_path, data)["detail"]
    assert "\n" not in detail and "\x1b" not in detail


# -- each row of the policy table -------------------------------------------------------------


#: The policy as this test expects it: (name, position, verdict). The code's table
#: (steps/pdf_policy.POLICY) must say the same, and so must docs/ARCHITECTURE.md.
EXPECTED_POLICY = [
    ("/JS", "key", "javascript"),
    ("/JavaScript", "key", "javascript"),
    ("/JavaScript", "action", "javascript"),
    ("/Launch", "action", "javascript"),
    ("/SubmitForm", "action", "javascript"),
    ("/ImportData", "action", "javascript"),
    ("/GoToR", "action", "javascript"),
    ("/GoToE", "action", "javascript"),
    ("/RichMedia", "action", "javascript"),
    ("/RichMediaExecute", "action", "javascript"),
    ("/RichMedia", "subtype", "javascript"),
    ("/RichMedia", "key", "javascript"),
    ("/RichMediaContent", "key", "javascript"),
    ("/OnInstantiate", "key", "javascript"),
    ("/XFA", "key", "javascript"),
    ("javascript", "uri", "javascript"),
    ("vbscript", "uri", "javascript"),
    ("/EmbeddedFiles", "key", "embedded_files"),
    ("/EF", "key", "embedded_files"),
    ("/EmbeddedFile", "type", "embedded_files"),
    ("/FileAttachment", "subtype", "embedded_files"),
]


def _placed(name: str, position: str) -> bytes:
    """A document where ``name`` sits in exactly the position the rule is about."""
    n = name.encode()
    if position == "key":
        return hp.doc(
            page=b"/Annots [<< /Type /Annot /Subtype /Widget /Rect [0 0 9 9] /MK << " + n + b" (x) >> >>]"
        )
    if position == "action":
        return hp.doc(page=b"/Annots [" + hp.link(b"<< /S " + n + b" /F (other.pdf) >>") + b"]")
    if position == "subtype":
        return hp.doc(page=b"/Annots [<< /Type /Annot /Subtype " + n + b" /Rect [0 0 9 9] >>]")
    if position == "type":  # a stream nothing refers to: found through the xref
        return hp.doc(extra={6: hp.stream(b"data", b" /Type " + n)})
    assert position == "uri"
    return hp.doc(page=b"/Annots [" + hp.link(b"<< /S /URI /URI (" + n + b":alert\\(1\\)) >>") + b"]")


@pytest.mark.parametrize(("name", "position", "verdict"), EXPECTED_POLICY, ids=lambda v: str(v))
def test_each_policy_entry(tmp_path: Path, name: str, position: str, verdict: str) -> None:
    data = _placed(name, position)
    strictly_valid(data)
    got = inspect(tmp_path, data)
    if verdict == "embedded_files":
        assert got == {"reason": None, "pages": 1, "flags": ["embedded_files"]}
        refused = inspect(tmp_path, data, reject_embedded_files=True)
        assert refused["reason"] == "embedded_files", refused
    else:
        assert got["reason"] == verdict, got
        assert got["detail"].startswith("the PDF ")


def test_policy_table_in_code_is_the_expected_one() -> None:
    assert [(r.name, r.position, r.verdict.value) for r in pdf_policy.POLICY] == EXPECTED_POLICY
    assert all(r.what for r in pdf_policy.POLICY)


def test_policy_table_is_the_one_in_the_architecture_doc() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("#### Script-action policy", 1)[1].split("\n\n| name |", 1)[1].split("\n\n", 1)[0]
    documented = []
    for line in table.splitlines()[2:]:
        name, position, verdict, what = (cell.strip() for cell in line.strip("|").split("|"))
        documented.append((name.strip("`").rstrip(":"), position, verdict.strip("`"), what))
    assert documented == [(r.name, r.position, r.verdict.value, r.what) for r in pdf_policy.POLICY]


# -- must pass --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(hp.NEAR_MISSES))
def test_near_misses_are_accepted(tmp_path: Path, name: str) -> None:
    assert inspect(tmp_path, hp.NEAR_MISSES[name]()) == {"reason": None, "pages": 1, "flags": []}


@pytest.mark.parametrize("name", sorted(hp.ACCEPTED_ACTIONS))
def test_actions_that_run_no_code_are_accepted(tmp_path: Path, name: str) -> None:
    data = hp.doc(b"/OpenAction " + hp.ACCEPTED_ACTIONS[name])
    assert inspect(tmp_path, data) == {"reason": None, "pages": 1, "flags": []}


def test_fpdf2_document_with_a_link_is_accepted(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(0, 10, "See the JavaScript guide", link="https://example.com/JavaScript")
    pdf.set_title("JavaScript for accountants")
    assert inspect(tmp_path, bytes(pdf.output())) == {"reason": None, "pages": 1, "flags": []}


# -- embedded files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(hp.EMBEDDED))
def test_embedded_files_are_flagged_by_default(tmp_path: Path, name: str) -> None:
    assert inspect(tmp_path, hp.EMBEDDED[name]()) == {"reason": None, "pages": 1, "flags": ["embedded_files"]}


@pytest.mark.parametrize("name", sorted(hp.EMBEDDED))
def test_embedded_files_are_rejected_when_configured(tmp_path: Path, name: str) -> None:
    got = inspect(tmp_path, hp.EMBEDDED[name](), reject_embedded_files=True)
    assert got["reason"] == "embedded_files"
    assert "embeds files" in got["detail"] and "DOX_REJECT_EMBEDDED_FILES" in got["detail"]


def test_reject_embedded_files_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from dox_tasks.settings import Settings

    monkeypatch.delenv("DOX_REJECT_EMBEDDED_FILES", raising=False)
    assert Settings().reject_embedded_files is False
    monkeypatch.setenv("DOX_REJECT_EMBEDDED_FILES", "true")
    assert Settings().reject_embedded_files is True


def test_javascript_wins_over_an_embedded_file(tmp_path: Path) -> None:
    data = hp.doc(
        b"/Names << /EmbeddedFiles << /Names [(a) 6 0 R] >> >> /AA << /WC " + hp.JS_ACTION + b" >>",
        extra={
            6: b"<< /Type /Filespec /F (a) /EF << /F 7 0 R >> >>",
            7: hp.stream(b"x", b" /Type /EmbeddedFile"),
        },
    )
    assert inspect(tmp_path, data)["reason"] == "javascript"
    assert inspect(tmp_path, data, reject_embedded_files=True)["reason"] == "javascript"


def test_owner_password_and_embedded_files_flags_together(tmp_path: Path) -> None:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=PdfReader(BytesIO(hp.embedded_name_tree())))
    writer.encrypt(user_password="", owner_password="owner-only", algorithm="AES-128")
    buf = BytesIO()
    writer.write(buf)
    got = inspect(tmp_path, buf.getvalue())
    assert got["reason"] is None and sorted(got["flags"]) == ["embedded_files", "owner_password"]


def test_encrypted_owner_only_document_with_javascript_is_rejected(tmp_path: Path) -> None:
    """Strings and streams are encrypted: the walk sees them after decryption."""
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=PdfReader(BytesIO(hp.HOSTILE["uri-javascript-scheme"]())))
    writer.encrypt(user_password="", owner_password="owner-only", algorithm="AES-128")
    buf = BytesIO()
    writer.write(buf)
    assert inspect(tmp_path, buf.getvalue())["reason"] == "javascript"


def test_flags_are_part_of_the_result_contract() -> None:
    from datetime import UTC, datetime

    from dox_tasks.finish import build_result

    wf = {"workflow_id": "w", "current_state": "success", "created_at": datetime(2024, 1, 1, tzinfo=UTC)}
    outputs: dict[str, dict[str, Any]] = {"validate": {"pages": 1, "flags": ["embedded_files"]}}
    result = build_result(wf, outputs).to_dict()
    assert result["flags"] == ["embedded_files"]
    assert DocumentResult(file=None, workflow_id="x", status="success").to_dict()["flags"] == []
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "`flags`" in readme and "`embedded_files`" in readme and "`owner_password`" in readme


# -- structures meant to break a naive walk ---------------------------------------------------


def test_deep_direct_nesting_is_an_answer_not_a_crash(tmp_path: Path) -> None:
    data = hp.doc(b"/PieceInfo " + b"[" * 20_000 + b"]" * 20_000)
    assert inspect(tmp_path, data)["reason"] in ("too_complex", "malformed")


def test_compression_bomb_inside_an_inline_reachable_stream_still_counts(tmp_path: Path) -> None:
    import zlib

    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(b"\0" * (1 << 20)) for _ in range(300)) + comp.flush()
    pdf = hp.doc(b"/OpenAction " + hp.GOTO, extra={6: hp.stream(data, b" /Filter /FlateDecode")})
    assert inspect(tmp_path, pdf)["reason"] == "too_complex"


# -- read one way by pypdf, another by viewers (security review) -------------------------------


@pytest.mark.parametrize("reject_embedded", [False, True], ids=["default", "reject-embedded"])
@pytest.mark.parametrize("name", sorted(hp.MALFORMED))
def test_structures_viewers_read_otherwise_are_malformed(
    tmp_path: Path, name: str, reject_embedded: bool
) -> None:
    """NUL-ended names, a relocated object, a number packed twice, unreached xref data."""
    got = inspect(tmp_path, hp.MALFORMED[name](), reject_embedded_files=reject_embedded)
    assert got["reason"] == "malformed", got
    assert got["detail"].startswith("not a well-formed PDF")


@pytest.mark.parametrize("name", sorted(hp.STRUCTURE_NEAR_MISSES))
def test_structure_near_misses_are_accepted(tmp_path: Path, name: str) -> None:
    """A chained linearized file, an escaped space in a name, a comment before an object,
    JBIG2 and DCT images (never decoded: JBIG2 would need a tool pypdf does not have)."""
    assert inspect(tmp_path, hp.STRUCTURE_NEAR_MISSES[name]()) == {"reason": None, "pages": 1, "flags": []}


@pytest.mark.parametrize("name", sorted(hp.COSTLY))
def test_costly_object_streams_are_rejected_within_a_second(tmp_path: Path, name: str) -> None:
    import time

    data = hp.COSTLY[name]()
    start = time.process_time()
    got = inspect(tmp_path, data)
    assert got["reason"] in ("malformed", "too_complex"), got
    assert time.process_time() - start < 1.0


def test_shadow_walk_has_a_parse_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = hp.HOSTILE["objstm-hybrid-shadow-copy"]()
    monkeypatch.setattr(pdf_reader, "MAX_OBJSTM_PARSE_BYTES", 8)
    monkeypatch.setattr(pdf_reader, "OBJSTM_PARSE_RATIO", 0)
    assert inspect(tmp_path, data)["reason"] == "too_complex"


def test_an_unexpected_error_in_the_walk_is_an_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a fault the sandbox reports (RuntimeError) and the step retries."""

    def boom(*_: Any) -> None:
        raise RuntimeError("a dependency pypdf needs is missing")

    monkeypatch.setattr(pdf_step, "check", boom)  # the name the walk calls
    got = inspect(tmp_path, hp.NEAR_MISSES["openaction-goto"]())
    assert got["reason"] == "malformed" and "RuntimeError" in got["detail"]


# -- end to end -------------------------------------------------------------------------------

#: A few placements for the end-to-end runs (the unit tests cover every one).
E2E_HOSTILE = [
    "openaction-js-inline",
    "openaction-launch-inline",
    "catalog-aa-reference",
    "page-aa-inline",
    "annotation-inline-a-inline",
    "form-field-aa-inline",
    "outline-item-a-inline",
    "next-chain-array",
    "names-javascript-inline",
    "s-reference-inline-action",
    "two-generations-reference",
    "objstm-catalog-inline-openaction",
    "uri-javascript-scheme",
]
E2E_PASS = ["openaction-fit", "uri-mentions-javascript", "content-stream-mentions-javascript"]


def _write_folder(folder: Path) -> None:
    folder.mkdir()
    for name in E2E_HOSTILE:
        (folder / f"{name}.pdf").write_bytes(hp.HOSTILE[name]())
    for name in E2E_PASS:
        (folder / f"{name}.pdf").write_bytes(hp.NEAR_MISSES[name]())
    (folder / "embedded.pdf").write_bytes(hp.embedded_name_tree())


def _check(results: dict[str, dict[str, Any]], reject_embedded: bool) -> None:
    for name in E2E_HOSTILE:
        got = results[name]
        assert (got["status"], got["reason"]) == ("rejected", "javascript"), (name, got)
        assert got["storage_key"] is None
    for name in E2E_PASS:
        got = results[name]
        assert (got["status"], got["flags"]) == ("success", []), (name, got)
    embedded = results["embedded"]
    if reject_embedded:
        assert (embedded["status"], embedded["reason"]) == ("rejected", "embedded_files"), embedded
    else:
        assert (embedded["status"], embedded["flags"]) == ("success", ["embedded_files"]), embedded


@pytest.mark.parametrize("reject_embedded", [False, True], ids=["default", "reject-embedded"])
def test_dox_run_embedded_default_rejects_hostile_pdfs(tmp_path: Path, reject_embedded: bool) -> None:
    folder = tmp_path / "incoming"
    _write_folder(folder)
    extra = {"DOX_REJECT_EMBEDDED_FILES": "true"} if reject_embedded else {}
    res = dox(["run", str(folder), "--json"], clean_env(tmp_path, **extra), tmp_path)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    results = {Path(r["file"]).stem: r for r in map(json.loads, res.stdout.splitlines())}
    _check(results, reject_embedded)


@pytest.mark.integration
@pytest.mark.parametrize("reject_embedded", [False, True], ids=["default", "reject-embedded"])
def test_real_stack_rejects_hostile_pdfs(stack: Any, harness_factory: Any, reject_embedded: bool) -> None:
    h = harness_factory(stack.model_copy(update={"reject_embedded_files": reject_embedded}))
    h.worker()
    docs = {name: hp.HOSTILE[name]() for name in E2E_HOSTILE}
    docs.update({name: hp.NEAR_MISSES[name]() for name in E2E_PASS})
    docs["embedded"] = hp.embedded_name_tree()
    ids = {name: h.submit(data, file_name=f"{name}.pdf") for name, data in docs.items()}
    rows = h.wait(list(ids.values()), timeout=120)
    results = {name: {**rows[wid]["result"], "detail": rows[wid]["detail"]} for name, wid in ids.items()}
    _check(results, reject_embedded)
    assert len(h.objects()) == len(E2E_PASS) + (0 if reject_embedded else 1)
