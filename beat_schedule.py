"""Celery Beat's schedule for DOX (top level, per the product's design card).

Empty for now on purpose: the scheduled jobs (team sync, backups, maintenance, the
stuck-workflow reaper) and the single-sender lock are the scheduling issue's work.
Nothing imports this file yet, so it cannot schedule anything by accident.
"""

from __future__ import annotations

from typing import Any

#: name -> Celery beat entry; filled from workflow_defs/ schedule triggers later.
beat_schedule: dict[str, dict[str, Any]] = {}
