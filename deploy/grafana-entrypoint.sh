#!/bin/sh
# Grafana (monitoring profile) starts only with an admin password from .env. Compose checks
# required variables before it applies profiles, so requiring it in docker-compose.yml would
# make a plain `docker compose up` (no monitoring) demand it too: it is checked here instead.
if [ -z "${GF_SECURITY_ADMIN_PASSWORD:-}" ]; then
  echo "grafana: set GRAFANA_ADMIN_PASSWORD in .env (docker compose --profile monitoring up)" >&2
  exit 1
fi
exec "${GRAFANA_RUN:-/run.sh}" "$@"
