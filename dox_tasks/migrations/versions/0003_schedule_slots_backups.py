"""Scheduled runs and backups.

``workflow_states.schedule_slot`` records the cron slot a scheduled run belongs
to; the unique (rule_name, schedule_slot) pair is what makes "a second run for
the same job and slot is refused, whatever sent it" a database fact rather than
a scheduler habit. ``backups`` keeps one row per archive. An index on
``workflow_events (type, created_at)`` serves "the latest event of this type".

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_states") as batch:
        batch.add_column(sa.Column("schedule_slot", sa.String(length=60), nullable=True))
        batch.create_unique_constraint("uq_workflow_schedule_slot", ["rule_name", "schedule_slot"])
    op.create_table(
        "backups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("workflow_id", sa.String(length=36), nullable=True),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("row_counts", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("verified", sa.String(length=20), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_backups_created_at", "backups", ["created_at"])
    op.create_index("ix_backups_workflow_id", "backups", ["workflow_id"])
    # Latest event of a type (the intake switch, the last sync's events) without a scan.
    op.create_index("ix_workflow_events_type_created", "workflow_events", ["type", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_workflow_events_type_created", table_name="workflow_events")
    op.drop_index("ix_backups_workflow_id", table_name="backups")
    op.drop_index("ix_backups_created_at", table_name="backups")
    op.drop_table("backups")
    with op.batch_alter_table("workflow_states") as batch:
        batch.drop_constraint("uq_workflow_schedule_slot", type_="unique")
        batch.drop_column("schedule_slot")
