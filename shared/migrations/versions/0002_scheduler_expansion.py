"""scheduler expansion bookkeeping

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("mailings", sa.Column("expansion_signature", sa.String(length=64), nullable=True))
    op.create_index("ix_clients_updated_at", "clients", ["updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_clients_updated_at", table_name="clients")
    op.drop_column("mailings", "expansion_signature")
