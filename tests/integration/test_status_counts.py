"""The per-mailing status counts (migration 0007) against real PostgreSQL: after every kind of write on
`messages` (the scheduler's, the sender's, plain SQL, two senders at once) they equal a count of the
messages, and the API reads them."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.mailings_service import status_counts
from services.scheduler.planning import MailingPlan, plan_timezones
from services.scheduler.store import cancel_unmatched, claim_due, finalize_unfinished, insert_chunk
from services.sender import outcome
from services.sender.checks import Claim
from services.sender.outcome import Outcome
from services.sender.store import Store
from shared.db import make_engine
from shared.domain.statuses import MessageStatus
from shared.migrate import alembic_config
from shared.settings import CommonSettings

from .test_sender_support import Db

pytestmark = pytest.mark.integration

ZONES = ("Europe/Moscow", "Asia/Tokyo", "America/New_York")


async def assert_exact(db: Db) -> None:
    kept = await db.execute(
        "SELECT mailing_id, status, sum(count)::bigint FROM mailing_status_counts GROUP BY 1, 2"
        " HAVING sum(count) <> 0 ORDER BY 1, 2"
    )
    actual = await db.execute("SELECT mailing_id, status, count(*) FROM messages GROUP BY 1, 2 ORDER BY 1, 2")
    assert kept == actual


async def clients(db: Db, count: int, first: int = 1) -> None:
    """`count` clients, spread over three timezones, every other one tagged `even`."""
    await db.execute(
        "INSERT INTO clients (phone, operator_code, tag, timezone)"
        " SELECT (79000000000 + g)::text, '900', CASE WHEN g %% 2 = 0 THEN 'even' ELSE '' END,"
        " (%s::text[])[1 + g %% 3] FROM generate_series(%s::int, %s::int) AS g",
        (list(ZONES), first, first + count - 1),
    )


async def queued(db: Db, mailing_id: int) -> list[int]:
    rows = await db.execute(
        "SELECT id FROM messages WHERE mailing_id = %s AND status = 'queued' ORDER BY id", (mailing_id,)
    )
    return [int(r[0]) for r in rows]


async def test_plain_inserts_updates_deletes_and_truncate_keep_the_counts_exact(
    settings: CommonSettings,
) -> None:
    db = Db(settings.psycopg_dsn)
    first, second = await db.mailing(), await db.mailing()
    await clients(db, 300)
    await db.execute(
        "INSERT INTO messages (mailing_id, client_id, status, not_before, queued_at)"
        " SELECT CASE WHEN id %% 2 = 0 THEN %s ELSE %s END, id,"
        " (ARRAY['pending', 'queued', 'sent'])[1 + id %% 3], now(), now() FROM clients",
        (first, second),
    )
    await assert_exact(db)
    # One statement over both mailings, changing some statuses and not others.
    await db.execute("UPDATE messages SET status = 'retrying' WHERE status = 'queued' AND id %% 5 <> 0")
    await assert_exact(db)
    # No status changes: nothing to add, and nothing is written.
    before = await db.execute(
        "SELECT mailing_id, status, slot, count FROM mailing_status_counts ORDER BY 1, 2, 3"
    )
    await db.execute("UPDATE messages SET attempts = attempts + 1, updated_at = now()")
    after = await db.execute(
        "SELECT mailing_id, status, slot, count FROM mailing_status_counts ORDER BY 1, 2, 3"
    )
    assert after == before
    # A message moved to another mailing (nothing does it, the triggers still follow it).
    await db.execute(
        "UPDATE messages SET mailing_id = %s WHERE mailing_id = %s AND id %% 7 = 0", (first, second)
    )
    await assert_exact(db)
    # Nothing deletes messages today (mailings and clients are deleted softly); the counts follow anyway.
    await db.execute("DELETE FROM messages WHERE id %% 4 = 0")
    await assert_exact(db)
    await db.execute("TRUNCATE messages")
    assert await db.execute("SELECT count(*) FROM mailing_status_counts") == [(0,)]


async def test_the_scheduler_and_the_senders_writes_keep_the_counts_exact(settings: CommonSettings) -> None:
    db = Db(settings.psycopg_dsn)
    mailing_id = await db.mailing(end_in=timedelta(days=2))
    await clients(db, 600)
    engine = make_engine(settings)
    store = Store(engine, settings, settings.topology().send_queue)
    now = datetime.now(UTC)
    plan = MailingPlan(mailing_id, now - timedelta(minutes=1), now + timedelta(days=2), None, (), ())
    try:
        async with engine.begin() as conn:
            zones = plan_timezones(plan, ZONES, now)
            await insert_chunk(conn, plan, zones, now, None, after_client_id=0, limit=600, queue_first=0)
        await assert_exact(db)
        # A narrowed filter cancels the unmatched clients' unsent messages.
        narrowed = MailingPlan(plan.id, plan.start_at, plan.end_at, None, ("even",), ())
        async with engine.begin() as conn:
            assert await cancel_unmatched(conn, narrowed, now, None) == 300
        await assert_exact(db)
        async with engine.begin() as conn:
            assert len(await claim_due(conn, [mailing_id], now, 250)) == 250
        await assert_exact(db)

        ids = await queued(db, mailing_id)
        claims = await store.claim(ids, 60.0)
        assert len(claims) == 250
        sent, others = claims[:150], claims[150:]
        await store.write([outcome.sent(c, now) for c in sent])
        await assert_exact(db)
        statuses = (MessageStatus.RETRYING, MessageStatus.FAILED, MessageStatus.PENDING, MessageStatus.QUEUED)
        rows = [
            Outcome(
                c,
                statuses[n % 4],
                reason="boom",
                next_attempt_at=now + timedelta(seconds=5) if n % 4 == 0 else None,
                not_before=now + timedelta(hours=1) if n % 4 == 2 else None,
            )
            for n, c in enumerate(others)
        ]
        await store.write(rows)
        await assert_exact(db)

        # The end of the mailing, a chunk a transaction, as the scheduler does it.
        while True:
            async with engine.begin() as conn:
                chunk = await finalize_unfinished(conn, mailing_id, "expired", "ended", now, 40)
            await assert_exact(db)
            if len(chunk) < 40:
                break
        left = await db.execute(
            "SELECT count(*) FROM messages WHERE mailing_id = %s"
            " AND status IN ('pending', 'queued', 'retrying')",
            (mailing_id,),
        )
        assert left == [(0,)]
    finally:
        await store.close()
        await engine.dispose()


async def _write_batches(store: Store, claims: list[Claim], batch: int, now: datetime) -> None:
    for offset in range(0, len(claims), batch):
        part = claims[offset : offset + batch]
        if offset // batch % 3 == 2:
            await store.write([Outcome(c, MessageStatus.FAILED, reason="no") for c in part])
        else:
            await store.write([outcome.sent(c, now) for c in part])


async def _dispatch_held(dsn: str, mailing_id: int, rounds: int) -> None:
    """The scheduler's dispatch: pending rows to queued in a transaction held open for a while (it
    publishes with confirms before it commits)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for _ in range(rounds):
            await conn.execute(
                "WITH due AS (SELECT id FROM messages WHERE mailing_id = %s AND status = 'pending'"
                " LIMIT 50 FOR UPDATE SKIP LOCKED)"
                " UPDATE messages m SET status = 'queued', queued_at = now() FROM due WHERE m.id = due.id",
                (mailing_id,),
            )
            await asyncio.sleep(0.05)
            await conn.commit()


async def test_two_senders_and_a_dispatch_on_one_mailing_at_once_keep_the_counts_exact(
    settings: CommonSettings,
) -> None:
    db = Db(settings.psycopg_dsn)
    mailing_id, other = await db.mailing(), await db.mailing()
    await clients(db, 2400)
    await db.execute(
        "INSERT INTO messages (mailing_id, client_id, status, not_before, queued_at)"
        " SELECT %s, id, CASE WHEN id <= 2000 THEN 'queued' ELSE 'pending' END, now(), now() FROM clients",
        (mailing_id,),
    )
    # A second mailing in the same statements: each writer's upsert then takes rows of both.
    await db.execute(
        "INSERT INTO messages (mailing_id, client_id, status, not_before, queued_at)"
        " SELECT %s, id, 'queued', now(), now() FROM clients WHERE id <= 1000",
        (other,),
    )
    ids = await db.execute("SELECT id FROM messages WHERE status = 'queued' ORDER BY random()")
    engine = make_engine(settings)
    stores = [Store(engine, settings, "q.a"), Store(engine, settings, "q.b")]
    now = datetime.now(UTC)
    try:
        halves = [[int(r[0]) for r in ids[0::2]], [int(r[0]) for r in ids[1::2]]]
        claims = [await s.claim(h, 60.0) for s, h in zip(stores, halves, strict=True)]
        assert sum(map(len, claims)) == 3000
        for _ in range(2):  # the second time everything written is final: the writes match nothing
            async with asyncio.timeout(60):
                await asyncio.gather(
                    *(_write_batches(s, c, 100, now) for s, c in zip(stores, claims, strict=True)),
                    _dispatch_held(settings.psycopg_dsn, mailing_id, 8),
                )
            await assert_exact(db)
    finally:
        for store in stores:
            await store.close()
        await engine.dispose()


async def test_a_senders_write_does_not_wait_for_a_long_transaction_of_another_slot(
    settings: CommonSettings,
) -> None:
    # The scheduler's dispatch keeps its transaction (and its counter rows) until RabbitMQ confirms.
    db = Db(settings.psycopg_dsn)
    mailing_id = await db.mailing()
    await clients(db, 200)
    await db.execute(
        "INSERT INTO messages (mailing_id, client_id, status, not_before, queued_at)"
        " SELECT %s, id, 'queued', now(), now() FROM clients",
        (mailing_id,),
    )
    ids = await queued(db, mailing_id)
    source = await db.execute("SELECT prosrc FROM pg_proc WHERE proname = 'mailing_status_counts_updated'")
    found = re.search(r"pg_backend_pid\(\) % (\d+)", str(source[0][0]))
    assert found is not None
    slots = int(found.group(1))
    engine = make_engine(settings)
    store = Store(engine, settings, "q")
    holders: list[psycopg.AsyncConnection[tuple[Any, ...]]] = []
    try:
        claims = await store.claim(ids[:100], 60.0)
        writer = (await store._writes.fetch("SELECT pg_backend_pid()", {}))[0][0]
        while True:  # a backend whose pid falls in another slot than the writer's
            holder = await psycopg.AsyncConnection.connect(settings.psycopg_dsn)
            holders.append(holder)
            if holder.info.backend_pid % slots != writer % slots:
                break
        # Status changes of the same mailing (queued to retrying, as the writer's rows leave queued).
        await holder.execute("UPDATE messages SET status = 'retrying' WHERE id = ANY(%s)", (ids[100:],))
        async with asyncio.timeout(5):
            written = await store.write([outcome.sent(c, datetime.now(UTC)) for c in claims])
        assert len(written) == 100
        await holder.commit()
        await assert_exact(db)
    finally:
        for conn in holders:
            await conn.close()
        await store.close()
        await engine.dispose()


async def test_the_counts_are_read_summed_over_the_slots_with_every_status_present(
    settings: CommonSettings,
) -> None:
    db = Db(settings.psycopg_dsn)
    busy, idle = await db.mailing(), await db.mailing()
    await db.execute(
        "INSERT INTO mailing_status_counts (mailing_id, status, slot, count) VALUES"
        " (%s, 'pending', 0, 5), (%s, 'pending', 3, -2), (%s, 'sent', 3, 2), (%s, 'queued', 1, 0)",
        (busy, busy, busy, busy),
    )
    engine = make_engine(settings)
    try:
        async with AsyncSession(engine) as session:
            counts = await status_counts(session, [busy, idle])
            assert await status_counts(session, []) == {}
    finally:
        await engine.dispose()
    zeros = dict.fromkeys(("pending", "queued", "retrying", "sent", "failed", "expired", "cancelled"), 0)
    assert counts[busy].counts == {**zeros, "pending": 3, "sent": 2}
    assert counts[busy].total == 5
    assert (counts[idle].total, counts[idle].counts) == (0, zeros)


async def test_the_migration_counts_the_messages_already_there_and_goes_back(
    settings: CommonSettings,
) -> None:
    db = Db(settings.psycopg_dsn)
    config = alembic_config(settings.database_url)
    await asyncio.to_thread(command.downgrade, config, "0006")
    assert await db.execute("SELECT to_regclass('mailing_status_counts')") == [(None,)]
    mailing_id = await db.mailing()
    await clients(db, 90)
    await db.execute(
        "INSERT INTO messages (mailing_id, client_id, status, not_before)"
        " SELECT %s, id, (ARRAY['pending', 'sent', 'failed'])[1 + id %% 3], now() FROM clients",
        (mailing_id,),
    )
    await asyncio.to_thread(command.upgrade, config, "head")
    await assert_exact(db)
    rows: Any = await db.execute("SELECT status, count FROM mailing_status_counts ORDER BY 1")
    assert rows == [("failed", 30), ("pending", 30), ("sent", 30)]
    await db.execute("UPDATE messages SET status = 'sent' WHERE status = 'pending'")
    await assert_exact(db)
