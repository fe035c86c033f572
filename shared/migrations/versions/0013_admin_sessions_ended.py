"""admin UI sessions ended by a sign-out: a signed cookie is otherwise valid until it expires

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 17:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_sessions_ended",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        # When the session would have expired anyway: the row is not needed after it.
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_admin_sessions_ended")),
    )
    op.create_index("ix_admin_sessions_ended_expires_at", "admin_sessions_ended", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_admin_sessions_ended_expires_at", table_name="admin_sessions_ended")
    op.drop_table("admin_sessions_ended")
