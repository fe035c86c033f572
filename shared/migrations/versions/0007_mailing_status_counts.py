"""per-mailing message counts by status, kept by statement-level triggers on messages

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 12:30:00

Each statement on `messages` adds its net change per (mailing, status) to `mailing_status_counts`, one
upsert per statement, so the statistics read a few rows per mailing instead of counting its messages.
A writer adds to the rows of its own slot (its backend pid modulo SLOTS): two sessions changing the same
mailing at once rarely wait on the same row, and a transaction that holds its rows for long (the
scheduler publishes with confirms before it commits) holds up only the sessions that share its slot. A
slot's count may go below zero (a message counted as pending in one slot leaves pending in another);
readers sum the slots.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SLOTS = 8

# The upsert of one statement's deltas: rows locked in (mailing_id, status) order, so two statements
# never wait on each other's counters in a cycle.
_APPLY = """
    INSERT INTO mailing_status_counts AS c (mailing_id, status, slot, count)
    SELECT d.mailing_id, d.status, {slot}, d.delta FROM ({deltas}) AS d
    WHERE d.delta <> 0
    ORDER BY d.mailing_id, d.status
    ON CONFLICT (mailing_id, status, slot) DO UPDATE SET count = c.count + excluded.count
"""
_SLOT = f"(pg_backend_pid() % {SLOTS})::smallint"

_INSERTED = "SELECT mailing_id, status, count(*) AS delta FROM new_rows GROUP BY mailing_id, status"
_DELETED = "SELECT mailing_id, status, -count(*) AS delta FROM old_rows GROUP BY mailing_id, status"
# An update adds -1 for each old row and +1 for each new one, by (mailing, status): a row whose status
# (and mailing) did not change nets to zero, and a statement that changed no status (the sender's claim,
# a lease, a re-plan: most updates) writes nothing. Both transition tables hold the same rows, so no join
# by id is needed; aggregating them apart cost the sender's success write of 1,000 rows ~2% of its
# backend's CPU, against ~10% for the join (see docs/benchmarks.md). A WHEN clause is not allowed with
# transition tables.
_UPDATED = """
    SELECT mailing_id, status, sum(delta) AS delta FROM (
        SELECT mailing_id, status, -1 AS delta FROM old_rows
        UNION ALL SELECT mailing_id, status, 1 FROM new_rows
    ) AS changes GROUP BY mailing_id, status
"""

_FUNCTIONS = {
    "mailing_status_counts_inserted": _APPLY.format(slot=_SLOT, deltas=_INSERTED),
    "mailing_status_counts_updated": _APPLY.format(slot=_SLOT, deltas=_UPDATED),
    "mailing_status_counts_deleted": _APPLY.format(slot=_SLOT, deltas=_DELETED),
    # TRUNCATE fires no row or delete triggers: the counts go with the rows.
    "mailing_status_counts_truncated": "DELETE FROM mailing_status_counts",
}

_TRIGGERS = {
    "messages_counts_insert": "AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION mailing_status_counts_inserted()",
    "messages_counts_update": "AFTER UPDATE ON messages"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION mailing_status_counts_updated()",
    "messages_counts_delete": "AFTER DELETE ON messages REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION mailing_status_counts_deleted()",
    "messages_counts_truncate": "AFTER TRUNCATE ON messages FOR EACH STATEMENT"
    " EXECUTE FUNCTION mailing_status_counts_truncated()",
}


def upgrade() -> None:
    op.create_table(
        "mailing_status_counts",
        sa.Column("mailing_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("mailing_id", "status", "slot", name=op.f("pk_mailing_status_counts")),
        # Room on each page for the new versions of its rows: updates stay HOT (count is in no index).
        postgresql_with={"fillfactor": 50},
    )
    for name, body in _FUNCTIONS.items():
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body};\nRETURN NULL;\nEND\n$$"
        )
    # No write may slip between the triggers' start and the backfill: both happen under this lock.
    op.execute("LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
    for name, definition in _TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition}")
    op.execute(
        "INSERT INTO mailing_status_counts (mailing_id, status, slot, count)"
        " SELECT mailing_id, status, 0, count(*) FROM messages GROUP BY mailing_id, status"
    )


def downgrade() -> None:
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON messages")
    for name in _FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("mailing_status_counts")
