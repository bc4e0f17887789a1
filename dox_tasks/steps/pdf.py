"""PDF inspection and text extraction with pypdf: the entry points and their budgets.

These functions run inside :func:`dox_tasks.sandbox.run_limited` (a child with
CPU and memory limits), so a hostile file can only end its own process. They
open files themselves and hand pypdf an open file (given a path, pypdf reads the
whole file into memory). :func:`inspect_pdf` reads with the strict reader of
:mod:`.pdf_reader`, walks the whole object graph once, judging every dictionary
by the policy of :mod:`.pdf_policy`, and counts what streams inflate to, so that a
compression bomb is refused here and not in a later step.
"""

from __future__ import annotations

import re
from typing import Any

from pypdf import PasswordType, PdfReader
from pypdf.errors import LimitReachedError, PdfReadError, PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject, StreamObject

from ..contract import Reason
from .pdf_policy import Finding, Where, check, policy_name
from .pdf_reader import Reader, get, resolve

#: Decoded bytes of all streams together above which a document is "too complex":
#: at least this much, or BOMB_RATIO times the file's size for large files.
MAX_DECODED_BYTES = 256 * 1024 * 1024
BOMB_RATIO = 20
#: Empty pypdf's object cache after reading this many bytes (bounded memory on big files).
CACHE_CLEAR_BYTES = 16 * 1024 * 1024
_EOF_RE = re.compile(rb"%%EOF\s*$")
#: Image codecs: their data is never decoded here (pypdf hands DCT/JPX through, and
#: needs external tools for JBIG2), so the bomb budget counts their stored length.
_IMAGE_FILTERS = frozenset({"/DCTDecode", "/DCT", "/JPXDecode", "/JBIG2Decode", "/CCITTFaxDecode", "/CCF"})
_TRAILER = Where("")


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
            reader = Reader(fh, size)
            reader.check_unread_sections(fh)
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
        except MemoryError:
            raise  # the sandbox's memory limit: reported as such
        except Exception as exc:  # noqa: BLE001 - an answer about the file, never a retried fault
            text = str(exc) or type(exc).__name__
            return _verdict("malformed", f"not a well-formed PDF ({type(exc).__name__}): {text}")
    return {"reason": None, "pages": pages, "flags": flags}


def _shadowed(reader: Reader, stm: StreamObject, stm_number: int) -> list[tuple[Any, Where]]:
    """Objects packed in this object stream that the cross-reference data maps elsewhere.

    In a hybrid file pypdf takes the xref table's entry for a number and ignores the
    /XRefStm's, while a viewer that reads the xref stream takes the packed copy (or
    the other way round): both copies are walked. Listed objects are not parsed twice.
    """
    return [
        (obj, Where(f"object {num} 0 packed in object stream {stm_number}"))
        for num, obj in reader.packed(stm, stm_number)
    ]


def _stored_size(reader: PdfReader, obj: StreamObject) -> int | None:
    """The stored length of an image stream (never decoded here), else ``None``."""
    filters = resolve(reader, dict.get(obj, "/Filter"))
    names = filters if isinstance(filters, ArrayObject) else [filters]
    if any(resolve(reader, f) in _IMAGE_FILTERS for f in names):
        return len(obj._data)
    return None


def _walk(reader: Reader, file_size: int) -> tuple[Finding | None, Finding | None]:
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
    stack: list[tuple[Any, Where]] = [(reader.trailer, _TRAILER)]
    embedded: Finding | None = None
    while stack or seeds:
        if not stack:
            num, gen = seeds.pop()
            if (num, gen) not in queued:
                queued.add((num, gen))
                stack.append((IndirectObject(num, gen, reader), Where(f"object {num} {gen}")))
            continue
        obj, where = stack.pop()
        number = None
        if isinstance(obj, IndirectObject):
            since_clear += 512
            number = obj.idnum
            obj = get(reader, obj)
            if isinstance(obj, IndirectObject):  # an object that is just a reference
                if (obj.idnum, obj.generation) not in queued:
                    queued.add((obj.idnum, obj.generation))
                    stack.append((obj, where))
                continue
        if isinstance(obj, DictionaryObject):
            for finding in check(reader, obj, where):
                if finding.rule.verdict is not Reason.EMBEDDED_FILES:
                    return finding, embedded
                embedded = embedded or finding
            if isinstance(obj, StreamObject):
                stored = _stored_size(reader, obj)
                size = len(obj.get_data()) if stored is None else stored
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
            elif isinstance(value, NameObject):
                policy_name(value)  # a NUL in any name is malformed
                continue
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
