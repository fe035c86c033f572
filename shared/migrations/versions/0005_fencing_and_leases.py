"""fenced claims, the send queue's consumption watermark, and leased daily-report runs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 16:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The token of the claim that holds a message: a write or release by a stale holder matches nothing.
    op.add_column("messages", sa.Column("claim_token", sa.BigInteger(), nullable=True))
    # How far each send queue has been consumed (the entry time of the newest message claimed from it):
    # the sweep copies a message only once newer ones went past it.
    op.create_table(
        "send_progress",
        sa.Column("queue", sa.String(length=200), nullable=False),
        sa.Column("consumed_through", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("queue", name=op.f("pk_send_progress")),
    )
    # A report day is held by one reporter under a lease, not by a session-bound lock.
    op.add_column("report_runs", sa.Column("holder", sa.String(length=100), nullable=True))
    op.add_column("report_runs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("report_runs", "lease_until")
    op.drop_column("report_runs", "holder")
    op.drop_table("send_progress")
    op.drop_column("messages", "claim_token")
