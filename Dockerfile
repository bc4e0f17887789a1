# The DOX image: workers, the migration and the CLI all run from it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DOX_HOME=/data
RUN useradd --create-home --uid 10001 dox && mkdir -p /data && chown dox /data
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY dox_tasks ./dox_tasks
COPY workflow_defs ./workflow_defs
RUN pip install --no-cache-dir .
ENV DOX_DEFS_DIR=/app/workflow_defs
USER dox
ENTRYPOINT ["dox"]
CMD ["--help"]
