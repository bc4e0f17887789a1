"""publish — the last step: the workflow ends ``success``.

The completion event itself (row → Redis stream → pub/sub → JSONL log) is
emitted by the runner's single terminal path, the same one that announces
rejections and failures, so every workflow gets exactly one kind of completion
event whatever step ended it.
"""

from __future__ import annotations

from .base import Outcome, StepContext, complete, ok


def publish(ctx: StepContext) -> Outcome:
    return complete(published=True)


def noop(ctx: StepContext) -> Outcome:
    """A step that does nothing: measures what orchestration itself costs."""

    return ok()
