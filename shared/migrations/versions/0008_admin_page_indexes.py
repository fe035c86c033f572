"""indexes for the admin pages over millions of rows: outcomes by time and by mailing, clients by filter
and the deleted clients' phones

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:00:00

None of them is on `messages`: the sender's status updates stay as they are (an index on a column they
change would cost them their HOT updates). `report_outcomes` is insert-only (the reporter adds a row per
final message), so its indexes cost one insert each and let the send-rate chart, the mailing's sends
chart and the daily report count from the index alone. On `clients`, every update already changes
`updated_at` (indexed), so the new indexes cost no HOT updates: one counts the clients a mailing filter
matches from the index alone, the other finds deleted clients by phone (the live ones have
`uq_clients_phone_live`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_report_outcomes_occurred_at", table_name="report_outcomes")
    op.create_index(
        "ix_report_outcomes_occurred_at",
        "report_outcomes",
        ["occurred_at"],
        postgresql_include=["mailing_id", "status"],
    )
    op.create_index(
        "ix_report_outcomes_mailing_id_status_occurred_at",
        "report_outcomes",
        ["mailing_id", "status", "occurred_at"],
    )
    op.create_index(
        "ix_clients_live_tag_operator_code",
        "clients",
        ["tag", "operator_code"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index(
        "ix_clients_phone_deleted", "clients", ["phone"], postgresql_where=sa.text("deleted_at IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_clients_phone_deleted", table_name="clients")
    op.drop_index("ix_clients_live_tag_operator_code", table_name="clients")
    op.drop_index("ix_report_outcomes_mailing_id_status_occurred_at", table_name="report_outcomes")
    op.drop_index("ix_report_outcomes_occurred_at", table_name="report_outcomes")
    op.create_index("ix_report_outcomes_occurred_at", "report_outcomes", ["occurred_at"])
