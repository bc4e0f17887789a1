"""DOX — a Celery document-workflow pipeline.

``celery -A dox_tasks worker`` starts a worker; ``dox_tasks.submit(...)`` hands
DOX a document. The contract (states, reasons, result fields) is in
:mod:`dox_tasks.contract`.
"""

from . import tasks  # noqa: F401,E402 - registers the tasks with the app
from .app import app
from .contract import DocumentResult, Reason, WorkflowState
from .intake import submit

__all__ = ["app", "submit", "DocumentResult", "Reason", "WorkflowState"]
