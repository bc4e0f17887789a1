"""API keys: who may call DOX's HTTP API, stored without their secrets.

A key is ``dox_<prefix>_<secret>``. ``api_key`` holds only the public prefix (what a
log line, ``dox apikeys list`` and the seed's runbook show); the secret is kept as the
hex SHA-256 of itself in ``secret_hash``. The secret is 256 random bits, so a fast hash
is as strong as a slow one here, and it is what lets every request be checked cheaply.
``usage_count`` and ``last_used`` are added to in batches by the API, not once per
request. ``replaced_by`` names the key that rotation made in its place.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("api_key", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("user_display", sa.String(length=200), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
        sa.Column("usage_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("replaced_by", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("api_key"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
