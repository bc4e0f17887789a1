"""The process-wide Celery app (``celery -A dox_tasks worker`` finds it here)."""

from .celery_app import create_app

app = create_app()
