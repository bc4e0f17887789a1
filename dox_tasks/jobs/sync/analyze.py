"""Cross-team analysis, pure: who is blocked by whom, since when, and who escalates.

A team is *blocked* when a service it depends on (the service's
``depended_on_by`` names the team) is ``down`` or ``degraded``. The blocker's
age comes from the service's ``unhealthy_since`` (carried over from the last
sync's memory bank); a blocker open longer than ``escalate_after_s`` escalates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .probe import Health
from .teams import TeamsFile

UNHEALTHY = ("down", "degraded")


@dataclass
class TeamView:
    name: str
    status: str  # worst status among its own services
    blocked: bool = False
    escalated: bool = False
    blockers: list[dict[str, Any]] = field(default_factory=list)


def unhealthy_since(health: Health, previous: dict[str, Any] | None, now: datetime) -> datetime | None:
    """When the service's current unhealthy spell began (None while it is up)."""
    if health.status not in UNHEALTHY:
        return None
    if previous and previous.get("status") in UNHEALTHY and previous.get("unhealthy_since"):
        return datetime.fromisoformat(previous["unhealthy_since"])
    return now


def analyze(
    teams: TeamsFile, health: dict[str, Health], since: dict[str, datetime | None], now: datetime
) -> dict[str, TeamView]:
    rank = {"up": 0, "degraded": 1, "down": 2}
    views = {t.name: TeamView(t.name, "up") for t in teams.teams}
    for svc in teams.services:
        h = health[svc.name]
        own = views[svc.team]
        if rank[h.status] > rank[own.status]:
            own.status = h.status
        if h.status not in UNHEALTHY:
            continue
        began = since.get(svc.name) or now
        open_s = int((now - began).total_seconds())
        escalated = open_s > teams.escalate_after_s
        for team in svc.depended_on_by:
            view = views[team]
            view.blocked = True
            view.escalated = view.escalated or escalated
            view.blockers.append(
                {
                    "service": svc.name,
                    "owner": svc.team,
                    "status": h.status,
                    "cause": h.cause,
                    "since": began.isoformat(),
                    "open_s": open_s,
                    "escalated": escalated,
                }
            )
    return views
