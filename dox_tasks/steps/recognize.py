"""recognize — extract text from the first pages and match the templates, in one sandboxed child.

Both halves run in :func:`dox_tasks.sandbox.run_limited`, in the same child: the
document is parsed once, only the verdict crosses the pipe (never the text), and
the child's CPU limit (``DOX_PARSER_CPU_S``) bounds the lot. Extraction needs it
for hostile content streams; matching needs it because template regexes run over
up to 200,000 characters the sender chose, and one that backtracks (16,000
newlines once cost 16 s, the cap about 40 minutes) would otherwise hold the worker
— Celery's time limits do not exist in the solo pool or the embedded worker.

The child catches its own soft CPU limit (``SIGXCPU``) and answers with the phase
that ran out, so the output can say *matching* exceeded its budget rather than just
"a limit". Outcomes, none of them a rejection — the document is safe and stored,
DOX just cannot say what it is:

- ``matched`` / ``unrecognized``: matching finished;
- ``unreadable`` with ``unreadable_reason`` (machine-readable) and ``note`` (a sentence):
  ``not_pdf``, ``no_text_layer`` (e.g. a scan without OCR), ``extraction_failed``,
  ``cpu_budget`` / ``memory_budget`` / ``time_budget`` — a sandbox limit ran out, and
  ``budget_phase`` says where: ``extraction``, ``matching`` or ``unknown``.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

from ..contract import Recognition
from ..sandbox import LimitExceeded, Limits, run_limited
from ..templates import Template, recognize_text
from .base import Outcome, StepContext, ok
from .pdf import extract_text

log = logging.getLogger(__name__)

#: Values of ``unreadable_reason`` (also in docs/ARCHITECTURE.md).
NOT_PDF = "not_pdf"
NO_TEXT_LAYER = "no_text_layer"
EXTRACTION_FAILED = "extraction_failed"
CPU_BUDGET = "cpu_budget"
MEMORY_BUDGET = "memory_budget"
TIME_BUDGET = "time_budget"


class _OverBudget(BaseException):
    """Raised in the child when its soft CPU limit is reached.

    A ``BaseException`` so that no ``except Exception`` inside pypdf swallows it.
    """


def _on_sigxcpu(signum: int, frame: FrameType | None) -> None:
    raise _OverBudget


def read_and_match(path: str, max_pages: int, templates: list[Template]) -> dict[str, Any]:
    """Child side: extract the text, match the templates; say which phase ran out of budget.

    The templates come from the parent by ``fork`` (nothing is pickled). The kernel
    sends ``SIGXCPU`` at the soft limit and kills at the hard one a second later, which
    leaves time to answer. Python's regex engine checks for signals while it
    backtracks, so the handler interrupts a runaway pattern too.
    """
    phase = "extraction"
    pages: int | None = None
    chars = 0
    previous = signal.signal(signal.SIGXCPU, _on_sigxcpu)
    try:
        extracted = extract_text(path, max_pages)
        pages = int(extracted["pages"])
        text = str(extracted["text"])
        chars = len(text)
        del extracted
        if not text.strip():
            return {"pages": pages, "text_chars": chars, "text_layer": False}
        phase = "matching"
        try:
            match = recognize_text(templates, text)
        except Exception as exc:  # noqa: BLE001 - a template bug is DOX's fault, not the document's
            return {"matching_error": f"{type(exc).__name__}: {exc}"[:500]}
        return {
            "pages": pages,
            "text_chars": chars,
            "text_layer": True,
            "template": match.template,
            "confidence": match.confidence,
            "fields": match.fields,
            "missing_fields": list(match.missing),
        }
    except _OverBudget:
        return {"pages": pages, "text_chars": chars, "over_budget": "cpu", "phase": phase}
    except MemoryError:
        return {"pages": pages, "text_chars": chars, "over_budget": "memory", "phase": phase}
    finally:
        signal.signal(signal.SIGXCPU, previous)


def _unreadable(reason: str, note: str | None = None, **extra: Any) -> Outcome:
    out: dict[str, Any] = {"unreadable_reason": reason, **extra}
    if note:
        out["note"] = note
    return ok(recognition=Recognition.UNREADABLE.value, template=None, confidence=0.0, fields={}, **out)


def _budget_note(over: str, phase: str, limits: Limits, chars: int) -> str:
    budget = (
        f"CPU budget of {limits.cpu_s} s (DOX_PARSER_CPU_S)"
        if over == "cpu"
        else f"memory budget of {limits.memory_mib} MiB (DOX_PARSER_MEMORY_MIB)"
    )
    if phase == "matching":
        return (
            f"template matching exceeded its {budget} on {chars} characters of text; no template was applied"
        )
    if phase == "extraction":
        return f"text extraction exceeded its {budget}"
    return f"text extraction and template matching together exceeded their {budget}"


def recognize(ctx: StepContext) -> Outcome:
    s = ctx.rt.settings
    if ctx.from_earlier("detected_type") not in (None, "pdf"):
        return _unreadable(NOT_PDF, "not a PDF: DOX reads text from PDFs only")
    max_pages = int(ctx.params.get("max_pages", s.recognize_max_pages))
    path = ctx.rt.storage.staged_path(ctx.sha256)
    if not path.exists():
        path = ctx.rt.storage.object_path(ctx.sha256)
    # The wall clock is only a backstop for a child that stops using CPU: loose, so that
    # a busy host does not turn a CPU verdict (which names its phase) into a wall verdict.
    limits = Limits(
        cpu_s=s.parser_cpu_s, memory_mib=s.parser_memory_mib, wall_s=max(10.0, s.parser_cpu_s * 3.0)
    )
    templates = ctx.rt.templates  # loaded (and checked) here, inherited by the child
    try:
        answer = run_limited(read_and_match, str(path), max_pages, templates, limits=limits)
    except LimitExceeded as exc:
        # Stopped from outside the child's own handler: the hard CPU limit, the wall
        # clock, or a memory/recursion limit the sandbox caught. The phase is unknown.
        what = exc.what.lower()
        reason = (
            CPU_BUDGET
            if what.startswith("cpu")
            else TIME_BUDGET
            if what.startswith("wall")
            else MEMORY_BUDGET
            if what.startswith("memory")
            else EXTRACTION_FAILED
        )
        log.warning("recognize %s: %s (%s)", ctx.workflow_id, reason, exc.what)
        return _unreadable(
            reason,
            f"text extraction and template matching stopped at the sandbox's {exc.what}",
            budget_phase="unknown",
        )
    except RuntimeError as exc:
        return _unreadable(EXTRACTION_FAILED, f"text extraction failed: {str(exc)[-200:]}")
    if "matching_error" in answer:
        raise RuntimeError(f"template matching failed: {answer['matching_error']}")
    pages = answer.get("pages")
    if "over_budget" in answer:
        over, phase = str(answer["over_budget"]), str(answer["phase"])
        reason = CPU_BUDGET if over == "cpu" else MEMORY_BUDGET
        log.warning("recognize %s: %s ran out of its %s budget", ctx.workflow_id, phase, over)
        extra: dict[str, Any] = {"pages": pages} if pages is not None else {}
        return _unreadable(
            reason,
            _budget_note(over, phase, limits, int(answer.get("text_chars") or 0)),
            budget_phase=phase,
            **extra,
        )
    if not answer["text_layer"]:
        return _unreadable(NO_TEXT_LAYER, "the PDF has no text layer (a scan without OCR?)", pages=pages)
    status = Recognition.MATCHED if answer["template"] else Recognition.UNRECOGNIZED
    return ok(
        recognition=status.value,
        template=answer["template"],
        confidence=answer["confidence"],
        fields=answer["fields"],
        missing_fields=answer.get("missing_fields") or [],
        pages=pages,
    )
