"""DOX — a Celery document-workflow pipeline.

``celery -A dox_tasks worker`` starts a worker; ``dox_tasks.submit(...)`` hands
DOX a document. The contract (states, reasons, result fields) is in
:mod:`dox_tasks.contract`.
"""

import sys

from .errors import ConfigError

try:
    from . import tasks  # noqa: F401 - registers the tasks with the app (reads the settings)
except ConfigError as exc:
    # A setting that cannot work stops every entry point (the CLI, a worker, the API) here,
    # at import: one sentence naming the variable, exit 2, no traceback.
    sys.stderr.write(f"dox: {exc}\n")
    raise SystemExit(2) from None
from .app import app
from .contract import DocumentResult, Reason, WorkflowState
from .intake import submit

__all__ = ["app", "submit", "DocumentResult", "Reason", "WorkflowState"]
