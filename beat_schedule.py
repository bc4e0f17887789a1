"""Celery Beat's schedule for DOX (top level, per the product's design card).

The schedule is not written here: it is built from every definition under
``workflow_defs/`` whose trigger is ``{type: schedule, cron, timezone, catch_up}``
— the operations jobs (team sync, backups, maintenance, the reaper, retention)
ship as such definitions, so an operator changes a time by editing YAML.

Beat itself runs :class:`dox_tasks.jobs.beat.DoxScheduler` (``dox beat``), which
reads :func:`build` each time it starts and keeps slots and catch-up decisions
in Postgres, not in Redis.
"""

from __future__ import annotations

from collections.abc import Iterable

from dox_tasks.definitions import Definition
from dox_tasks.jobs.slots import CatchUp, Job


def build(definitions: Iterable[Definition]) -> dict[str, Job]:
    """name -> :class:`Job` for each scheduled definition."""
    jobs: dict[str, Job] = {}
    for d in definitions:
        trigger = d.model.trigger
        if trigger.type != "schedule" or not trigger.cron:
            continue
        jobs[d.name] = Job(
            name=d.name,
            cron=trigger.cron,
            timezone=trigger.timezone or "UTC",
            catch_up=CatchUp(trigger.catch_up or "skip"),
            deadline_s=trigger.deadline,
        )
    return jobs
