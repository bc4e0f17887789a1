"""The workflow list's order as an index: (created_at, workflow_id).

``GET /api/v1/workflows`` and ``dox workflows list`` read workflows newest first and page
by keyset on this pair. Without the index an unfiltered page sorted the whole table (about
120 ms at 200,000 rows, growing with it); with it a page is an index range scan (about 6 ms
at any depth). Building it takes a write lock on ``workflow_states`` for as long as the
build runs: upgrade with the workers stopped, as for every migration.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_workflow_states_created", "workflow_states", ["created_at", "workflow_id"])


def downgrade() -> None:
    op.drop_index("ix_workflow_states_created", table_name="workflow_states")
