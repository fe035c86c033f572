"""reporter: outcomes recorded from message.finalized events, and one row per daily report

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 22:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "report_outcomes",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("mailing_id", sa.BigInteger(), nullable=False),
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "status IN ('sent', 'failed', 'expired', 'cancelled')",
            name=op.f("ck_report_outcomes_status_final"),
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_report_outcomes")),
    )
    op.create_index("ix_report_outcomes_occurred_at", "report_outcomes", ["occurred_at"])
    op.create_table(
        "report_runs",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("mail_message_id", sa.String(length=255), nullable=True),
        sa.CheckConstraint("status IN ('sending', 'sent')", name=op.f("ck_report_runs_status_known")),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_report_runs")),
    )


def downgrade() -> None:
    op.drop_table("report_runs")
    op.drop_index("ix_report_outcomes_occurred_at", table_name="report_outcomes")
    op.drop_table("report_outcomes")
