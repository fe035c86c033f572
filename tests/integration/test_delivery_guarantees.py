"""Each fix of the delivery guarantees on its own, against real PostgreSQL: fenced claims, copies that come
too early, the consumption watermark, a frozen connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.chaos import FreezingProxy
from services.sender import outcome
from services.sender.bootstrap import HealthReport
from services.sender.breaker import BreakerConfig, BreakerState, CircuitBreaker
from services.sender.outcome import Outcome
from services.sender.service import Sender
from services.sender.store import Store
from shared.db import make_engine
from shared.domain.statuses import MessageStatus, Reason
from shared.messages import cancel_open_messages
from shared.models import Message
from shared.settings import CommonSettings

from .test_sender_support import Db

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings)
    yield engine
    await engine.dispose()


async def expire_leases(db: Db, mailing_id: int) -> None:
    """What the passing of a whole lease does, without waiting for it."""
    await db.execute(
        "UPDATE messages SET lease_until = now() - interval '1 second' WHERE mailing_id = %s", (mailing_id,)
    )


async def test_a_stale_claim_can_neither_overwrite_nor_release_the_claim_that_took_over(
    db: Db, store: Store
) -> None:
    mailing = await db.mailing()
    sent, given_back = await db.queued_messages(mailing, 2)
    ids = [sent.message_id, given_back.message_id]
    stale = {c.message_id: c for c in await store.claim(ids, 60.0)}
    await expire_leases(db, mailing)
    current = {c.message_id: c for c in await store.claim(ids, 60.0)}
    assert {c.token for c in stale.values()}.isdisjoint({c.token for c in current.values()})

    stale_sent = stale[sent.message_id]
    assert await store.write([outcome.sent(stale_sent, datetime.now(UTC))]) == []
    stale_back = stale[given_back.message_id]
    assert await store.write([Outcome(stale_back, MessageStatus.QUEUED, attempts=0)]) == []

    rows = await db.statuses(mailing)
    assert all(row[0] == "queued" and row[1] == 2 and row[5] is not None for row in rows.values()), rows
    holder = current[sent.message_id]
    (written,) = await store.write([outcome.sent(holder, datetime.now(UTC))])
    assert written.claim.message_id == sent.message_id
    assert (await db.statuses(mailing))[sent.message_id][0] == "sent"


async def test_a_copy_that_comes_before_its_retry_delay_ends_is_dropped_without_spending_an_attempt(
    db: Db, store: Store
) -> None:
    mailing = await db.mailing()
    (item,) = await db.queued_messages(mailing, 1)
    await db.execute(
        "UPDATE messages SET status = 'retrying', attempts = 1, next_attempt_at = now() + interval '1 minute'"
        " WHERE id = %s",
        (item.message_id,),
    )
    assert await store.claim([item.message_id], 60.0) == []
    assert (await db.statuses(mailing))[item.message_id][:2] == ("retrying", 1)

    await db.execute("UPDATE messages SET next_attempt_at = now() WHERE id = %s", (item.message_id,))
    (claim,) = await store.claim([item.message_id], 60.0)
    assert claim.attempts == 2


async def test_a_claim_records_how_far_the_send_queue_was_consumed(
    db: Db, store: Store, settings: CommonSettings
) -> None:
    mailing = await db.mailing()
    older, newer = await db.queued_messages(mailing, 2)
    queued_at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    for n, item in enumerate((older, newer)):
        await db.execute(
            "UPDATE messages SET queued_at = %s WHERE id = %s",
            (queued_at + timedelta(minutes=n), item.message_id),
        )
    queue = settings.topology().send_queue

    async def consumed_through() -> datetime:
        rows = await db.execute("SELECT consumed_through FROM send_progress WHERE queue = %s", (queue,))
        value: datetime = rows[0][0]
        return value

    await store.claim([newer.message_id], 60.0)
    assert await consumed_through() == queued_at + timedelta(minutes=1)
    await store.claim([older.message_id], 60.0)
    assert await consumed_through() == queued_at + timedelta(minutes=1), "the watermark never goes back"


async def test_a_frozen_database_connection_fails_the_statement_within_its_deadline(
    database_url: str, amqp_namespace: str, db: Db
) -> None:
    mailing = await db.mailing()
    (item,) = await db.queued_messages(mailing, 1)
    proxy = FreezingProxy(5432)
    await proxy.start()
    try:
        settings = CommonSettings(
            database_url=database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"),
            amqp_namespace=amqp_namespace,
            db_statement_timeout_seconds=0.5,
            db_connect_timeout_seconds=2,
            _env_file=None,
        )
        engine = make_engine(settings)
        store = Store(engine, settings, "frozen.send")
        try:
            (held,) = await store.claim([item.message_id], 60.0)
            assert held.message_id == item.message_id
            # Both of the store's connections are open (a write under another token changes nothing).
            other_claim = outcome.sent(held._replace(token=0), datetime.now(UTC))
            assert await store.write([other_claim]) == []
            proxy.freeze()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await store.write([other_claim])
            # The client's deadline (statement timeout + 5 s), then psycopg's own cancel request and its
            # wait for the server (5 s each) before it drops the connection.
            assert time.monotonic() - started < settings.db_deadline_seconds + 12
            proxy.unfreeze()
            await expire_leases(db, mailing)
            (claim,) = await asyncio.wait_for(store.claim([item.message_id], 60.0), 15)
            assert claim.attempts == 2
        finally:
            await store.close()
            await engine.dispose()
    finally:
        await proxy.stop()


async def test_a_sender_reports_its_circuit_and_fence_for_the_dashboard(engine: AsyncEngine, db: Db) -> None:
    breaker = CircuitBreaker(BreakerConfig(min_calls=1, window=1), time.monotonic)
    fence = [False]
    sender = SimpleNamespace(calls_in_flight=4, check_fence=lambda: fence[0])
    health = HealthReport("host:42", breaker, cast(Sender, sender))
    await health.write(engine, retry_queued=3, parked_queued=None)
    breaker.record(False)  # one failure in a window of one: open
    fence[0] = True
    await health.write(engine, retry_queued=5, parked_queued=1)

    rows = await db.execute(
        "SELECT instance, circuit_state, calls_in_flight, fenced, retry_queued, parked_queued"
        " FROM sender_health"
    )
    assert rows == [("host:42", int(BreakerState.OPEN), 4, True, 5, 1)]


async def test_every_database_connection_gives_up_on_an_unacknowledged_statement_at_the_deadline(
    engine: AsyncEngine, settings: CommonSettings
) -> None:
    # A vanished database host is found by TCP keepalives only while nothing waits for an acknowledgement;
    # libpq's tcp_user_timeout covers a statement under way (docs/reliability.md).
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        parameters = raw.driver_connection.info.get_parameters()  # type: ignore[union-attr]
    assert parameters["tcp_user_timeout"] == str(int(settings.db_deadline_seconds * 1000))
    assert parameters["keepalives_idle"] == "10"


async def test_a_repeated_write_does_not_take_a_message_another_service_ended_after_the_lease(
    db: Db, store: Store, engine: AsyncEngine
) -> None:
    mailing = await db.mailing()
    (item,) = await db.queued_messages(mailing, 1)
    (claim,) = await store.claim([item.message_id], 60.0)
    await expire_leases(db, mailing)
    async with engine.begin() as conn:  # the mailing cancelled meanwhile: the API ends its open messages
        await conn.execute(
            cancel_open_messages(Message.id == claim.message_id, Reason.MAILING_CANCELLED, datetime.now(UTC))
        )
    # The sender's writer repeating a write of the same outcome, whose first try it never heard back from.
    mine = Outcome(claim, MessageStatus.CANCELLED, reason=Reason.MAILING_CANCELLED)
    assert await store.write([mine], repeat=True) == []
