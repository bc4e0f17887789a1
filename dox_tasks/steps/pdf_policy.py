"""The script-action policy: which names, in which positions, make a PDF run code or embed files.

The table (:data:`POLICY`) is the policy in one place, so that changing what DOX
refuses is one edit here (docs/ARCHITECTURE.md shows the same table and the tests
hold the two together). Beside the table this module owns reading a name or a URI
scheme the way a viewer or a browser reads it, so hostile spellings count too, and
describing a finding: where the walk found it and when a viewer would run it. It
judges one dictionary at a time; the walk over the file is :mod:`dox_tasks.steps.pdf`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from pypdf import PdfReader
from pypdf.generic import ByteStringObject, DictionaryObject, NameObject, TextStringObject

from ..contract import Reason
from .pdf_reader import Malformed, resolve

#: PDF white-space and delimiters (PDF 32000 7.2.3). A viewer ends a name at any of
#: them, pypdf's tokenizer not at NUL: ``/S\0/Launch`` is ``/S /Launch`` to a viewer.
_NAME_END = re.compile(r"[\x00\t\n\f\r ()<>\[\]{}/%]")


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


@dataclass(frozen=True, slots=True)
class Where:
    """How the walk reached an object: a linked list of labels, O(1) memory per step.

    Past ``_MAX_PATH`` levels the middle of the way is dropped (``head`` keeps the
    first levels, where the trigger usually is), so hostile depth costs no memory.
    """

    label: str
    parent: Where | None = None
    depth: int = 0
    head: Where | None = None

    def child(self, label: str) -> Where:
        head = self if self.depth == _HEAD_DEPTH else self.head
        if self.depth >= _MAX_PATH:
            return Where(label, Where("…", head), self.depth + 1, head)
        return Where(label, self, self.depth + 1, head)

    def labels(self) -> list[str]:
        out: list[str] = []
        node: Where | None = self
        while node is not None:
            out.append(node.label)
            node = node.parent
        out.reverse()
        return out


def _show(label: str) -> str:
    """A label from the file, safe to put in a sentence (hostile names are just text)."""
    text = "".join(c if c.isprintable() else "?" for c in label[:_LABEL_CHARS])
    return text + ("…" if len(label) > _LABEL_CHARS else "")


class Finding(NamedTuple):
    rule: Rule
    detail: str


def _finding(rule: Rule, where: Where, value: str | None = None) -> Finding:
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


def policy_name(name: str) -> str:
    """The name a viewer reads, lower-cased, for the policy lookup.

    A NUL byte in a name is never valid (PDF 32000 7.3.5) and it is where viewers end
    the name while pypdf goes on (``/S\0`` is a key ``/S`` to them): malformed. Other
    white-space and delimiters can only come from ``#xx`` escapes (``/Times#20New``
    is legal and common in font names), so the lookup just cuts the name there.
    """
    if "\x00" in name:
        raise Malformed(f"the name {_show(name)} holds a NUL byte, where viewers end a name")
    end = _NAME_END.search(name, 1)
    return (name[: end.start()] if end else name).lower()


def _script_scheme(value: Any) -> str | None:
    """The URI scheme of a string value, read the way a browser reads it."""
    if isinstance(value, (ByteStringObject, TextStringObject)):
        # The bytes as written, not pypdf's PDFDocEncoding reading (which turns 0x18-0x1F,
        # control bytes a browser strips, into accents): a URI is 7-bit ASCII.
        raw = bytes(value.original_bytes)
        if raw[:2] in (codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE):
            value = raw.decode("utf-16", "replace")
        elif raw[:3] == codecs.BOM_UTF8:
            value = raw[3:].decode("utf-8", "replace")
        else:
            value = raw.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.lstrip(_LEADING_JUNK).translate(_INNER_JUNK)
    scheme, colon, _ = text.partition(":")
    return scheme.lower() if colon else None


def check(reader: PdfReader, obj: DictionaryObject, where: Where) -> list[Finding]:
    """Policy findings in one dictionary's own entries (its children are walked apart)."""
    found: list[Finding] = []
    for key in obj:
        rule = _KEY_RULES.get(policy_name(key))
        if rule:
            found.append(_finding(rule, where.child(key)))
    for key, position in _VALUE_POSITIONS:
        if key in obj:
            value = resolve(reader, dict.__getitem__(obj, key))
            rule = _RULES.get((position, policy_name(value))) if isinstance(value, NameObject) else None
            if rule:
                found.append(_finding(rule, where.child(key), _show(value)))
    for key in _URI_KEYS:
        if key in obj:
            scheme = _script_scheme(resolve(reader, dict.__getitem__(obj, key)))
            rule = _RULES.get(("uri", scheme)) if scheme else None
            if rule:
                found.append(_finding(rule, where.child(key)))
    return found
