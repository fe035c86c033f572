"""messages: the insert check of 0011 as two anti-joins

0011 checked an insert's rows with one query, `NOT EXISTS (mailing) OR NOT EXISTS (client)`. An OR of two
sublinks is not turned into anti-joins: PostgreSQL ran both subqueries for each row, 29 ms for the 5,000
rows of an expansion's chunk, as long as the insert itself. Checked apart, the statement's few distinct
mailings first, then its clients in one anti-join, it takes 3-4 ms (docs/benchmarks.md, "Where the
end-to-end CPU goes"). The rules and the error are those of 0011.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 12:30:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RAISE = (
    "RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE ="
    " format('message of mailing %s to client %s: no such mailing or client', bad.mailing_id, bad.client_id);"
)

_ANTI_JOINS = f"""
    DECLARE bad record;
    BEGIN
        SELECT n.mailing_id, min(n.client_id) AS client_id INTO bad FROM new_rows AS n
        GROUP BY n.mailing_id
        HAVING NOT EXISTS (SELECT 1 FROM mailings AS m WHERE m.id = n.mailing_id)
        LIMIT 1;
        IF NOT FOUND THEN
            SELECT n.mailing_id, n.client_id INTO bad FROM new_rows AS n
            WHERE NOT EXISTS (SELECT 1 FROM clients AS c WHERE c.id = n.client_id)
            LIMIT 1;
        END IF;
        IF FOUND THEN
            {_RAISE}
        END IF;
        RETURN NULL;
    END"""

# 0011's body, for the downgrade.
_OR_OF_SUBLINKS = f"""
    DECLARE bad record;
    BEGIN
        SELECT n.mailing_id, n.client_id INTO bad FROM new_rows AS n
        WHERE NOT EXISTS (SELECT 1 FROM mailings AS m WHERE m.id = n.mailing_id)
           OR NOT EXISTS (SELECT 1 FROM clients AS c WHERE c.id = n.client_id)
        LIMIT 1;
        IF FOUND THEN
            {_RAISE}
        END IF;
        RETURN NULL;
    END"""


def _replace(body: str) -> None:
    op.execute(
        f"CREATE OR REPLACE FUNCTION messages_references_inserted() RETURNS trigger LANGUAGE plpgsql"
        f" AS $${body}\n$$"
    )


def upgrade() -> None:
    _replace(_ANTI_JOINS)


def downgrade() -> None:
    _replace(_OR_OF_SUBLINKS)
