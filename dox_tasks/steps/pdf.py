"""PDF structure checks and text extraction with pypdf.

These functions run inside :func:`dox_tasks.sandbox.run_limited` (a child with
CPU and memory limits), so a hostile file can only end its own process. They
open files themselves and hand pypdf an open file (given a path, pypdf reads the
whole file into memory), and they parse *strictly*: pypdf's lenient mode quietly
repairs truncated and damaged files, which is the opposite of validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pypdf import PasswordType, PdfReader
from pypdf.errors import LimitReachedError, PdfReadError, PyPdfError
from pypdf.generic import DictionaryObject, IndirectObject, NameObject, StreamObject

#: Names whose presence means the document can run code when opened.
_SCRIPT_KEYS = frozenset({"/JS", "/JavaScript"})
_SCRIPT_ACTIONS = frozenset({"/JavaScript", "/Launch"})
#: Decoded bytes of all streams together above which a document is "too complex":
#: at least this much, or BOMB_RATIO times the file's size for large files.
MAX_DECODED_BYTES = 256 * 1024 * 1024
BOMB_RATIO = 20
#: Empty pypdf's object cache after reading this many bytes (bounded memory on big files).
CACHE_CLEAR_BYTES = 16 * 1024 * 1024
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
            script = _scan_objects(reader, size)
            if script:
                return _verdict("javascript", script, pages=pages)
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


def _iter_objects(reader: PdfReader) -> Iterator[Any]:
    """Every object in the file, including those packed in compressed object streams.

    pypdf caches each object it resolves; on a large file that cache would hold the
    whole document, so it is emptied as we go and memory stays bounded.
    """
    seen: set[int] = set()
    since_clear = 0
    refs = [(g, i) for g, ids in reader.xref.items() for i in ids]
    refs += [(0, i) for i in getattr(reader, "xref_objStm", {})]
    for generation, idnum in refs:
        if idnum in seen:
            continue
        seen.add(idnum)
        obj = reader.get_object(IndirectObject(idnum, generation, reader))
        yield obj
        since_clear += len(getattr(obj, "_data", b"") or b"") + 512
        if since_clear > CACHE_CLEAR_BYTES:
            reader.resolved_objects.clear()
            since_clear = 0
    yield reader.trailer


def _scan_objects(reader: PdfReader, file_size: int) -> str | None:
    """One pass over all objects: report JavaScript/launch actions, inflate every stream.

    pypdf decodes name escapes, so ``/J#61vaScript`` arrives as ``/JavaScript``; only
    dictionary keys and action types count, never text that mentions them. Inflating
    each stream once makes compression bombs show up here (pypdf's own limits, plus a
    budget on the total relative to the file size) and not in a later step.
    """
    budget = max(MAX_DECODED_BYTES, BOMB_RATIO * file_size)
    decoded = 0
    for obj in _iter_objects(reader):
        if not isinstance(obj, DictionaryObject):
            continue
        for key in obj:
            if key in _SCRIPT_KEYS:
                return f"the PDF carries JavaScript ({key} entry)"
        action = obj.get("/S")
        if isinstance(action, NameObject) and action in _SCRIPT_ACTIONS:
            return f"the PDF carries a {action[1:]} action"
        if isinstance(obj, StreamObject):
            decoded += len(obj.get_data())
            if decoded > budget:
                raise LimitReachedError(
                    f"streams inflate past {budget // (1024 * 1024)} MiB"
                    f" ({BOMB_RATIO}x the file, at least {MAX_DECODED_BYTES // 1048576} MiB)"
                )
    return None


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
