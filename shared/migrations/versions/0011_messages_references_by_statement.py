"""messages: their mailing and client checked once a statement instead of once a row

The two foreign keys of `messages` checked every inserted row on its own: a query of `mailings` and one of
`clients` a row, each taking a row lock (FOR KEY SHARE) that writes the referenced row's page again. An
expansion inserts every client of a mailing, so it locked the mailing's row once for each message and
rewrote every page of `clients`: in PostgreSQL alone the INSERT of 100,000 messages took 1.8-2.0 s with
them and 0.8-1.1 s with one anti-join a statement (docs/benchmarks.md, "Where the end-to-end CPU goes").

Kept by triggers instead (foreign_key_violation, as the keys did):
- a statement that inserts messages fails when any of its rows names a mailing or a client that does not
  exist; so does an update that changes either column;
- a row of `mailings` or `clients` is never deleted: they are marked deleted (`deleted_at`), as the
  services have always done, and their messages keep their history. Refusing every DELETE, not only of
  the rows messages name, is what lets the insert check go without row locks: to see the messages of a
  transaction not yet committed, a delete would have had to lock `messages` against every writer until
  it committed, and one left open by hand would have held up all delivery;
- TRUNCATE of `mailings` or `clients` fails while `messages` has rows (it waits for the transactions
  that read them, the expansions among them, and then sees their messages).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 09:30:00

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FOREIGN_KEYS = {
    "fk_messages_mailing_id_mailings": ("mailing_id", "mailings"),
    "fk_messages_client_id_clients": ("client_id", "clients"),
}

_RAISE = "RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = "

_FUNCTIONS = {
    # One anti-join over the statement's rows (a statement-level trigger's transition table).
    "messages_references_inserted": f"""
    DECLARE bad record;
    BEGIN
        SELECT n.mailing_id, n.client_id INTO bad FROM new_rows AS n
        WHERE NOT EXISTS (SELECT 1 FROM mailings AS m WHERE m.id = n.mailing_id)
           OR NOT EXISTS (SELECT 1 FROM clients AS c WHERE c.id = n.client_id)
        LIMIT 1;
        IF FOUND THEN
            {_RAISE} format('message of mailing %s to client %s: no such mailing or client',
                bad.mailing_id, bad.client_id);
        END IF;
        RETURN NULL;
    END""",
    "messages_references_updated": f"""
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM mailings WHERE id = NEW.mailing_id)
           OR NOT EXISTS (SELECT 1 FROM clients WHERE id = NEW.client_id) THEN
            {_RAISE} format('message %s: no mailing %s or no client %s',
                NEW.id, NEW.mailing_id, NEW.client_id);
        END IF;
        RETURN NULL;
    END""",
    "messages_referenced_deleted": f"""
    BEGIN
        {_RAISE} format('%s rows are never deleted: mark them deleted (deleted_at)', TG_TABLE_NAME);
    END""",
    "messages_referenced_truncated": f"""
    BEGIN
        IF EXISTS (SELECT 1 FROM messages) THEN
            {_RAISE} format('%s is named by messages: truncate messages first', TG_TABLE_NAME);
        END IF;
        RETURN NULL;
    END""",
}

_TRIGGERS = {
    "messages_references_insert": (
        "messages",
        "AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
        " EXECUTE FUNCTION messages_references_inserted()",
    ),
    # Fires only for an UPDATE that sets either column, which no service does.
    "messages_references_update": (
        "messages",
        "AFTER UPDATE OF mailing_id, client_id ON messages FOR EACH ROW"
        " EXECUTE FUNCTION messages_references_updated()",
    ),
    **{
        f"{table}_messages_delete": (
            table,
            f"BEFORE DELETE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION messages_referenced_deleted()",
        )
        for _, table in _FOREIGN_KEYS.values()
    },
    **{
        f"{table}_messages_truncate": (
            table,
            f"BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION messages_referenced_truncated()",
        )
        for _, table in _FOREIGN_KEYS.values()
    },
}


def upgrade() -> None:
    for name, body in _FUNCTIONS.items():
        op.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $${body}\n$$")
    for name, (_, definition) in _TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition}")
    for name in _FOREIGN_KEYS:
        op.drop_constraint(name, "messages", type_="foreignkey")


def downgrade() -> None:
    for name, (column, table) in _FOREIGN_KEYS.items():
        op.create_foreign_key(name, "messages", table, [column], ["id"])
    for name, (table, _) in _TRIGGERS.items():
        op.execute(f"DROP TRIGGER {name} ON {table}")
    for name in _FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}()")
