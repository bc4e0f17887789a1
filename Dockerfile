# The DOX image: workers, the migration and the CLI all run from it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DOX_HOME=/data
# pg_dump/pg_restore (15, matching the postgres:15 service) for the backup jobs.
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
# Every mount point of docker-compose.yml exists in the image, owned by dox: a new named
# volume takes its owner from the image's folder (else it would be root's, unwritable).
RUN useradd --create-home --uid 10001 dox \
    && mkdir -p /data/store /data/state /data/inbox /backups \
    && chown dox /data /data/store /data/state /data/inbox /backups
WORKDIR /app
# Dependencies from the hashed lock only (README: "Pinned dependencies"); this layer changes
# only with the lock.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md alembic.ini beat_schedule.py ./
COPY dox_tasks ./dox_tasks
COPY workflow_defs ./workflow_defs
# DOX itself and nothing else; the package carries workflow_defs/ (no DOX_DEFS_DIR needed).
RUN pip install --no-cache-dir --no-deps .
USER dox
ENTRYPOINT ["dox"]
CMD ["--help"]
