"""Beat starts: when each Beat process started, so the first one marks the schedule's start.

Catch-up runs only slots after the first Beat ever started against this database: a fresh
install does not fire every ``catch_up: once`` job at its first start.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "beat_starts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_beat_starts_started_at", "beat_starts", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_beat_starts_started_at", table_name="beat_starts")
    op.drop_table("beat_starts")
