"""The teams file: which services exist, who owns them, who depends on them.

``workflow_defs/teams.yaml`` by default (``DOX_TEAMS_FILE`` points elsewhere).
Checked strictly like a workflow definition: an unknown team in ``team`` or
``depended_on_by`` is an error naming the service, not a silent no-op.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ...errors import DefinitionError

NAME = r"^[A-Za-z0-9_.-]+$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Team(Strict):
    name: str = Field(pattern=NAME, max_length=100)
    contact: str | None = None


class Service(Strict):
    name: str = Field(pattern=NAME, max_length=100)
    health_url: str = Field(pattern=r"^https?://")
    team: str
    depended_on_by: list[str] = Field(default_factory=list)


class TeamsFile(Strict):
    check_timeout_s: float = Field(3.0, gt=0, le=60, description="per health check")
    slow_ms: int = Field(1000, gt=0, description="a slower answer is 'degraded'")
    sync_deadline_s: int = Field(60, gt=0, le=600, description="the sync finishes by then, answers or not")
    escalate_after_s: int = Field(86400, gt=0, description="a blocker open longer than this escalates")
    teams: list[Team] = Field(min_length=1)
    services: list[Service] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_names(self) -> TeamsFile:
        teams = {t.name for t in self.teams}
        problems = []
        seen: set[str] = set()
        for s in self.services:
            if s.name in seen:
                problems.append(f"service {s.name!r} is listed twice")
            seen.add(s.name)
            for team in [s.team, *s.depended_on_by]:
                if team not in teams:
                    problems.append(f"service {s.name!r} names unknown team {team!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def load_teams(path: Path) -> TeamsFile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DefinitionError([f"{path}: cannot read the teams file: {exc.strerror or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise DefinitionError([f"{path}: not valid YAML: {exc}"]) from exc
    try:
        return TeamsFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top)"
            problems.append(f"{path}: {where}: {e['msg'].removeprefix('Value error, ')}")
        raise DefinitionError(problems) from exc
