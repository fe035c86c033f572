"""API keys may have the viewer role (read-only)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 17:00:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("ck_api_keys_role_known"), "api_keys", type_="check")
    op.create_check_constraint(
        op.f("ck_api_keys_role_known"), "api_keys", "role IN ('admin', 'operator', 'viewer')"
    )


def downgrade() -> None:
    # A viewer key cannot survive under the old rule: it is revoked and demoted rather than deleted.
    op.execute(
        "UPDATE api_keys SET role = 'operator', revoked_at = coalesce(revoked_at, now())"
        " WHERE role = 'viewer'"
    )
    op.drop_constraint(op.f("ck_api_keys_role_known"), "api_keys", type_="check")
    op.create_check_constraint(op.f("ck_api_keys_role_known"), "api_keys", "role IN ('admin', 'operator')")
