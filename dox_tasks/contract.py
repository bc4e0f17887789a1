"""The names upstream services, operators and tests rely on — in one place.

Everything here is part of DOX's public contract: the workflow states, the
reasons a document is refused or a workflow fails, and the shape of the
per-document result that ``dox run --json``, ``dox status --json`` and the
completion event all share. Change a name here and you break a consumer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class WorkflowState(StrEnum):
    """Lifecycle of one workflow (one document through one definition).

    ``rejected`` is an answer about the *document* (it is unsafe or invalid);
    ``failed`` is a fault of the *system* that survived its retries.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (WorkflowState.QUEUED, WorkflowState.RUNNING)


TERMINAL_STATES = frozenset(s for s in WorkflowState if s.terminal)
LIVE_STATES = frozenset(s for s in WorkflowState if not s.terminal)
#: Ended workflows an operator may run again (``dox workflows retry``).
RETRYABLE_STATES = frozenset({WorkflowState.FAILED, WorkflowState.CANCELLED})
#: Workflows that may still read their staged input: live ones, and retryable ones.
NEEDS_STAGED_INPUT = LIVE_STATES | RETRYABLE_STATES


class Reason(StrEnum):
    """Why a workflow ended anything other than ``success`` (one enum for all)."""

    RATE_LIMITED = "rate_limited"
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    TYPE_NOT_ALLOWED = "type_not_allowed"
    TYPE_MISMATCH = "type_mismatch"
    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    ENCRYPTED = "encrypted"
    JAVASCRIPT = "javascript"  # script, launch, submit/import, remote go-to, rich media, XFA
    EMBEDDED_FILES = "embedded_files"  # only with DOX_REJECT_EMBEDDED_FILES=true
    TOO_COMPLEX = "too_complex"
    INFECTED = "infected"
    SCANNER_UNAVAILABLE = "scanner_unavailable"
    POISON = "poison"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


class StepState(StrEnum):
    """State of one attempt of one step (a row of ``workflow_step_results``)."""

    RUNNING = "running"
    SUCCESS = "success"
    REJECTED = "rejected"  # the step answered "no" about the document
    RETRY = "retry"  # a transient fault; another attempt follows
    FAILED = "failed"  # a fault after retries, or one that cannot be retried
    LOST = "lost"  # the attempt vanished (worker killed); a redelivery follows
    SUPERSEDED = "superseded"  # a duplicate delivery that lost the race to another


class ScanResult(StrEnum):
    CLEAN = "clean"
    INFECTED = "infected"
    SKIPPED = "skipped"


class Recognition(StrEnum):
    MATCHED = "matched"
    UNRECOGNIZED = "unrecognized"
    UNREADABLE = "unreadable"


class OnFailure(StrEnum):
    """What a step's fault (after retries) does to the workflow."""

    ESCALATE = "escalate"  # failed + escalation event and row
    QUARANTINE = "quarantine"  # document moved to quarantine, rejected
    ABORT = "abort"  # failed, nothing more


#: ``intake`` (the only queue upstream services may push to, and only ``dox.submit``
#: runs there), the five document step kinds, each on its own Celery queue so it
#: scales on its own, then the scheduled jobs (``operations``) and the team sync's
#: health checks (``coordination``: I/O-bound, a threads pool with a slot per service).
INTAKE_QUEUE = "intake"
DOCUMENT_QUEUES = ("validation", "scan", "storage", "recognition", "events")
QUEUES = (INTAKE_QUEUE, *DOCUMENT_QUEUES, "operations", "coordination")

#: The last ``on_success`` target: the workflow is complete.
COMPLETE = "complete"


@dataclass
class DocumentResult:
    """The per-document answer DOX gives (CLI JSON and completion event)."""

    file: str | None
    workflow_id: str
    status: str
    reason: str | None = None
    #: The sentence a person reads about ``reason`` ("the name says PDF but the content is PNG").
    reason_detail: str | None = None
    scan: str | None = None
    signature: str | None = None
    template: str | None = None
    recognition: str | None = None
    confidence: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    #: Fields the matched template declares that the document did not give.
    missing_fields: list[str] = field(default_factory=list)
    #: Why recognition is ``unreadable``: ``no_text_layer`` (a scan without OCR), ``cpu_budget``…
    unreadable_reason: str | None = None
    pages: int | None = None
    #: Facts about an accepted document worth knowing: ``owner_password``, ``embedded_files``.
    flags: list[str] = field(default_factory=list)
    sha256: str | None = None
    size: int | None = None
    storage_key: str | None = None
    duplicate_of: str | None = None
    duration_ms: int | None = None
    #: Who submitted it: the normal form DOX counts by, and the name as the caller wrote it.
    user: str | None = None
    user_display: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
