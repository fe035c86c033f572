"""sender health: each sender's circuit breaker and backlog, for the admin dashboard

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sender_health",
        sa.Column("instance", sa.String(length=200), nullable=False),
        sa.Column("circuit_state", sa.SmallInteger(), nullable=False),
        sa.Column("calls_in_flight", sa.Integer(), nullable=False),
        sa.Column("fenced", sa.Boolean(), nullable=False),
        sa.Column("retry_queued", sa.Integer(), nullable=True),
        sa.Column("parked_queued", sa.Integer(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("instance", name=op.f("pk_sender_health")),
    )


def downgrade() -> None:
    op.drop_table("sender_health")
