"""The step contract: a step is a plain function ``(StepContext) -> Outcome``.

Steps know nothing of Celery. They read the staged document through the
context, return an :class:`Outcome` — carry on (``ok``), or end the workflow
with an answer about the document (``reject``, ``duplicate``, ``complete``) —
and raise :class:`~dox_tasks.errors.TransientError` for faults worth retrying.
The task wrapper (:mod:`dox_tasks.runner`) does everything else: attempts,
retries, recording, the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..contract import Reason, WorkflowState

if TYPE_CHECKING:
    from ..runtime import Runtime


@dataclass
class Outcome:
    output: dict[str, Any] = field(default_factory=dict)
    end: WorkflowState | None = None
    reason: Reason | None = None
    detail: str | None = None
    duplicate_of: str | None = None
    quarantine: bool = False
    #: The step hands the workflow on to work elsewhere (a chord) that will end it.
    handoff: bool = False
    #: Started by the runner once this step's success is recorded (e.g. send the chord).
    after: Callable[[], None] | None = None


def ok(**output: Any) -> Outcome:
    return Outcome(output=output)


def reject(reason: Reason, detail: str, *, quarantine: bool = False, **output: Any) -> Outcome:
    """End the workflow ``rejected``: an answer about the document, not a fault."""
    return Outcome(
        output={"reason": reason.value, "detail": detail, **output},
        end=WorkflowState.REJECTED,
        reason=reason,
        detail=detail,
        quarantine=quarantine,
    )


def duplicate(of: str, **output: Any) -> Outcome:
    return Outcome(
        output={"duplicate_of": of, **output},
        end=WorkflowState.DUPLICATE,
        duplicate_of=of,
        detail=f"same bytes as workflow {of}",
    )


def complete(**output: Any) -> Outcome:
    return Outcome(output=output, end=WorkflowState.SUCCESS)


def handoff(start: Callable[[], None], **output: Any) -> Outcome:
    """The step is done, but the workflow goes on elsewhere (a chord that concludes it).

    ``start`` runs after the step's success is recorded, so the chord can never
    finish before the step that started it. The workflow stays ``running`` at this
    step; the reaper knows such a step by ``chord: true`` in its output and finishes
    the workflow if the chord never does.
    """
    return Outcome(output={**output, "chord": True}, handoff=True, after=start)


@dataclass
class StepContext:
    workflow: dict[str, Any]
    params: dict[str, Any]
    rt: Runtime
    attempt: int = 1
    #: The earlier steps' outputs when the runner already read them with the attempt
    #: (the last step does): :attr:`earlier` then makes no second read.
    outputs: dict[str, dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def workflow_id(self) -> str:
        return str(self.workflow["workflow_id"])

    @property
    def sha256(self) -> str:
        return str(self.workflow["sha256"])

    @property
    def earlier(self) -> dict[str, dict[str, Any]]:
        """Outputs of the steps that already succeeded, by step name (read once)."""
        if self.outputs is None:
            self.outputs = self.rt.state.step_outputs(self.workflow_id)
        return self.outputs

    def from_earlier(self, key: str) -> Any:
        for output in self.earlier.values():
            if key in output:
                return output[key]
        return None
