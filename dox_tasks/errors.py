"""DOX's one exception tree.

A *rejection of a document* is not an exception: steps return a
:class:`~dox_tasks.steps.base.Rejection` value. Exceptions here are for faults
(something the system could not do) and for refusals to the caller (bad path,
bad configuration, bad definition) that never become workflows.
"""

from __future__ import annotations


class DoxError(Exception):
    """Root of every error DOX raises on purpose."""


class ConfigError(DoxError):
    """The configuration cannot work (e.g. a retry delay reaches the visibility timeout)."""


class DefinitionError(DoxError):
    """A workflow definition is invalid; ``problems`` lists each with file:line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class SubmissionError(DoxError):
    """The caller's submission is refused before any workflow exists (e.g. path outside the inbox)."""


class IntakePaused(SubmissionError):
    """The intake is paused (``dox intake pause``): nothing is accepted until it is resumed.
    Its own class so a surface can answer "come back later" (HTTP 503) rather than "wrong"."""


class NotSent(SubmissionError):
    """The workflow is recorded (``queued``) but the broker refused its message: nothing is
    lost, the reaper sends it again. ``workflow_id`` names it, so a caller can still answer
    with the id."""

    def __init__(self, message: str, workflow_id: str):
        super().__init__(message)
        self.workflow_id = workflow_id


class ApiKeyError(DoxError):
    """An API key operation is refused (bad name, scope or prefix; no such key; a revoked key
    rotated). Verifying a presented key never raises: it returns a refusal value."""


class KeyChangeNotAnnounced(ApiKeyError):
    """A key was revoked or rotated in the database, but Redis could not be told, so API
    servers that remember the key (``DOX_API_KEY_CACHE_S``) may accept it a little longer.
    ``done`` is what the operation returned (the row; for a rotation the new key and the old
    row), so a caller can still show the new key and record the action."""

    def __init__(self, message: str, done: object):
        super().__init__(message)
        self.done = done


class UnknownWorkflow(DoxError):
    """No workflow has that id."""


class AmbiguousWorkflowId(DoxError):
    """A short workflow id (a prefix an operator typed) begins more than one workflow's id;
    the message lists them, so the operator can give more characters."""


class StepStillRunning(DoxError):
    """An operator retry found a step of the ended run still executing."""


class TransientError(DoxError):
    """A fault worth retrying: the step is tried again with backoff.

    ``reason`` is what the workflow records if the retries run out.
    """

    reason: str = "internal_error"


class ScannerUnavailable(TransientError):
    """clamd could not be reached or did not answer in time (fail closed)."""

    reason = "scanner_unavailable"


class StateStoreUnavailable(TransientError):
    """The results database could not be reached; the step is retried later."""


class StateStoreError(DoxError):
    """The results database refused a statement (a schema older than the code, a broken
    constraint): a fault, not an outage, so it is not waited out like
    :class:`StateStoreUnavailable`. ``dox_tasks.db`` raises it instead of SQLAlchemy's errors."""


class DocumentInUse(DoxError):
    """A workflow of the document is still queued or running, so its records are not redacted:
    its later steps would store the bytes again or record fresh extracted fields."""

    def __init__(self, workflow_id: str, state: str):
        self.workflow_id = workflow_id
        self.state = state
        super().__init__(
            f"workflow {workflow_id} of this document is still {state}: wait for it to end or"
            f" `dox workflows cancel {workflow_id}` first; nothing was deleted"
        )


class IntegrityFault(DoxError):
    """Stored bytes do not match their content address; never retried, never stored."""
