"""sender rate buckets: the shared token bucket of the optional rate limit to the external API

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sender_rate_buckets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sender_rate_buckets")),
    )


def downgrade() -> None:
    op.drop_table("sender_rate_buckets")
