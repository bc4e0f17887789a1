"""The peer of DOX's upload endpoint: what a user writes with FastAPI and Celery.

An ``UploadFile`` parameter (Starlette parses the multipart body into a spooled temporary
file before the handler runs), the upload copied to a file in a folder, a bare Celery task
sent to the same Redis, a 202 with an id. No key check, no fsync, no database row, no size
limit. ``bench/api.py`` serves it with ``uvicorn handwritten_api:app`` and the settings
``dox api serve`` uses (httptools, same worker count, log level info, no server header).

Environment: ``BENCH_REDIS_URL``, ``BENCH_PREFIX`` (a key prefix on the shared Redis),
``BENCH_UPLOAD_DIR`` (where uploads are saved).
"""

import os
import shutil
import uuid
from pathlib import Path

from celery import Celery
from fastapi import FastAPI, UploadFile

url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
celery = Celery("handwritten", broker=url)
prefix = os.environ.get("BENCH_PREFIX")
if prefix:  # keep the benchmark's keys apart from anything else on the shared Redis
    celery.conf.broker_transport_options = {"global_keyprefix": prefix}
UPLOADS = Path(os.environ.get("BENCH_UPLOAD_DIR", "uploads"))
UPLOADS.mkdir(parents=True, exist_ok=True)

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/api/v1/documents", status_code=202)
async def upload(file: UploadFile) -> dict[str, str]:
    workflow_id = str(uuid.uuid4())
    path = UPLOADS / f"{workflow_id}.pdf"
    with path.open("wb") as out:
        shutil.copyfileobj(file.file, out)
    celery.send_task("process_document", args=[workflow_id, str(path)])
    return {"workflow_id": workflow_id, "status": "queued"}
