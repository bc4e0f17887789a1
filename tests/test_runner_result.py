"""What the runner hands back: a typed verdict, and the one-line summary Celery returns
(the same strings as before the result was typed: Flower and logs show them)."""

from __future__ import annotations

import pytest

from dox_tasks.runner import StepResult, Verdict


@pytest.mark.parametrize(
    ("result", "summary", "outcome", "sends_next"),
    [
        (StepResult(Verdict.NEXT, "scan"), "next: scan", "ok", True),
        (StepResult(Verdict.RESENT, "store"), "resent: store", "ok", True),
        (StepResult(Verdict.END, "success"), "end: success", "ok", False),
        (StepResult(Verdict.END, "duplicate"), "end: duplicate", "ok", False),
        (StepResult(Verdict.END, "rejected"), "end: rejected", "rejected", False),
        (StepResult(Verdict.FAILED, "timeout"), "failed: timeout", "failed", False),
        (StepResult(Verdict.SKIPPED, "unknown workflow"), "skipped: unknown workflow", "skipped", False),
        (
            StepResult(Verdict.SUPERSEDED),
            "superseded: another delivery finished this step first",
            "skipped",
            False,
        ),
        (StepResult(Verdict.HANDOFF), "handoff", "ok", False),
    ],
)
def test_each_verdict_has_its_summary_and_timing_label(result, summary, outcome, sends_next):
    assert result.summary() == summary
    assert result.outcome == outcome
    assert result.sends_next is sends_next
