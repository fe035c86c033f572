"""The sender's status write against real PostgreSQL: what a repeated write does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.sender.store import OutcomeRow, Store
from shared.db import make_engine
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
        rows = [
            OutcomeRow(given_back.message_id, given_back.token, "queued", attempts=given_back.attempts - 1),
            OutcomeRow(
                refused.message_id,
                refused.token,
                "retrying",
                last_error="http 401",
                next_attempt_at=retry_at,
                attempts=refused.attempts - 1,
            ),
        ]

        for _ in range(2):
            written = await store.write(rows)
            assert sorted((w.message_id, w.status, w.attempts) for w in written) == [
                (given_back.message_id, "queued", 0),
                (refused.message_id, "retrying", 0),
            ]
    finally:
        await store.close()
        await engine.dispose()

    statuses = await db.statuses(mailing)
    assert statuses[given_back.message_id][:2] == ("queued", 0)
    assert statuses[refused.message_id][:3] == ("retrying", 0, "http 401")
