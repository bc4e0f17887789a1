# The DOX image: workers, the migration and the CLI all run from it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DOX_HOME=/data
# pg_dump/pg_restore (15, matching the postgres:15 service) for the backup jobs.
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 dox && mkdir -p /data /backups && chown dox /data /backups
WORKDIR /app
COPY pyproject.toml README.md alembic.ini beat_schedule.py ./
COPY dox_tasks ./dox_tasks
COPY workflow_defs ./workflow_defs
RUN pip install --no-cache-dir .
ENV DOX_DEFS_DIR=/app/workflow_defs
USER dox
ENTRYPOINT ["dox"]
CMD ["--help"]
