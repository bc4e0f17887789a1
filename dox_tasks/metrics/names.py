"""Every metric DOX exposes, in one place: the exporter, the workers, the alert rules,
the Grafana dashboard and their tests all refer to these names.

The first five are the seed runbooks' names; the ``dox_`` ones are DOX's own.
"""

from __future__ import annotations

#: Exported by ``dox metrics serve`` (read from Postgres and the broker at scrape time).
#: The workflow series carry ``kind``: ``document`` (uploads) or ``job`` (scheduled runs),
#: so document alerts are not diluted by the reaper's runs or slowed by a nightly pg_dump.
EXPORTER: dict[str, str] = {
    "workflow_completed_total": "Workflows that ended without a fault, by rule_name, kind and status "
    "(success, duplicate, rejected, cancelled); counted per run, so a retried workflow counts again",
    "workflow_failed_total": "Workflow runs that ended failed (a fault after retries), "
    "by rule_name, kind and reason",
    "workflow_duration_seconds": "Submission to terminal state of finished workflow runs (histogram), "
    "by rule_name and kind",
    "validation_scan_total": "Virus scans by result (clean, infected, skipped, error)",
    "rate_limit_hits_total": "Submissions rejected for the per-user daily rate limit",
    "dox_workflows_active": "Workflows not yet finished, by state (queued, running)",
    "dox_queue_depth": "Messages waiting in each broker queue, by queue",
    "dox_queue_workers": "Workers consuming each queue (inspect active_queues), by queue",
    "dox_workers_up": "Workers that answered a ping",
    "dox_last_backup_success_timestamp_seconds": "Unix time of the last verified backup, by kind",
    "dox_last_sync_success_timestamp_seconds": "Unix time the last team coordination sync succeeded",
    "dox_last_sync_services_down": "Team services the last successful sync found down",
    "dox_rate_limit_per_user_per_day": "The configured per-user daily limit",
    "dox_rate_limit_max_usage_ratio": "The busiest user's submissions today divided by the limit",
    "dox_database_up": "1 when the exporter could read Postgres, else 0",
    "dox_broker_up": "1 when the exporter could read the broker, else 0",
    "dox_api_auth_failures_total": "API requests refused for their key, by reason (missing, malformed,"
    " unknown, wrong_secret, revoked, expired; scope: a key without the scope, 403); counted in Redis",
}

#: Exposed by each worker (``DOX_METRICS_PORT``), summed over its pool processes.
WORKER: dict[str, str] = {
    "dox_step_duration_seconds": "Wall time of one step delivery in a worker process (histogram), "
    "by step, queue and outcome",
}

#: Histogram buckets (seconds). 30 s is the p95 workflow target, 5 s the p95 scan target.
WORKFLOW_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

ALL: dict[str, str] = {**EXPORTER, **WORKER}
