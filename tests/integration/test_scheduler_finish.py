"""A mailing is finished only when none of its messages is open, even against a requeue running alongside."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler import store
from shared.domain.statuses import MailingStatus, MessageStatus

from .test_scheduler_helpers import add_client, add_mailing, mailing_status, set_mailing

pytestmark = pytest.mark.integration


async def _wait_for_a_lock_wait(engine: AsyncEngine, deadline_seconds: float = 10) -> None:
    """Until a backend of this database waits for a lock."""
    deadline = time.monotonic() + deadline_seconds
    async with engine.connect() as conn:
        while True:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            if waiting:
                return
            # pg_stat_activity is read once a transaction: the next look needs a new one.
            await conn.rollback()
            assert time.monotonic() < deadline, "nobody waited for the mailing's row"
            await asyncio.sleep(0.01)


async def test_a_requeue_committed_while_the_finish_waits_for_the_mailing_keeps_it_running(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC)
    client = await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, now - timedelta(minutes=1), now + timedelta(hours=1))
    await set_mailing(engine, mailing, f"status = {MailingStatus.RUNNING.sql}")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (mailing_id, client_id, status, not_before)"
                f" VALUES (:m, :c, {MessageStatus.FAILED.sql}, now())"
            ),
            {"m": mailing, "c": client},
        )

    async def finish() -> bool:
        async with engine.begin() as conn:
            return await store.finish_if_done(conn, mailing, (MailingStatus.RUNNING,))

    # What the API's requeue of parked messages does: the mailing's row locked, the failed message open again.
    async with engine.begin() as requeue:
        await requeue.execute(text("SELECT 1 FROM mailings WHERE id = :m FOR UPDATE"), {"m": mailing})
        await requeue.execute(
            text(f"UPDATE messages SET status = {MessageStatus.PENDING.sql} WHERE mailing_id = :m"),
            {"m": mailing},
        )
        finishing = asyncio.create_task(finish())
        await _wait_for_a_lock_wait(engine)
    assert not await finishing, "finished with a message open again"
    assert await mailing_status(engine, mailing) == MailingStatus.RUNNING
