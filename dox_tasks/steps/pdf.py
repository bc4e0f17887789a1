"""PDF structure checks and text extraction with pypdf.

These functions run inside :func:`dox_tasks.sandbox.run_limited` (a child with
CPU and memory limits), so a hostile file can only end its own process. They
open files themselves and hand pypdf an open file (given a path, pypdf reads the
whole file into memory), and they parse *strictly*: pypdf's lenient mode quietly
repairs truncated and damaged files, which is the opposite of validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO
from typing import Any, NamedTuple

from pypdf import PasswordType, PdfReader
from pypdf.errors import LimitReachedError, PdfReadError, PyPdfError
from pypdf.generic import (
    ArrayObject,
    ByteStringObject,
    DictionaryObject,
    IndirectObject,
    NameObject,
    StreamObject,
    read_object,
)

from ..contract import Reason

#: Decoded bytes of all streams together above which a document is "too complex":
#: at least this much, or BOMB_RATIO times the file's size for large files.
MAX_DECODED_BYTES = 256 * 1024 * 1024
BOMB_RATIO = 20
#: Empty pypdf's object cache after reading this many bytes (bounded memory on big files).
CACHE_CLEAR_BYTES = 16 * 1024 * 1024
_EOF_RE = re.compile(rb"%%EOF\s*$")


class Rule(NamedTuple):
    """One row of the script-action policy (docs/ARCHITECTURE.md has the same table).

    ``position`` says where ``name`` counts: ``key`` (a dictionary key anywhere),
    ``action`` (the ``/S`` of a dictionary), ``subtype`` / ``type`` (the ``/Subtype`` /
    ``/Type`` of a dictionary), or ``uri`` (the scheme of a ``/URI`` or ``/Base``
    string). Only these positions count, so text, titles, metadata and content
    streams that merely mention the names never do. ``what`` completes "the PDF …".
    """

    name: str
    position: str
    verdict: Reason
    what: str


_JS = Reason.JAVASCRIPT
_EMBEDDED = Reason.EMBEDDED_FILES

#: The policy, in one place. Everything not listed (``/GoTo``, ``/URI`` to http(s) or
#: mailto, ``/Named``, ``/Thread``, ``/Hide``, ``/SetOCGState``, ``/ResetForm``,
#: ``/Rendition`` or ``/Trans`` without ``/JS``, ...) runs no code and is accepted.
POLICY: tuple[Rule, ...] = (
    Rule("/JS", "key", _JS, "runs JavaScript"),
    Rule("/JavaScript", "key", _JS, "runs document-level JavaScript"),
    Rule("/JavaScript", "action", _JS, "runs JavaScript"),
    Rule("/Launch", "action", _JS, "launches a program or file"),
    Rule("/SubmitForm", "action", _JS, "sends form data to a server"),
    Rule("/ImportData", "action", _JS, "imports form data from another file"),
    Rule("/GoToR", "action", _JS, "opens another PDF file"),
    # Without /F the target is a PDF embedded here, which DOX does not parse: just
    # as unknown as another file, so /GoToE counts whatever its target.
    Rule("/GoToE", "action", _JS, "opens an embedded or another PDF file"),
    Rule("/RichMedia", "action", _JS, "runs rich media (Flash, 3D, video), which can run scripts"),
    Rule("/RichMediaExecute", "action", _JS, "sends commands to rich media, which can run scripts"),
    Rule("/RichMedia", "subtype", _JS, "plays rich media (Flash, 3D, video), which can run scripts"),
    Rule("/RichMedia", "key", _JS, "plays rich media (Flash, 3D, video), which can run scripts"),
    Rule("/RichMediaContent", "key", _JS, "plays rich media (Flash, 3D, video), which can run scripts"),
    Rule("/OnInstantiate", "key", _JS, "runs 3D JavaScript"),
    Rule("/XFA", "key", _JS, "carries an XFA form, which can run scripts"),
    Rule("javascript", "uri", _JS, "opens a javascript: link"),
    Rule("vbscript", "uri", _JS, "opens a vbscript: link"),
    # Accepted by default (clamd scans inside them) and flagged; DOX_REJECT_EMBEDDED_FILES
    # turns these into a rejection.
    Rule("/EmbeddedFiles", "key", _EMBEDDED, "embeds files"),
    Rule("/EF", "key", _EMBEDDED, "embeds files"),
    Rule("/EmbeddedFile", "type", _EMBEDDED, "embeds files"),
    Rule("/FileAttachment", "subtype", _EMBEDDED, "embeds files (a file attachment annotation)"),
)

#: Names compare without case: PDF names are case-sensitive, but a lenient viewer may
#: not be, and no legitimate name differs from these by case alone.
_RULES: dict[tuple[str, str], Rule] = {(r.position, r.name.lower()): r for r in POLICY}
_KEY_RULES: dict[str, Rule] = {r.name.lower(): r for r in POLICY if r.position == "key"}
#: Dictionary entries whose (name) value is looked up in the table, and as what.
_VALUE_POSITIONS = (("/S", "action"), ("/Subtype", "subtype"), ("/Type", "type"))
_URI_KEYS = ("/URI", "/Base")
#: What a browser strips before reading a scheme: leading C0 controls and spaces, and
#: tabs and newlines anywhere (WHATWG URL parsing): "\x01 java\tscript:" is javascript:.
_LEADING_JUNK = "".join(map(chr, range(0x21)))
_INNER_JUNK = str.maketrans("", "", "\t\n\r")
#: Keys near a finding that say when a viewer runs it, nearest first wins.
_TRIGGERS = {
    "/OpenAction": "when opened",
    "/JavaScript": "when opened",
    "/AA": "on a viewer event",
    "/Annots": "from an annotation or link",
    "/Outlines": "from a bookmark",
    "/AcroForm": "from a form field",
}
#: Path labels kept per finding: deeper nesting keeps walking but forgets the middle.
_MAX_PATH = 48
_HEAD_DEPTH = 3
#: Labels shown in a detail: all up to this many, else the first two and the last five.
_SHOWN_LABELS = 8
_LABEL_CHARS = 40
_MAX_REF_HOPS = 16


@dataclass(frozen=True, slots=True)
class _Where:
    """How the walk reached an object: a linked list of labels, O(1) memory per step.

    Past ``_MAX_PATH`` levels the middle of the way is dropped (``head`` keeps the
    first levels, where the trigger usually is), so hostile depth costs no memory.
    """

    label: str
    parent: _Where | None = None
    depth: int = 0
    head: _Where | None = None

    def child(self, label: str) -> _Where:
        head = self if self.depth == _HEAD_DEPTH else self.head
        if self.depth >= _MAX_PATH:
            return _Where(label, _Where("…", head), self.depth + 1, head)
        return _Where(label, self, self.depth + 1, head)

    def labels(self) -> list[str]:
        out: list[str] = []
        node: _Where | None = self
        while node is not None:
            out.append(node.label)
            node = node.parent
        out.reverse()
        return out


_TRAILER = _Where("")


def _show(label: str) -> str:
    """A label from the file, safe to put in a sentence (hostile names are just text)."""
    text = "".join(c if c.isprintable() else "?" for c in label[:_LABEL_CHARS])
    return text + ("…" if len(label) > _LABEL_CHARS else "")


class Finding(NamedTuple):
    rule: Rule
    detail: str


def _finding(rule: Rule, where: _Where, value: str | None = None) -> Finding:
    labels = [label for label in where.labels() if label]
    trigger = next((_TRIGGERS[label] for label in reversed(labels) if label in _TRIGGERS), "")
    parts: list[str] = []
    for label in labels:  # "/Kids" "[0]" -> "/Kids[0]"
        if label.startswith("[") and parts:
            parts[-1] += label
        else:
            parts.append(_show(label))
    if len(parts) > _SHOWN_LABELS:
        parts = [*parts[:2], "…", *(part for part in parts[-5:] if part != "…")]
    if value:
        parts.append(value)
    when = f" {trigger}" if trigger else ""
    return Finding(rule, f"the PDF {rule.what}{when} ({' '.join(parts)})")


def _verdict(reason: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"reason": reason, "detail": detail, **extra}


def inspect_pdf(path: str, reject_embedded_files: bool = False) -> dict[str, Any]:
    """Check a PDF; return ``{"reason": …, "detail": …}`` on refusal, else facts about it.

    Facts are ``pages`` and ``flags``: ``owner_password`` (opens without a password,
    restrictions only) and ``embedded_files`` (accepted unless ``reject_embedded_files``).
    """
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 2048))
        if not _EOF_RE.search(fh.read()):
            return _verdict("truncated", "the file ends without a %%EOF marker: it was cut short")
        fh.seek(0)
        try:
            reader = PdfReader(fh, strict=True)
            flags: list[str] = []
            if reader.is_encrypted:
                try:
                    opened = reader.decrypt("")
                except (PyPdfError, NotImplementedError) as exc:
                    return _verdict("encrypted", f"encryption not supported: {exc}")
                if opened == PasswordType.NOT_DECRYPTED:
                    return _verdict("encrypted", "a password is needed to open this PDF")
                flags.append("owner_password")  # opens without a password; restrictions only
            pages = len(reader.pages)
            script, embedded = _walk(reader, size)
            if script:
                return _verdict(script.rule.verdict.value, script.detail, pages=pages)
            if embedded and reject_embedded_files:
                detail = f"{embedded.detail}; this DOX refuses embedded files (DOX_REJECT_EMBEDDED_FILES)"
                return _verdict(embedded.rule.verdict.value, detail, pages=pages)
            if embedded:
                flags.append("embedded_files")
        except LimitReachedError as exc:
            return _verdict("too_complex", f"parser limit reached: {exc}")
        except RecursionError:
            return _verdict("too_complex", "nesting too deep to parse")
        except (
            PdfReadError,
            PyPdfError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            AssertionError,  # pypdf asserts on some inconsistencies in strict mode
            IndexError,
            OverflowError,
            NotImplementedError,  # e.g. a stream filter pypdf does not know
        ) as exc:
            text = str(exc) or type(exc).__name__
            if "cycl" in text.lower() or "loop" in text.lower():
                return _verdict("too_complex", f"page tree loops: {text}")
            return _verdict("malformed", f"not a well-formed PDF: {text}")
    return {"reason": None, "pages": pages, "flags": flags}


def _listed(reader: PdfReader, ref: IndirectObject) -> bool:
    """Whether the file's cross-reference data has this (number, generation)."""
    if ref.generation == 0 and ref.idnum in reader.xref_objStm:
        return True
    return ref.idnum in reader.xref.get(ref.generation, {})


def _get(reader: PdfReader, ref: IndirectObject) -> Any:
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


def _resolve(reader: PdfReader, value: Any) -> Any:
    """Follow references to the object itself (an ``/S`` may be a reference to a name)."""
    for _ in range(_MAX_REF_HOPS):
        if not isinstance(value, IndirectObject):
            return value
        value = _get(reader, value)
    raise LimitReachedError(f"more than {_MAX_REF_HOPS} references in a row")


def _script_scheme(value: Any) -> str | None:
    """The URI scheme of a string value, read the way a browser reads it."""
    if isinstance(value, ByteStringObject):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.lstrip(_LEADING_JUNK).translate(_INNER_JUNK)
    scheme, colon, _ = text.partition(":")
    return scheme.lower() if colon else None


def _check(reader: PdfReader, obj: DictionaryObject, where: _Where) -> list[Finding]:
    """Policy findings in one dictionary's own entries (its children are walked apart)."""
    found: list[Finding] = []
    for key in obj:
        rule = _KEY_RULES.get(key.lower())
        if rule:
            found.append(_finding(rule, where.child(key)))
    for key, position in _VALUE_POSITIONS:
        if key in obj:
            value = _resolve(reader, dict.__getitem__(obj, key))
            rule = _RULES.get((position, value.lower())) if isinstance(value, NameObject) else None
            if rule:
                found.append(_finding(rule, where.child(key), _show(value)))
    for key in _URI_KEYS:
        if key in obj:
            scheme = _script_scheme(_resolve(reader, dict.__getitem__(obj, key)))
            rule = _RULES.get(("uri", scheme)) if scheme else None
            if rule:
                found.append(_finding(rule, where.child(key)))
    return found


def _shadowed(reader: PdfReader, stm: StreamObject, stm_number: int) -> list[tuple[Any, _Where]]:
    """Objects packed in this object stream that the cross-reference data maps elsewhere.

    In a hybrid file pypdf takes the xref table's entry for a number and ignores the
    /XRefStm's, while a viewer that reads the xref stream takes the packed copy (or
    the other way round): both copies are walked. Listed objects are not parsed twice.
    """
    data = stm.get_data()
    first = dict.get(stm, "/First")
    count = dict.get(stm, "/N")
    if not isinstance(first, int) or not isinstance(count, int) or not 0 <= first <= len(data):
        raise PdfReadError(f"object stream {stm_number} has no valid /N and /First")
    header = data[:first].split()
    found: list[tuple[Any, _Where]] = []
    for i in range(0, min(len(header), 2 * count) - 1, 2):
        num, offset = int(header[i]), int(header[i + 1])
        if reader.xref_objStm.get(num, (None, None))[0] == stm_number:
            continue  # pypdf lists this copy: walked as a seed
        buf = BytesIO(data)
        buf.seek(first + offset)
        where = _Where(f"object {num} 0 packed in object stream {stm_number}")
        found.append((read_object(buf, reader), where))
    return found


def _walk(reader: PdfReader, file_size: int) -> tuple[Finding | None, Finding | None]:
    """One walk over the object graph: (the first script finding, the first embedded file).

    It starts at the trailer (so a finding names the way a viewer gets there), then
    takes every object the cross-reference sections and object streams list, each
    (number, generation) once: a number present with two generations is walked twice.
    Every dictionary and array is visited, direct or indirect, with an explicit stack
    (hostile nesting cannot exhaust Python's recursion). pypdf decodes name escapes,
    so ``/J#61vaScript`` arrives as ``/JavaScript``.

    Each stream is inflated once, so compression bombs show up here (pypdf's own
    limits, plus a budget on the total relative to the file size) and not in a later
    step; pypdf's object cache is emptied as we go, so memory stays bounded.
    """
    budget = max(MAX_DECODED_BYTES, BOMB_RATIO * file_size)
    decoded = since_clear = 0
    queued: set[tuple[int, int]] = set()  # every (number, generation) ever put on the stack
    seeds = [(num, gen) for gen, nums in reader.xref.items() for num in nums]
    seeds += [(num, 0) for num in reader.xref_objStm]
    seeds.reverse()  # popped from the end: file order
    stack: list[tuple[Any, _Where]] = [(reader.trailer, _TRAILER)]
    embedded: Finding | None = None
    while stack or seeds:
        if not stack:
            num, gen = seeds.pop()
            if (num, gen) not in queued:
                queued.add((num, gen))
                stack.append((IndirectObject(num, gen, reader), _Where(f"object {num} {gen}")))
            continue
        obj, where = stack.pop()
        number = None
        if isinstance(obj, IndirectObject):
            since_clear += 512
            number = obj.idnum
            obj = _get(reader, obj)
            if isinstance(obj, IndirectObject):  # an object that is just a reference
                if (obj.idnum, obj.generation) not in queued:
                    queued.add((obj.idnum, obj.generation))
                    stack.append((obj, where))
                continue
        if isinstance(obj, DictionaryObject):
            for finding in _check(reader, obj, where):
                if finding.rule.verdict is not _EMBEDDED:
                    return finding, embedded
                embedded = embedded or finding
            if isinstance(obj, StreamObject):
                size = len(obj.get_data())
                decoded += size
                since_clear += size
                if decoded > budget:
                    raise LimitReachedError(
                        f"streams inflate past {budget // (1024 * 1024)} MiB"
                        f" ({BOMB_RATIO}x the file, at least {MAX_DECODED_BYTES // 1048576} MiB)"
                    )
                if number is not None and dict.get(obj, "/Type") == "/ObjStm":
                    stack.extend(_shadowed(reader, obj, number))
            children: Any = obj.items()
        elif isinstance(obj, ArrayObject):
            children = enumerate(obj)
        else:
            continue
        for label, value in children:
            if isinstance(value, IndirectObject):
                ref = (value.idnum, value.generation)
                if ref in queued:
                    continue
                queued.add(ref)
            elif not isinstance(value, (DictionaryObject, ArrayObject)):
                continue
            stack.append((value, where.child(f"[{label}]" if isinstance(label, int) else label)))
        if since_clear > CACHE_CLEAR_BYTES:
            reader.resolved_objects.clear()
            since_clear = 0
    return None, embedded


def extract_text(path: str, max_pages: int) -> dict[str, Any]:
    """Text of the first ``max_pages`` pages, and the page count."""
    with open(path, "rb") as fh:
        reader = PdfReader(fh, strict=False)
        if reader.is_encrypted:
            reader.decrypt("")
        pages = len(reader.pages)
        parts = []
        for page in reader.pages[:max_pages]:
            parts.append(page.extract_text() or "")
    return {"pages": pages, "text": "\n".join(parts)}
