"""Load definitions from YAML and check them, reporting every problem as file:line.

Checks beyond the schema: task names must be registered DOX tasks (the step catalog,
:mod:`dox_tasks.definitions.catalog`) and their ``params`` of the types it declares, every
``on_success`` must name a step (or ``complete``), the success path must not
loop and must reach every step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..contract import COMPLETE
from ..errors import DefinitionError
from .catalog import resolve
from .schema import DefinitionModel, Step

Path_ = tuple[str | int, ...]

#: The step that keeps a document (see :attr:`Definition.keeps_documents`).
STORE_TASK = "dox.store"


@dataclass
class Definition:
    """A checked definition plus the content hash that identifies its snapshot."""

    model: DefinitionModel
    source: str
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        self.digest = hashlib.sha256(
            json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    @property
    def name(self) -> str:
        return self.model.name

    def body(self) -> dict[str, Any]:
        return self.model.model_dump(mode="json")

    @property
    def keeps_documents(self) -> bool:
        """Whether its workflows store the document (a ``dox.store`` step). Only such a
        workflow can be the original a later upload is a duplicate of, and only such a
        workflow looks for one: a check that keeps nothing (``validate_and_scan``) always
        runs in full and is never pointed at."""
        kinds = (resolve(s.task) for s in self.model.steps)
        return any(kind is not None and kind.task == STORE_TASK for kind in kinds)

    def ordered_steps(self) -> list[Step]:
        """Steps in execution order, following ``on_success`` from the first."""
        by_name = {s.name: s for s in self.model.steps}
        order: list[Step] = []
        current: Step | None = self.model.steps[0]
        while current is not None:
            order.append(current)
            nxt = next_step_name(self.model, current)
            current = by_name.get(nxt) if nxt else None
        return order

    def step(self, name: str) -> Step:
        for s in self.model.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def next_of(self, name: str) -> str | None:
        return next_step_name(self.model, self.step(name))

    @classmethod
    def from_snapshot(cls, body: dict[str, Any], source: str = "<snapshot>") -> Definition:
        return cls(DefinitionModel.model_validate(body), source)


def next_step_name(model: DefinitionModel, step: Step) -> str | None:
    """``on_success`` target; unset means the next step in the file (the last one completes)."""
    if step.on_success:
        return None if step.on_success == COMPLETE else step.on_success
    names = [s.name for s in model.steps]
    i = names.index(step.name)
    return names[i + 1] if i + 1 < len(names) else None


def _line_map(text: str) -> dict[Path_, int]:
    """Map each YAML path (keys and list indexes) to its 1-based line."""
    lines: dict[Path_, int] = {}

    def walk(node: yaml.Node, path: Path_) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)
                lines[sub] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _line_of(lines: dict[Path_, int], loc: Path_) -> int:
    path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return 1


def load_file(path: Path) -> Definition:
    """Parse and check one file; raise :class:`DefinitionError` listing every problem."""
    text = path.read_text(encoding="utf-8")
    where = str(path)
    try:
        data = yaml.safe_load(text)
        lines = _line_map(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise DefinitionError([f"{where}:{line}: not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise DefinitionError([f"{where}:1: a definition is a mapping with name, trigger, steps"])
    problems: list[str] = []
    try:
        model = DefinitionModel.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_of(lines, loc)
            field_path = ".".join(str(p) for p in loc) or "(top)"
            problems.append(f"{where}:{line}: {field_path}: {_explain(err)}")
        raise DefinitionError(problems) from exc
    problems.extend(_graph_problems(model, lines, where))
    if problems:
        raise DefinitionError(problems)
    return Definition(model, where)


def _explain(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key: remove it or check its spelling"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"]).removeprefix("Value error, ")


def _graph_problems(model: DefinitionModel, lines: dict[Path_, int], where: str) -> list[str]:
    problems: list[str] = []
    names = [s.name for s in model.steps]
    for i, step in enumerate(model.steps):
        if names.count(step.name) > 1 and names.index(step.name) != i:
            line = _line_of(lines, ("steps", i, "name"))
            problems.append(f"{where}:{line}: steps.{i}.name: step {step.name!r} is defined twice")
        info = resolve(step.task)
        for key, why in info.param_problems(step.params) if info else ():
            line = _line_of(lines, ("steps", i, "params", key))
            problems.append(f"{where}:{line}: steps.{i}.params.{key}: {why}")
        if info is None:
            key = "task" if ("steps", i, "task") in lines else "action"
            line = _line_of(lines, ("steps", i, key))
            problems.append(
                f"{where}:{line}: steps.{i}.{key}: unknown task {step.task!r}:"
                " name a registered DOX task (see `dox defs tasks`)"
            )
        target = step.on_success
        if target and target != COMPLETE and target not in names:
            line = _line_of(lines, ("steps", i, "on_success"))
            problems.append(
                f"{where}:{line}: steps.{i}.on_success: unknown step {target!r}:"
                f" use one of {', '.join(names)} or {COMPLETE!r}"
            )
    if problems:
        return problems
    # Follow the success path from the first step: it must end, and reach every step.
    seen: list[str] = []
    current: str | None = names[0]
    by_name = {s.name: s for s in model.steps}
    while current is not None:
        if current in seen:
            i = names.index(seen[-1])
            line = _line_of(lines, ("steps", i, "on_success"))
            loop = " → ".join([*seen[seen.index(current) :], current])
            problems.append(
                f"{where}:{line}: steps.{i}.on_success: cycle {loop}: point the last step at {COMPLETE!r}"
            )
            return problems
        seen.append(current)
        current = next_step_name(model, by_name[current])
    for i, name in enumerate(names):
        if name not in seen:
            line = _line_of(lines, ("steps", i))
            problems.append(
                f"{where}:{line}: steps.{i}: step {name!r} is unreachable:"
                " no on_success path from the first step leads to it"
            )
    return problems


#: YAML files in workflow_defs/ that are not workflow definitions.
NOT_DEFINITIONS = frozenset({"teams.yaml", "teams.yml"})


#: The package that carries the shipped definitions, ``teams.yaml`` and ``templates/``:
#: the top-level ``workflow_defs/`` folder, mapped into the package by pyproject.toml.
def definition_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p for p in path.glob("*.y*ml") if p.suffix in (".yaml", ".yml") and p.name not in NOT_DEFINITIONS
    )


def validate_path(path: Path) -> tuple[list[Definition], list[str]]:
    """Check every definition under ``path``; returns (good ones, problems)."""
    good: list[Definition] = []
    problems: list[str] = []
    files = definition_files(path)
    if not files:
        problems.append(f"{path}: no workflow definitions (*.yaml) found")
    names: dict[str, str] = {}
    for file in files:
        try:
            d = load_file(file)
        except DefinitionError as exc:
            problems.extend(exc.problems)
            continue
        if d.name in names:
            problems.append(f"{file}:1: name {d.name!r} is already defined in {names[d.name]}")
            continue
        names[d.name] = str(file)
        good.append(d)
    return good, problems


def load_all(path: Path) -> dict[str, Definition]:
    """All definitions under ``path``; any problem raises (a worker refuses to start)."""
    good, problems = validate_path(path)
    if problems:
        raise DefinitionError(problems)
    return {d.name: d for d in good}
