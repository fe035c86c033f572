"""viewer API keys: the api_keys role check allows 'viewer'

Placeholder in the wt-counts branch for the migration of the same name being written elsewhere; the
other one is kept at merge. Equivalent: it only swaps the role check constraint.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 12:00:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_role_known")
    op.execute(
        "ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_role_known"
        " CHECK (role IN ('admin', 'operator', 'viewer'))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_role_known")
    op.execute(
        "ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_role_known CHECK (role IN ('admin', 'operator'))"
    )
