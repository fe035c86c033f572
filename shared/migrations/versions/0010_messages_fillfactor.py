"""messages: room on each page for the sender's lease, so that write is a HOT update

A message is written four times on its way: inserted pending, queued by the scheduler, leased by the
sender, and given its outcome. The lease changes no indexed column, so PostgreSQL can keep the new row
version on the same page without touching the six indexes (a HOT update), but only if the page has
room; filled by bulk inserts to the default fillfactor of 100, it has none, and every write moves the
row to a new page. At 60 the lease costs the backend less than half the CPU, the four writes together
a quarter less WAL, and the table ends smaller, since old versions are pruned in place instead of left
behind on full pages (docs/benchmarks.md, "Where the end-to-end CPU goes"). Pages written before the
change keep their layout until rewritten.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 02:40:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLFACTOR = 60


def upgrade() -> None:
    op.execute(f"ALTER TABLE messages SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    op.execute("ALTER TABLE messages RESET (fillfactor)")
