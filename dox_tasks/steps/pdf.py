"""PDF structure checks and text extraction with pypdf.

These functions run inside :func:`dox_tasks.sandbox.run_limited` (a child with
CPU and memory limits), so a hostile file can only end its own process. They
open files themselves and hand pypdf an open file (given a path, pypdf reads the
whole file into memory), and they parse *strictly*: pypdf's lenient mode quietly
repairs truncated and damaged files, which is the opposite of validation.
"""

from __future__ import annotations

import re
from typing import Any

from pypdf import PasswordType, PdfReader
from pypdf.errors import LimitReachedError, PdfReadError, PyPdfError
from pypdf.generic import DictionaryObject, IndirectObject, NameObject, StreamObject

#: Names whose presence means the document can run code when opened.
_SCRIPT_KEYS = frozenset({"/JS", "/JavaScript"})
_SCRIPT_ACTIONS = frozenset({"/JavaScript", "/Launch"})
#: Decoded bytes of all streams together above which a document is "too complex".
MAX_DECODED_BYTES = 256 * 1024 * 1024
_EOF_RE = re.compile(rb"%%EOF\s*$")


def _verdict(reason: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"reason": reason, "detail": detail, **extra}


def inspect_pdf(path: str) -> dict[str, Any]:
    """Check a PDF; return ``{"reason": …, "detail": …}`` on refusal, else facts about it."""
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
            script = _find_script(reader)
            if script:
                return _verdict("javascript", script, pages=pages)
            _decode_streams(reader)
        except LimitReachedError as exc:
            return _verdict("too_complex", f"parser limit reached: {exc}")
        except RecursionError:
            return _verdict("too_complex", "nesting too deep to parse")
        except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
            text = str(exc) or type(exc).__name__
            if "cycl" in text.lower() or "loop" in text.lower():
                return _verdict("too_complex", f"page tree loops: {text}")
            return _verdict("malformed", f"not a well-formed PDF: {text}")
    return {"reason": None, "pages": pages, "flags": flags}


def _objects(reader: PdfReader) -> list[Any]:
    """Every object in the file, including those packed in compressed object streams."""
    out = []
    seen: set[int] = set()
    for generation, ids in reader.xref.items():
        for idnum in ids:
            seen.add(idnum)
            out.append(reader.get_object(IndirectObject(idnum, generation, reader)))
    for idnum in getattr(reader, "xref_objStm", {}):
        if idnum not in seen:
            out.append(reader.get_object(IndirectObject(idnum, 0, reader)))
    out.append(reader.trailer)
    return out


def _find_script(reader: PdfReader) -> str | None:
    """Describe the first JavaScript or launch action, or None.

    pypdf decodes name escapes, so ``/J#61vaScript`` arrives as ``/JavaScript``;
    only dictionary keys and action types count, never text that mentions them.
    """
    for obj in _objects(reader):
        if not isinstance(obj, DictionaryObject):
            continue
        for key in obj:
            if key in _SCRIPT_KEYS:
                return f"the PDF carries JavaScript ({key} entry)"
        action = obj.get("/S")
        if isinstance(action, NameObject) and action in _SCRIPT_ACTIONS:
            return f"the PDF carries a {action[1:]} action"
    return None


def _decode_streams(reader: PdfReader) -> None:
    """Inflate every stream once, so compression bombs show up here and not later."""
    total = 0
    for obj in _objects(reader):
        if isinstance(obj, StreamObject):
            total += len(obj.get_data())
            if total > MAX_DECODED_BYTES:
                raise LimitReachedError(
                    f"streams inflate past {MAX_DECODED_BYTES // (1024 * 1024)} MiB"
                )


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
