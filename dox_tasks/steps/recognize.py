"""recognize — extract text from the first pages and match the templates.

Text extraction runs in the sandbox (a hostile content stream can only end the
child). No text at all → ``unreadable`` (e.g. a scan without OCR); text that no
template claims → ``unrecognized``. Neither is a rejection: the document is safe
and stored, DOX just cannot say what it is.
"""

from __future__ import annotations

from ..contract import Recognition
from ..sandbox import LimitExceeded, Limits, run_limited
from ..templates import recognize_text
from .base import Outcome, StepContext, ok
from .pdf import extract_text


def recognize(ctx: StepContext) -> Outcome:
    s = ctx.rt.settings
    if ctx.from_earlier("detected_type") not in (None, "pdf"):
        return ok(recognition=Recognition.UNREADABLE.value, template=None, confidence=0.0, fields={})
    max_pages = int(ctx.params.get("max_pages", s.recognize_max_pages))
    path = ctx.rt.storage.staged_path(ctx.sha256)
    if not path.exists():
        path = ctx.rt.storage.object_path(ctx.sha256)
    limits = Limits(
        cpu_s=s.parser_cpu_s, memory_mib=s.parser_memory_mib, wall_s=max(5.0, s.parser_cpu_s * 2.0)
    )
    try:
        extracted = run_limited(extract_text, str(path), max_pages, limits=limits)
    except (LimitExceeded, RuntimeError) as exc:
        return ok(
            recognition=Recognition.UNREADABLE.value,
            template=None,
            confidence=0.0,
            fields={},
            note=f"text extraction failed: {str(exc)[-200:]}",
        )
    text = str(extracted["text"])
    if not text.strip():
        return ok(
            recognition=Recognition.UNREADABLE.value,
            template=None,
            confidence=0.0,
            fields={},
            pages=extracted["pages"],
        )
    match = recognize_text(ctx.rt.templates, text)
    status = Recognition.MATCHED if match.template else Recognition.UNRECOGNIZED
    return ok(
        recognition=status.value,
        template=match.template,
        confidence=match.confidence,
        fields=match.fields,
        pages=extracted["pages"],
    )
