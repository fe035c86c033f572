"""The sender's status write against real PostgreSQL: what a repeated write does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.sender.outcome import Outcome
from services.sender.store import Store
from shared.db import make_engine
from shared.domain.statuses import MessageStatus
from shared.settings import CommonSettings

from .test_sender_support import Db

pytestmark = pytest.mark.integration


async def test_a_status_write_repeated_after_a_lost_reply_leaves_the_same_row(
    settings: CommonSettings,
) -> None:
    # The writer retries a write whose reply it never got, though PostgreSQL may have committed it.
    db = Db(settings.psycopg_dsn)
    mailing = await db.mailing()
    items = await db.queued_messages(mailing, 2)
    engine = make_engine(settings)
    store = Store(engine, settings, settings.topology().send_queue)
    try:
        claims = {c.message_id: c for c in await store.claim([i.message_id for i in items], 60.0)}
        given_back, refused = (claims[i.message_id] for i in items)
        assert given_back.attempts == refused.attempts == 1
        retry_at = datetime.now(UTC) + timedelta(minutes=2)
        outcomes = [
            Outcome(given_back, MessageStatus.QUEUED, attempts=given_back.attempts - 1),
            Outcome(
                refused,
                MessageStatus.RETRYING,
                reason="http 401",
                next_attempt_at=retry_at,
                attempts=refused.attempts - 1,
            ),
        ]

        for _ in range(2):
            written = await store.write(outcomes)
            assert sorted((w.claim.message_id, w.status, w.attempts_after) for w in written) == [
                (given_back.message_id, "queued", 0),
                (refused.message_id, "retrying", 0),
            ]
    finally:
        await store.close()
        await engine.dispose()

    statuses = await db.statuses(mailing)
    assert statuses[given_back.message_id][:2] == ("queued", 0)
    assert statuses[refused.message_id][:3] == ("retrying", 0, "http 401")
