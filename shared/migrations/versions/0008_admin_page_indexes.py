"""outcomes counted per minute for the admin pages' charts and the daily report; indexes on clients for
the mailing filter's count and the client ids by phone

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:00:00

`report_outcome_minutes` holds, per (mailing, final status, minute), how many outcomes the reporter
recorded in that minute, kept by statement-level triggers on `report_outcomes` as 0007 keeps the status
counts: one upsert per statement, rows locked in key order. The send-rate chart of the last hour, a
mailing's sends over time and the daily report read at most a row per mailing, status and minute instead
of a row per message: their cost follows the time they cover, not how many messages were sent in it.
Nothing changes on `messages`: the sender's status updates stay as they are.

On `clients`, every update already changes `updated_at` (indexed), so new indexes cost no HOT updates:
one counts the clients a mailing filter matches from the index alone, the other gives the ids of every
client (deleted ones included, as a mailing's messages keep them) whose phone starts with some digits
from the index alone (`uq_clients_phone_live` holds the live ones only, and their ids are in the heap).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MINUTE = "date_bin(interval '1 minute', occurred_at, timestamptz 'epoch')"

_APPLY = """
    INSERT INTO report_outcome_minutes AS c (mailing_id, status, minute, count)
    SELECT d.mailing_id, d.status, d.minute, d.delta FROM ({deltas}) AS d
    WHERE d.delta <> 0
    ORDER BY d.mailing_id, d.status, d.minute
    ON CONFLICT (mailing_id, status, minute) DO UPDATE SET count = c.count + excluded.count
"""

_INSERTED = (
    f"SELECT mailing_id, status, {_MINUTE} AS minute, count(*) AS delta FROM new_rows GROUP BY 1, 2, 3"
)
_DELETED = (
    f"SELECT mailing_id, status, {_MINUTE} AS minute, -count(*) AS delta FROM old_rows GROUP BY 1, 2, 3"
)
_UPDATED = f"""
    SELECT mailing_id, status, minute, sum(delta) AS delta FROM (
        SELECT mailing_id, status, {_MINUTE} AS minute, -1 AS delta FROM old_rows
        UNION ALL SELECT mailing_id, status, {_MINUTE}, 1 FROM new_rows
    ) AS changes GROUP BY 1, 2, 3
"""

_FUNCTIONS = {
    "report_outcome_minutes_inserted": _APPLY.format(deltas=_INSERTED),
    "report_outcome_minutes_updated": _APPLY.format(deltas=_UPDATED),
    "report_outcome_minutes_deleted": _APPLY.format(deltas=_DELETED),
    "report_outcome_minutes_truncated": "DELETE FROM report_outcome_minutes",
}

_TRIGGERS = {
    "report_outcomes_minutes_insert": "AFTER INSERT ON report_outcomes REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION report_outcome_minutes_inserted()",
    "report_outcomes_minutes_update": "AFTER UPDATE ON report_outcomes"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION report_outcome_minutes_updated()",
    "report_outcomes_minutes_delete": "AFTER DELETE ON report_outcomes REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION report_outcome_minutes_deleted()",
    "report_outcomes_minutes_truncate": "AFTER TRUNCATE ON report_outcomes FOR EACH STATEMENT"
    " EXECUTE FUNCTION report_outcome_minutes_truncated()",
}


def upgrade() -> None:
    op.create_table(
        "report_outcome_minutes",
        sa.Column("mailing_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("mailing_id", "status", "minute", name=op.f("pk_report_outcome_minutes")),
    )
    op.create_index("ix_report_outcome_minutes_minute", "report_outcome_minutes", ["minute"])
    for name, body in _FUNCTIONS.items():
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body};\nRETURN NULL;\nEND\n$$"
        )
    # No outcome may slip between the triggers' start and the backfill: both happen under this lock.
    op.execute("LOCK TABLE report_outcomes IN SHARE ROW EXCLUSIVE MODE")
    for name, definition in _TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition}")
    op.execute(
        "INSERT INTO report_outcome_minutes (mailing_id, status, minute, count)"
        f" SELECT mailing_id, status, {_MINUTE}, count(*) FROM report_outcomes GROUP BY 1, 2, 3"
    )
    op.create_index(
        "ix_clients_live_tag_operator_code",
        "clients",
        ["tag", "operator_code"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index("ix_clients_phone_id", "clients", ["phone"], postgresql_include=["id"])


def downgrade() -> None:
    op.drop_index("ix_clients_phone_id", table_name="clients")
    op.drop_index("ix_clients_live_tag_operator_code", table_name="clients")
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON report_outcomes")
    for name in _FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("report_outcome_minutes")
