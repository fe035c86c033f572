"""The sender's status write against real PostgreSQL: what a repeated write does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.sender.outcome import Outcome
from services.sender.store import Store
from shared.domain.statuses import MessageStatus
from shared.settings import CommonSettings

from .test_sender_support import Db

pytestmark = pytest.mark.integration


async def test_a_status_write_repeated_after_a_lost_reply_leaves_the_same_row(
    settings: CommonSettings, store: Store
) -> None:
    # The writer retries a write whose reply it never got, though PostgreSQL may have committed it.
    db = Db(settings.psycopg_dsn)
    mailing = await db.mailing()
    items = await db.queued_messages(mailing, 2)
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

    statuses = await db.statuses(mailing)
    assert statuses[given_back.message_id][:2] == ("queued", 0)
    assert statuses[refused.message_id][:3] == ("retrying", 0, "http 401")


async def test_a_final_write_repeated_after_a_lost_reply_counts_as_written_for_its_own_claim_only(
    settings: CommonSettings, store: Store
) -> None:
    # Its first try committed: a repeat that found nothing to write would drop the outcomes (no event,
    # no parking-lot copy, the metrics short), though this claim wrote them.
    db = Db(settings.psycopg_dsn)
    mailing = await db.mailing()
    items = await db.queued_messages(mailing, 3)
    claims = {c.message_id: c for c in await store.claim([i.message_id for i in items], 60.0)}
    delivered, failed, other = (claims[i.message_id] for i in items)
    outcomes = [
        Outcome(delivered, MessageStatus.SENT, sent_at=datetime.now(UTC)),
        Outcome(failed, MessageStatus.FAILED, reason="http 400"),
    ]
    expected = sorted((o.claim.message_id, o.status) for o in outcomes)
    for repeat in (False, True):
        written = await store.write(outcomes, repeat=repeat)
        assert sorted((w.claim.message_id, w.status) for w in written) == expected
    # Only a repeat takes a final row, and only with its own status and its own claim's token.
    assert await store.write(outcomes) == []
    late = Outcome(delivered, MessageStatus.FAILED, reason="late")
    assert await store.write([late], repeat=True) == []
    await store.write([Outcome(other, MessageStatus.SENT, sent_at=datetime.now(UTC))])
    stranger = other._replace(token=other.token + 1)  # a claim that never held the message
    repeated = Outcome(stranger, MessageStatus.SENT, sent_at=datetime.now(UTC))
    assert await store.write([repeated], repeat=True) == []

    statuses = await db.statuses(mailing)
    assert statuses[delivered.message_id][0] == "sent"
    assert statuses[failed.message_id][0] == "failed"


async def test_the_lease_keeps_a_bulk_inserted_message_on_its_page(
    settings: CommonSettings, store: Store
) -> None:
    # The scheduler inserts a mailing's messages in bulk; the sender's lease changes no indexed column.
    # With room left on each page (migration 0010) the leased row stays where it was, a HOT update that
    # touches none of the table's indexes; on full pages every one would move and be indexed anew. One
    # statement of 400 leases fills that room before any old version can be pruned: 235 stay here.
    db = Db(settings.psycopg_dsn)
    mailing = await db.mailing()
    rows = await db.execute(
        "WITH c AS (INSERT INTO clients (phone, operator_code, timezone)"
        "  SELECT (79500000000 + n)::text, '950', 'UTC' FROM generate_series(1, 400) AS n RETURNING id)"
        " INSERT INTO messages (mailing_id, client_id, status, not_before, queued_at)"
        " SELECT %s, id, 'queued', now(), now() FROM c RETURNING id, (ctid::text::point)[0]",
        (mailing,),
    )
    pages_before = {int(row[0]): int(row[1]) for row in rows}
    claims = await store.claim(sorted(pages_before), 60.0)
    assert len(claims) == len(pages_before)

    after = await db.execute(
        "SELECT id, (ctid::text::point)[0] FROM messages WHERE id = ANY(%s)", (sorted(pages_before),)
    )
    stayed = [int(row[0]) for row in after if int(row[1]) == pages_before[int(row[0])]]
    assert len(set(pages_before.values())) > 1  # the batch spans several pages
    assert len(stayed) > len(after) / 2
