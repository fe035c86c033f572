"""The recovery sweep copies only what is lost, and a narrowed filter cancels every unsent message of the
clients it leaves out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.scheduler import Scheduler
from shared.contracts import SendMessages
from shared.domain.statuses import Reason

from .test_scheduler_helpers import (
    RecordingPublisher,
    add_client,
    add_mailing,
    make_scheduler,
    message_ids_of,
    messages,
    scheduler_settings,
    set_mailing,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)
AFTER = 60.0


async def consumed_through(engine: AsyncEngine, instant: datetime) -> None:
    """What a sender's claim records once it took a message that entered the send queue at `instant`."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO send_progress (queue, consumed_through) VALUES ('mailing.send', :t)"
                " ON CONFLICT (queue) DO UPDATE SET consumed_through = :t"
            ),
            {"t": instant},
        )


async def one_message_dispatched(engine: AsyncEngine) -> tuple[Scheduler, RecordingPublisher, list[int]]:
    """A scheduler (sweep margin AFTER) that has just dispatched the one message of a running mailing."""
    publisher = RecordingPublisher()
    scheduler = make_scheduler(
        engine, scheduler_settings(str(engine.url), requeue_after_seconds=AFTER), publisher
    )
    await add_client(engine, "Europe/Moscow")
    await add_mailing(engine, T0, T0 + timedelta(hours=5))
    await scheduler.tick(T0)
    return scheduler, publisher, publisher.take_sent()


async def test_a_message_waiting_behind_a_long_send_queue_is_not_copied_until_newer_ones_went_past(
    engine: AsyncEngine,
) -> None:
    scheduler, publisher, first = await one_message_dispatched(engine)
    publisher.ready = 30_000  # the send queue is long: the message may still be waiting its turn

    await scheduler.tick(T0 + timedelta(minutes=10))
    assert publisher.sent_ids == [], "no sender took anything yet: nothing is known lost"
    await consumed_through(engine, T0 + timedelta(seconds=AFTER - 1))
    await scheduler.tick(T0 + timedelta(minutes=11))
    assert publisher.sent_ids == [], "what went past was queued within the margin"

    await consumed_through(engine, T0 + timedelta(seconds=AFTER + 1))
    await scheduler.tick(T0 + timedelta(minutes=12))
    assert publisher.take_sent() == first
    await scheduler.tick(T0 + timedelta(minutes=13))
    assert publisher.sent_ids == [], "a copy once made is not made again"


async def test_a_retry_is_copied_only_once_its_delay_is_long_over_and_newer_messages_went_past(
    engine: AsyncEngine,
) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(
        engine, scheduler_settings(str(engine.url), requeue_after_seconds=AFTER), publisher
    )
    client = await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=5))
    await scheduler.tick(T0)
    publisher.take_sent()
    retry_at = T0 + timedelta(minutes=5)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE messages SET status = 'retrying', attempts = 1, next_attempt_at = :at WHERE id = :id"
            ),
            {"at": retry_at, "id": (await message_ids_of(engine, mailing))[client]},
        )
    publisher.ready = 100
    await consumed_through(engine, T0 + timedelta(minutes=4))

    await scheduler.tick(T0 + timedelta(minutes=3))
    assert publisher.sent_ids == [], "its delay has not even ended"
    await scheduler.tick(T0 + timedelta(minutes=20))
    assert publisher.sent_ids == [], "its own copy may still be in the queue"
    await consumed_through(engine, retry_at + timedelta(seconds=AFTER + 1))
    await scheduler.tick(T0 + timedelta(minutes=21))
    assert publisher.take_sent() == [(await message_ids_of(engine, mailing))[client]]


async def test_a_narrowed_filter_cancels_every_unsent_message_it_leaves_out_but_one_a_sender_holds(
    engine: AsyncEngine,
) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    kept = await add_client(engine, "Europe/Moscow", code="900")
    dropped = {
        state: await add_client(engine, "Europe/Moscow", code="901")
        for state in ("queued", "retrying", "held")
    }
    late = await add_client(engine, "Europe/Moscow", code="901")
    mailing = await add_mailing(engine, T0, T0 + timedelta(days=2), codes=("900", "901"))
    await scheduler.tick(T0)
    ids = await message_ids_of(engine, mailing)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE messages SET status = 'pending', not_before = :nb WHERE id = :id"),
            {"nb": T0 + timedelta(hours=1), "id": ids[late]},
        )
        await conn.execute(
            text("UPDATE messages SET status = 'retrying', next_attempt_at = :at WHERE id = :id"),
            {"at": T0 + timedelta(minutes=1), "id": ids[dropped["retrying"]]},
        )
        await conn.execute(
            text("UPDATE messages SET lease_until = now() + interval '1 hour' WHERE id = :id"),
            {"id": ids[dropped["held"]]},
        )
    publisher.events.clear()

    await set_mailing(engine, mailing, "filter_operator_codes = '{900}'")
    await scheduler.process_mailing(mailing, T0 + timedelta(seconds=30))

    rows = await messages(engine, mailing)
    for client in (dropped["queued"], dropped["retrying"], late):
        assert (rows[client][0], rows[client][2]) == ("cancelled", Reason.CLIENT_NO_LONGER_MATCHES)
    assert rows[dropped["held"]][0] == "queued", "a sender holds it: its own check cancels it"
    assert rows[kept][0] == "queued"
    cancelled = {o.message_id for e in publisher.events for o in e.outcomes if o.status == "cancelled"}
    assert cancelled == {ids[dropped["queued"]], ids[dropped["retrying"]], ids[late]}


class CommitCheckingPublisher(RecordingPublisher):
    """Looks, from a connection of its own, at what a sender's claim would see when the delivery lands."""

    def __init__(self, engine: AsyncEngine, *, fail: bool = False) -> None:
        super().__init__()
        self.engine = engine
        self.fail = fail
        self.seen: list[str] = []

    async def send(self, commands: Sequence[SendMessages]) -> None:
        ids = [item.message_id for command in commands for item in command.messages]
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT DISTINCT status FROM messages WHERE id = ANY(CAST(:ids AS bigint[]))"),
                {"ids": ids},
            )
            self.seen += list(result.scalars())
        if self.fail:
            raise ConnectionError("the broker went away")
        await super().send(commands)


async def test_a_dispatched_message_is_queued_for_every_other_connection_before_its_delivery_goes_out(
    engine: AsyncEngine,
) -> None:
    publisher = CommitCheckingPublisher(engine)
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    for _ in range(3):
        await add_client(engine, "Europe/Moscow")
    await add_mailing(engine, T0, T0 + timedelta(hours=5))

    await scheduler.tick(T0)

    assert len(publisher.sent_ids) == 3
    assert publisher.seen == ["queued"]


async def test_messages_whose_publish_failed_go_back_to_pending_and_out_on_the_next_tick(
    engine: AsyncEngine,
) -> None:
    publisher = CommitCheckingPublisher(engine, fail=True)
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    client = await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=5))

    with pytest.raises(ConnectionError):
        await scheduler.tick(T0)
    assert (await messages(engine, mailing))[client][0] == "pending"

    publisher.fail = False
    await scheduler.tick(T0 + timedelta(seconds=2))
    assert publisher.sent_ids == [(await message_ids_of(engine, mailing))[client]]


async def test_messages_a_sender_holds_back_behind_its_open_breaker_are_not_copied(
    engine: AsyncEngine,
) -> None:
    scheduler, publisher, first = await one_message_dispatched(engine)
    later = T0 + timedelta(
        minutes=5
    )  # nothing claimed since, and the queue is empty: the delivery is prefetched
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO sender_health (instance, circuit_state, calls_in_flight, fenced, reported_at)"
                " VALUES ('s:1', 2, 0, false, :at)"
            ),
            {"at": later - timedelta(seconds=3)},
        )

    await scheduler.tick(later)
    assert publisher.sent_ids == [], "its sender waits for its breaker, the delivery in hand"
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE sender_health SET circuit_state = 0, reported_at = :at"), {"at": later}
        )
    await scheduler.tick(later + timedelta(seconds=2))
    assert publisher.take_sent() == first, "every sender is idle and claims nothing: the message is lost"


@pytest.mark.parametrize("status", ["queued", "retrying"])
async def test_the_database_refuses_a_message_in_flight_without_the_time_it_was_queued(
    engine: AsyncEngine, status: str
) -> None:
    # The sweep's condition starts from queued_at: such a message would never be found lost.
    client = await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=5))
    with pytest.raises(IntegrityError, match="ck_messages_in_flight_queued_at"):
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO messages (mailing_id, client_id, status, not_before)"
                    " VALUES (:m, :c, :s, now())"
                ),
                {"m": mailing, "c": client, "s": status},
            )
