"""Users in one normal form; idempotency keys per user.

An idempotency key was unique across all users: a second user sending the same key
got the first user's workflow id, and their document was never processed. The key
is now unique per (user, key). ``user_id`` holds the user's normal form
(NFKC, case folded, trimmed: see ``dox_tasks.identity``) and the new
``user_display`` what the caller wrote. Existing rows keep their spelling as
``user_display`` and get the normal form as ``user_id`` (keys were globally unique
before, so no two rows can collide under the new constraint). The normalisation is
written out here, not imported, so this revision means the same thing forever.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_REFUSED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
# SQLite's copy of the 0001 constraint has no name: batch mode finds it by this convention.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _normal(name: str) -> str | None:
    if any(unicodedata.category(c) in _REFUSED for c in name):
        return None  # left as it was; such a name is refused at intake from now on
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.split()) or None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_constraint("workflow_states_idempotency_key_key", "workflow_states", type_="unique")
        op.add_column("workflow_states", sa.Column("user_display", sa.String(length=200), nullable=True))
        op.create_unique_constraint("uq_workflow_user_key", "workflow_states", ["user_id", "idempotency_key"])
    else:
        with op.batch_alter_table("workflow_states", naming_convention=_NAMING) as batch:
            batch.drop_constraint("uq_workflow_states_idempotency_key", type_="unique")
            batch.add_column(sa.Column("user_display", sa.String(length=200), nullable=True))
            batch.create_unique_constraint("uq_workflow_user_key", ["user_id", "idempotency_key"])
    bind.execute(sa.text("UPDATE workflow_states SET user_display = user_id"))
    users = [r[0] for r in bind.execute(sa.text("SELECT DISTINCT user_id FROM workflow_states"))]
    for user in users:
        normal = _normal(user)
        if normal is not None and normal != user:
            bind.execute(
                sa.text("UPDATE workflow_states SET user_id = :n WHERE user_id = :u"),
                {"n": normal, "u": user},
            )


def downgrade() -> None:
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE workflow_states SET user_id = user_display WHERE user_display IS NOT NULL"))
    if bind.dialect.name == "postgresql":
        op.drop_constraint("uq_workflow_user_key", "workflow_states", type_="unique")
        op.drop_column("workflow_states", "user_display")
        op.create_unique_constraint(
            "workflow_states_idempotency_key_key", "workflow_states", ["idempotency_key"]
        )
    else:
        with op.batch_alter_table("workflow_states") as batch:
            batch.drop_constraint("uq_workflow_user_key", type_="unique")
            batch.drop_column("user_display")
            batch.create_unique_constraint("uq_workflow_states_idempotency_key", ["idempotency_key"])
