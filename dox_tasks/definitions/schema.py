"""The schema of a workflow definition (the seed's format, made strict).

Unknown keys are errors (``extra="forbid"``): an option nobody reads is a typo
that would otherwise be silently ignored in production.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..contract import INTAKE_QUEUE, QUEUES, OnFailure

if TYPE_CHECKING:
    from ..settings import Settings


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RetryPolicy(Strict):
    attempts: int | None = Field(None, ge=0, le=20, description="retries after the first try")
    backoff: float | None = Field(None, ge=1, le=10)
    delay: float | None = Field(None, ge=0, le=600, description="first retry delay, seconds")


class Trigger(Strict):
    """How a workflow starts: a submission (``api_request``) or Beat (``schedule``).

    A schedule names its cron slots (5 fields, or 6 with seconds last), their
    timezone, and what happens to a slot nobody ran on time (Beat was down):
    ``catch_up: once`` runs the latest missed slot once, ``skip`` lets it go.
    ``deadline`` (seconds after the slot) is the latest a run may still start;
    by default a ``once`` job may start any time before its next slot, a ``skip``
    job only within DOX_BEAT_GRACE.
    """

    type: Literal["api_request", "schedule"]
    source: str | None = None
    cron: str | None = None
    timezone: str | None = None
    catch_up: Literal["once", "skip"] | None = None
    deadline: int | None = Field(None, gt=0, le=366 * 86400)

    @model_validator(mode="after")
    def _schedule_needs_cron(self) -> Trigger:
        if self.type == "schedule":
            if not self.cron:
                raise ValueError("a schedule trigger needs 'cron' (e.g. \"0 9 * * *\")")
            if not croniter.is_valid(self.cron):
                raise ValueError(f"cron {self.cron!r} is not a valid cron expression")
            try:
                ZoneInfo(self.timezone or "UTC")
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown timezone {self.timezone!r} (use e.g. UTC)") from exc
            if self.catch_up is None:
                raise ValueError("a schedule trigger needs 'catch_up: once' or 'catch_up: skip'")
        elif self.cron or self.catch_up or self.deadline:
            raise ValueError("cron, catch_up and deadline only apply to 'type: schedule'")
        return self


class Step(Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_. -]+$")
    task: str = Field(validation_alias=AliasChoices("task", "action"))
    params: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy | None = None
    timeout: int | None = Field(None, gt=1, le=3600, description="hard time limit, seconds")
    on_success: str | None = None
    on_failure: str = OnFailure.ESCALATE.value
    queue: str | None = Field(None, description="route to another step kind's queue")

    @field_validator("queue")
    @classmethod
    def _known_queue(cls, v: str | None) -> str | None:
        steps_may_use = [q for q in QUEUES if q != INTAKE_QUEUE]  # intake runs dox.submit only
        if v is not None and v not in steps_may_use:
            raise ValueError(f"unknown queue {v!r}: use one of {', '.join(steps_may_use)}")
        return v

    @field_validator("on_failure")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        allowed = [p.value for p in OnFailure]
        if v not in allowed:
            raise ValueError(f"unknown on_failure target {v!r}: use one of {', '.join(allowed)}")
        return v


class RetryBudget(NamedTuple):
    """A step's retries after its first try, and how the wait before each grows."""

    attempts: int
    backoff: float
    delay: float


def retry_budget(step: Step, settings: Settings) -> RetryBudget:
    """The step's own ``retry:`` where it says so, the WORKFLOW_RETRY_* settings elsewhere."""
    r = step.retry
    return RetryBudget(
        r.attempts if r and r.attempts is not None else settings.workflow_retry_attempts,
        r.backoff if r and r.backoff is not None else settings.workflow_retry_backoff,
        r.delay if r and r.delay is not None else settings.workflow_retry_delay,
    )


class DefinitionModel(Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[a-z0-9_]+$")
    service: str = ""
    version: str = Field("1.0.0", max_length=50)
    priority: Literal["low", "normal", "high", "critical"] = "normal"
    description: str | None = None
    trigger: Trigger
    steps: list[Step] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) else v
