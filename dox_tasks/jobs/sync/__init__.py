"""The daily team coordination sync: health checks → analysis → memory banks → events."""

#: The job's definition name (workflow_defs/sync_team_coordination.yaml).
SYNC_JOB = "sync_team_coordination"
