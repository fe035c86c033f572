"""A message names an existing mailing and client (migration 0011's triggers, in place of foreign keys)
against real PostgreSQL: bad inserts and updates are refused, mailings and clients are never deleted, nor
truncated while messages name them, and the migration goes back."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from alembic import command
from psycopg import errors

from shared.migrate import alembic_config
from shared.settings import CommonSettings

from .test_sender_support import Db

pytestmark = pytest.mark.integration


async def message(db: Db, mailing_id: int, client_id: int) -> int:
    rows = await db.execute(
        "INSERT INTO messages (mailing_id, client_id, not_before) VALUES (%s, %s, now()) RETURNING id",
        (mailing_id, client_id),
    )
    return int(rows[0][0])


async def test_a_statement_naming_a_missing_mailing_or_client_is_refused_whole(
    settings: CommonSettings,
) -> None:
    db = Db(settings.psycopg_dsn)
    mailing_id, client_id = await db.mailing(), await db.client("79000000001")
    with pytest.raises(errors.ForeignKeyViolation, match="no such mailing or client"):
        await db.execute(
            "INSERT INTO messages (mailing_id, client_id, not_before)"
            " VALUES (%s, %s, now()), (%s, %s, now())",
            (mailing_id, client_id, mailing_id, client_id + 1000),
        )
    with pytest.raises(errors.ForeignKeyViolation):
        await message(db, mailing_id + 1000, client_id)
    assert await db.execute("SELECT count(*) FROM messages") == [(0,)]
    await message(db, mailing_id, client_id)
    assert await db.execute("SELECT count(*) FROM messages") == [(1,)]


async def test_an_update_may_not_point_a_message_elsewhere_than_an_existing_row(
    settings: CommonSettings,
) -> None:
    db = Db(settings.psycopg_dsn)
    mailing_id, first, second = (
        await db.mailing(),
        await db.client("79000000001"),
        await db.client("79000000002"),
    )
    message_id = await message(db, mailing_id, first)
    with pytest.raises(errors.ForeignKeyViolation, match=f"message {message_id}"):
        await db.execute("UPDATE messages SET client_id = %s WHERE id = %s", (second + 1000, message_id))
    await db.execute("UPDATE messages SET client_id = %s WHERE id = %s", (second, message_id))
    assert await db.execute("SELECT client_id FROM messages") == [(second,)]


async def test_mailings_and_clients_are_never_deleted_only_marked(settings: CommonSettings) -> None:
    db = Db(settings.psycopg_dsn)
    mailing_id, named, unnamed = (
        await db.mailing(),
        await db.client("79000000001"),
        await db.client("79000000002"),
    )
    await message(db, mailing_id, named)
    for table, row in (("clients", named), ("clients", unnamed), ("mailings", mailing_id)):
        with pytest.raises(errors.ForeignKeyViolation, match=f"{table} rows are never deleted"):
            await db.execute(f"DELETE FROM {table} WHERE id = %s", (row,))
    for table in ("clients", "mailings"):
        with pytest.raises(errors.ForeignKeyViolation, match="truncate messages first"):
            await db.execute(f"TRUNCATE {table}")
    assert await db.execute("SELECT count(*) FROM clients") == [(2,)]
    assert await db.execute("SELECT count(*) FROM mailings") == [(1,)]
    await db.execute("TRUNCATE messages")
    await db.execute("TRUNCATE clients, mailings")
    assert await db.execute("SELECT count(*) FROM clients") == [(0,)]


async def test_a_truncate_waits_for_an_expansion_reading_clients_and_then_sees_its_messages(
    settings: CommonSettings,
) -> None:
    """Without the wait, the truncate would not see the uncommitted messages and would leave them without
    their clients once they commit."""
    db = Db(settings.psycopg_dsn)
    mailing_id = await db.mailing()
    await db.client("79000000001")
    async with await psycopg.AsyncConnection.connect(settings.psycopg_dsn) as writer:
        await writer.execute(
            "INSERT INTO messages (mailing_id, client_id, not_before) SELECT %s, id, now() FROM clients",
            (mailing_id,),
        )
        async with await psycopg.AsyncConnection.connect(settings.psycopg_dsn, autocommit=True) as other:
            await other.execute("SET lock_timeout = '200ms'")
            with pytest.raises(errors.LockNotAvailable):
                await other.execute("TRUNCATE clients")
            await writer.commit()
            with pytest.raises(errors.ForeignKeyViolation):
                await other.execute("TRUNCATE clients")
    assert await db.execute("SELECT count(*) FROM messages m JOIN clients c ON c.id = m.client_id") == [(1,)]


async def test_the_migration_goes_back_to_the_foreign_keys(settings: CommonSettings) -> None:
    db = Db(settings.psycopg_dsn)
    config = alembic_config(settings.database_url)
    keys = (
        "SELECT conname FROM pg_constraint WHERE conrelid = 'messages'::regclass AND contype = 'f' ORDER BY 1"
    )
    triggers = (
        "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
        " WHERE p.proname LIKE 'messages_refer%%'"
    )
    assert await db.execute(keys) == []
    await asyncio.to_thread(command.downgrade, config, "0010")
    assert await db.execute(keys) == [
        ("fk_messages_client_id_clients",),
        ("fk_messages_mailing_id_mailings",),
    ]
    assert await db.execute(triggers) == [(0,)]
    await asyncio.to_thread(command.upgrade, config, "head")
    assert await db.execute(keys) == []
    assert await db.execute(triggers) == [(6,)]
