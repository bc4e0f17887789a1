"""The step catalog: every task a workflow definition may name, each declared once.

One :class:`StepKind` per step says everything DOX needs to know about it: the Celery
task name its messages carry, the queue it runs on, the plain function it runs, the
seed's ``action:`` aliases, and the schema of the ``params:`` it understands. From this
one table are derived the Celery tasks (:mod:`dox_tasks.tasks`), the tasks a definition
may name and the checks of their params (:mod:`dox_tasks.definitions.loader`), the
routes (:mod:`dox_tasks.celery_app`), what may run where
(:mod:`dox_tasks.queue_policy`, :mod:`dox_tasks.message_shape`) and ``dox defs tasks``.

Why a table of data here, with the function named by reference (``"module:function"``)
rather than a decorator on each step function: the definitions are checked, and the
message policies applied, by code low in the layering (definitions, runtime) that must
not import the steps (which import the runtime's services) nor the scheduled jobs (which
sit at the top, beside the CLI). A decorator would register a step only once its module
was imported, so ``dox defs validate`` or a worker's queue policy would see a catalog that
depends on what happened to be imported first. Data here is complete the moment this
module is imported, costs no import of a step, and cannot diverge from the tasks: the
worker's task module (:mod:`dox_tasks.tasks`, the top layer) builds one Celery task per
entry and resolves its reference, so a reference that names nothing stops the import of
the worker there, not at a step's first delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: Integers in Pydantic's lax mode: ``5`` and a quoted ``'5'`` (a YAML accident that the
#: steps' ``int()`` always accepted) pass; ``five``, ``null``, a list or ``5.5`` do not.
Int = int


class Params(BaseModel):
    """The ``params:`` a step understands (subclass per step; none by default).

    Used to check a definition only: a step reads its params from the plain mapping the
    definition holds, with its own default from the settings when a key is unset. So the
    fields have no defaults here — every key may be left out (a ``missing`` error is not
    a problem), but one that is given must be of its type and within its bounds: an
    explicit ``null`` is a type error, as is a word where a number belongs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    """A step that takes no params."""


class ValidateParams(Params):
    rate_limit_per_day: Int = Field(
        ge=0, description="documents per user per UTC day, 0: no limit (RATE_LIMIT_PER_USER_PER_DAY)"
    )
    max_file_size: Int = Field(gt=0, description="bytes (MAX_FILE_SIZE_MB)")
    allowed_types: list[str] = Field(
        min_length=1, description="file types by magic bytes, e.g. [pdf, png] (DOX_ALLOWED_TYPES)"
    )


class RecognizeParams(Params):
    max_pages: Int = Field(gt=0, description="pages read for text (DOX_RECOGNIZE_MAX_PAGES)")


@dataclass(frozen=True)
class StepKind:
    """One step a definition may name: the whole of its declaration."""

    #: The Celery task name: what a definition's ``task:`` names and every message carries.
    task: str
    queue: str
    #: ``"module:function"``, a plain ``(StepContext) -> Outcome`` (resolved by tasks.py).
    function: str
    summary: str
    #: Other names a definition may use for it (the seed's ``action:`` values).
    aliases: tuple[str, ...] = ()
    params: type[Params] = NoParams

    @property
    def name(self) -> str:
        """The short name (``validate``, ``backup_database``): the Celery function's name."""
        return self.task.rsplit(".", 1)[-1]

    @property
    def param_names(self) -> frozenset[str]:
        return frozenset(self.params.model_fields)

    def param_help(self) -> list[str]:
        """``max_pages: integer > 0 — pages read for text (…)``, one line per param."""
        lines = []
        for key in sorted(self.params.model_fields):
            kind, meaning = describe(self.params, key)
            lines.append(f"{key}: {kind}" + (f" — {meaning}" if meaning else ""))
        return lines

    def param_problems(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        """``(key, why)`` for each param this step does not understand or whose value is
        of the wrong type or out of range; empty if all are fine."""
        fields = self.params.model_fields
        unknown = sorted(set(params) - set(fields))
        known = ", ".join(sorted(fields)) or "none"
        problems = [(key, f"{self.task} does not understand {key!r} (it takes: {known})") for key in unknown]
        try:
            self.params.model_validate({k: v for k, v in params.items() if k in fields})
        except ValidationError as exc:
            for err in exc.errors():
                if err["type"] == "missing":  # unset: the step's default applies
                    continue
                key = str(err["loc"][0])
                kind, _ = describe(self.params, key)
                problems.append((key, f"{err['msg']} ({self.task} takes {key}: {kind})"))
        return problems


def describe(kind: type[Params], key: str) -> tuple[str, str]:
    """(``integer > 0``, what it means): one param's type and bounds, and its description,
    for people (read from the model's JSON schema)."""
    prop = kind.model_json_schema()["properties"][key]
    text = _TYPES.get(prop.get("type", ""), "value")
    if prop.get("type") == "array":
        text = f"list of {_TYPES.get(prop.get('items', {}).get('type', ''), 'value')}s"
    for bound, shape in _BOUNDS:
        if bound in prop:
            text += " " + shape.format(prop[bound])
    return text, prop.get("description") or ""


_TYPES = {"integer": "integer", "number": "number", "string": "string", "boolean": "true or false"}
_BOUNDS = (
    ("exclusiveMinimum", "> {}"),
    ("minimum", "≥ {}"),
    ("exclusiveMaximum", "< {}"),
    ("maximum", "≤ {}"),
    ("minItems", "(at least {})"),
    ("maxItems", "(at most {})"),
)


def _kinds(*kinds: StepKind) -> dict[str, StepKind]:
    """Index by task name and alias; a name given twice is a mistake in this table."""
    by_name: dict[str, StepKind] = {}
    for kind in kinds:
        for name in (kind.task, *kind.aliases):
            if name in by_name:
                raise ValueError(f"step catalog: {name!r} names both {by_name[name].task} and {kind.task}")
            by_name[name] = kind
    return by_name


_JOBS = "dox_tasks.jobs.steps"

_BY_NAME = _kinds(
    StepKind(
        "dox.validate",
        "validation",
        "dox_tasks.steps.validate:validate",
        "rate limit, size, type, PDF structure, hash/duplicates",
        aliases=("validate", "file_validation"),
        params=ValidateParams,
    ),
    StepKind(
        "dox.scan",
        "scan",
        "dox_tasks.steps.scan:scan",
        "ClamAV INSTREAM scan; infected documents go to quarantine",
        aliases=("scan", "virus_scan"),
    ),
    StepKind(
        "dox.store",
        "storage",
        "dox_tasks.steps.store:store",
        "promote the staged bytes into the content-addressed store",
        aliases=("store", "file_storage"),
    ),
    StepKind(
        "dox.recognize",
        "recognition",
        "dox_tasks.steps.recognize:recognize",
        "extract text and match templates, typed fields",
        aliases=("recognize", "template_recognition"),
        params=RecognizeParams,
    ),
    StepKind(
        "dox.publish",
        "events",
        "dox_tasks.steps.publish:publish",
        "completion event: row, Redis stream, pub/sub, JSONL log",
        aliases=("publish", "publish_event"),
    ),
    StepKind(
        "dox.noop",
        "validation",
        "dox_tasks.steps.publish:noop",
        "does nothing (benchmarks of orchestration overhead)",
        aliases=("noop",),
    ),
    # Scheduled operations (workflow_defs/*.yaml with a schedule trigger).
    StepKind(
        "dox.jobs.sync",
        "operations",
        "dox_tasks.jobs.sync.run:start_sync",
        "team coordination sync: chord of health checks → banks",
    ),
    StepKind(
        "dox.jobs.reap",
        "operations",
        f"{_JOBS}:reap_stuck_workflows",
        "explain and re-drive stuck workflows (reaper)",
    ),
    StepKind(
        "dox.jobs.backup_database",
        "operations",
        f"{_JOBS}:backup_database",
        "pg_dump in one snapshot, verified, retained",
    ),
    StepKind(
        "dox.jobs.backup_config",
        "operations",
        f"{_JOBS}:backup_config",
        "tar.gz of workflow_defs/ and the memory banks",
    ),
    StepKind(
        "dox.jobs.backup_documents",
        "operations",
        f"{_JOBS}:backup_documents",
        "copy stored objects the backup lacks",
    ),
    StepKind(
        "dox.jobs.maintenance",
        "operations",
        f"{_JOBS}:maintenance_weekly",
        "vacuum, retention, cleanup, freshclam, re-scan, disk",
    ),
    StepKind(
        "dox.jobs.retention",
        "operations",
        f"{_JOBS}:retention_cleanup",
        "delete finished workflows and files past retention",
    ),
)

#: Every step, by its Celery task name, in the order declared.
STEPS: dict[str, StepKind] = {k.task: k for k in _BY_NAME.values()}


def resolve(task: str) -> StepKind | None:
    """The step a definition's ``task:`` (or ``action:``) names: by task name or alias."""
    return _BY_NAME.get(task)


def is_step_task(name: str) -> bool:
    """Whether ``name`` is the Celery task of a step (as messages carry it: no aliases)."""
    return name in STEPS
