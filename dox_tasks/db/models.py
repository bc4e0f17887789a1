"""Table definitions, named as the seed runbooks query them.

``workflow_states`` holds one row per workflow (the truth about it; Celery's
``PENDING`` is never shown), ``workflow_step_results`` one row per *attempt* of
a step, keyed by (workflow_id, step, attempt), and ``workflow_events`` the
event record that the Redis stream and pub/sub only fan out.

The submitting user is stored as ``user_id``: ``user`` is a reserved word in
PostgreSQL, and ``SELECT user FROM workflow_states`` silently returns the
database role instead of the column.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class WorkflowDefinition(Base):
    """A snapshot of a definition, keyed by the hash of its content.

    Each workflow points at the exact definition it ran, so a retry next month
    runs the same steps even if the YAML has changed since.
    """

    __tablename__ = "workflow_definitions"

    definition_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(50))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkflowStateRow(Base):
    __tablename__ = "workflow_states"

    workflow_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    rule_name: Mapped[str] = mapped_column(String(200))
    definition_hash: Mapped[str] = mapped_column(
        String(64), ForeignKey("workflow_definitions.definition_hash")
    )
    definition_version: Mapped[str] = mapped_column(String(50))
    current_state: Mapped[str] = mapped_column(String(20))
    current_step: Mapped[str | None] = mapped_column(String(100))
    #: The user's normal form (dox_tasks.identity): what quotas, duplicates and keys count.
    user_id: Mapped[str] = mapped_column(String(200))
    #: The name as the caller wrote it (None on rows older than migration 0007).
    user_display: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200))
    file_name: Mapped[str | None] = mapped_column(String(500))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[str | None] = mapped_column(Text)
    duplicate_of: Mapped[str | None] = mapped_column(String(36))
    #: Unique per user (uq_workflow_user_key): another user's same key is another workflow.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    metadata_json: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Scheduled runs: the cron slot this run belongs to (ISO 8601 UTC), or
    #: ``manual:<time>``. Unique per job, so no slot runs twice whatever sent it.
    schedule_slot: Mapped[str | None] = mapped_column(String(60))
    #: 1, then 2, 3, … after each operator retry (``dox workflows retry``).
    run: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: When the current run was started by a retry (None for run 1: ``created_at``).
    run_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("rule_name", "schedule_slot", name="uq_workflow_schedule_slot"),
        UniqueConstraint("user_id", "idempotency_key", name="uq_workflow_user_key"),
        Index("ix_workflow_states_state_created", "current_state", "created_at"),
        Index("ix_workflow_states_rule_name", "rule_name", "created_at"),
        Index("ix_workflow_states_sha256", "sha256", "current_state"),
        #: The list's order and keyset (migration 0010).
        Index("ix_workflow_states_created", "created_at", "workflow_id"),
    )


class WorkflowStepResult(Base):
    __tablename__ = "workflow_step_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("workflow_states.workflow_id", ondelete="CASCADE")
    )
    step: Mapped[str] = mapped_column(String(100))
    attempt: Mapped[int] = mapped_column(Integer)
    #: The workflow run this attempt belongs to; the delivery budget counts one run.
    run: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    task_id: Mapped[str | None] = mapped_column(String(64))
    worker_hostname: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("workflow_id", "step", "attempt", name="uq_step_attempt"),
        Index("ix_step_results_state_started", "state", "started_at"),
    )


class WorkflowEvent(Base):
    __tablename__ = "workflow_events"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    workflow_id: Mapped[str | None] = mapped_column(String(36), index=True)
    type: Mapped[str] = mapped_column(String(60))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    __table_args__ = (Index("ix_workflow_events_type_created", "type", "created_at"),)


class BackupRow(Base):
    """One backup archive: what it holds, its checksum and how it was verified."""

    __tablename__ = "backups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))  # database | config | documents
    workflow_id: Mapped[str | None] = mapped_column(String(36), index=True)
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(Integer)
    row_counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20))  # ok | failed
    verified: Mapped[str | None] = mapped_column(String(20))  # readback | restore
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MetricTotal(Base):
    """Counter series of rows that retention deleted (see ``dox_tasks.db.tally``).

    ``labels`` is the series' labels as sorted JSON; the exporter adds ``value`` to
    what it counts in the live rows, so no counter goes down when old rows go.
    """

    __tablename__ = "metric_totals"

    metric: Mapped[str] = mapped_column(String(100), primary_key=True)
    labels: Mapped[str] = mapped_column(String(500), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class ApiKeyRow(Base):
    """One API key (migration 0009): the public prefix and the SHA-256 of the secret, never
    the secret. ``usage_count``/``last_used`` are added to in batches (db.apikeys.record_use)."""

    __tablename__ = "api_keys"

    api_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    #: The key's user in normal form (dox_tasks.identity), and as it was written.
    user_id: Mapped[str] = mapped_column(String(200))
    user_display: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    usage_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    replaced_by: Mapped[str | None] = mapped_column(String(32))


class BeatStartRow(Base):
    """Each start of a Beat process (migration 0011). The first one is when this database's
    schedule began: slots before it are never run as catch-up (a fresh install does not
    fire every job at once)."""

    __tablename__ = "beat_starts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    host: Mapped[str] = mapped_column(String(200))
