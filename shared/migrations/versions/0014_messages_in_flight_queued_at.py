"""a queued or retrying message has its queued_at: the recovery sweep's condition starts from it

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 00:20:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IN_FLIGHT = "('queued', 'retrying')"


def upgrade() -> None:
    # No statement writes such a row; one written otherwise entered the send queue at its last write at
    # the latest, and the sweep then finds it as it did before this constraint.
    op.execute(
        f"UPDATE messages SET queued_at = updated_at WHERE status IN {_IN_FLIGHT} AND queued_at IS NULL"
    )
    op.create_check_constraint(
        "in_flight_queued_at", "messages", f"status NOT IN {_IN_FLIGHT} OR queued_at IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_messages_in_flight_queued_at"), "messages", type_="check")
