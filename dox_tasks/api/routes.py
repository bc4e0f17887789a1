"""The runbooks' queries and operator actions, gathered so the app includes them in one line:
the workflow's document, retry and cancel, metrics, the team sync and the services' health,
and the intake switch. (The list and one workflow are in :mod:`.workflows`.)"""

from __future__ import annotations

from fastapi import APIRouter

from . import coordination, document, intake, metrics, operate

router = APIRouter()
for module in (document, operate, metrics, coordination, intake):
    router.include_router(module.router)
