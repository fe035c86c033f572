from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING

import pytest
from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.scheduler import store as scheduler_store
from shared.contracts import MessagesFinalized

from .test_scheduler_helpers import (
    RecordingPublisher,
    add_client,
    add_mailing,
    mailing_status,
    make_scheduler,
    message_ids_of,
    messages,
    scheduler_settings,
    set_mailing,
)

if TYPE_CHECKING:
    from loguru import Record

pytestmark = pytest.mark.integration

T0 = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)


async def test_mailing_created_inside_its_period_starts_at_once(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    clients = [await add_client(engine, "Europe/Moscow") for _ in range(3)]
    mailing = await add_mailing(engine, T0 - timedelta(hours=1), T0 + timedelta(hours=5))

    await scheduler.tick(T0)

    assert await mailing_status(engine, mailing) == "running"
    ids = await message_ids_of(engine, mailing)
    assert sorted(publisher.sent_ids) == sorted(ids[c] for c in clients)
    assert {status for status, _, _ in (await messages(engine, mailing)).values()} == {"queued"}


async def test_every_dispatched_message_has_a_log_line_of_its_own_with_its_ids(engine: AsyncEngine) -> None:
    # Requirement 12: a message's (and a client's) story is found in the logs by its id.
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    clients = [await add_client(engine, "Europe/Moscow") for _ in range(3)]
    mailing = await add_mailing(engine, T0 - timedelta(hours=1), T0 + timedelta(hours=5))
    records: list[Record] = []
    sink = logger.add(lambda m: records.append(m.record), level="INFO")
    try:
        await scheduler.tick(T0)
    finally:
        logger.remove(sink)

    ids = await message_ids_of(engine, mailing)
    handed = [r["extra"] for r in records if r["message"] == "message handed to the sender"]
    assert sorted((e["mailing_id"], e["message_id"], e["client_id"]) for e in handed) == sorted(
        (mailing, ids[c], c) for c in clients
    )


async def test_future_mailing_starts_at_its_start_even_after_a_restart(engine: AsyncEngine) -> None:
    settings = scheduler_settings(str(engine.url))
    client = await add_client(engine, "Asia/Vladivostok")
    mailing = await add_mailing(engine, T0 + timedelta(hours=2), T0 + timedelta(hours=6))
    first = RecordingPublisher()
    await make_scheduler(engine, settings, first).tick(T0)
    assert await mailing_status(engine, mailing) == "scheduled"
    assert await messages(engine, mailing) == {}

    restarted = RecordingPublisher()
    scheduler = make_scheduler(engine, settings, restarted)
    await scheduler.tick(T0 + timedelta(hours=2) - timedelta(seconds=1))
    assert restarted.sent_ids == []
    await scheduler.tick(T0 + timedelta(hours=2))
    assert await mailing_status(engine, mailing) == "running"
    assert restarted.sent_ids == [(await message_ids_of(engine, mailing))[client]]


@pytest.mark.parametrize(
    ("tz", "window", "start", "expected_first_send"),
    [
        # 09:00-21:00 local; 06:00 UTC is 09:00 in Moscow (UTC+3).
        ("Europe/Moscow", (time(9), time(21)), T0 - timedelta(hours=1), T0),
        # Vladivostok is UTC+10: 06:00 UTC is 16:00, past a 09:00-15:00 window; next 23:00 UTC.
        ("Asia/Vladivostok", (time(9), time(15)), T0, datetime(2026, 6, 1, 23, 0, tzinfo=UTC)),
        # Kaliningrad is UTC+2: 06:00 UTC is 08:00, the window opens at 10:00 local = 08:00 UTC.
        ("Europe/Kaliningrad", (time(10), time(18)), T0, T0 + timedelta(hours=2)),
        # A window across midnight, 22:00-06:00 Moscow: opens at 19:00 UTC.
        ("Europe/Moscow", (time(22), time(6)), T0, datetime(2026, 6, 1, 19, 0, tzinfo=UTC)),
    ],
)
async def test_nothing_is_dispatched_outside_the_clients_window(
    engine: AsyncEngine, tz: str, window: tuple[time, time], start: datetime, expected_first_send: datetime
) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    client = await add_client(engine, tz)
    mailing = await add_mailing(engine, start, T0 + timedelta(days=3), window=window)

    at = max(start, T0)
    while at < expected_first_send:
        await scheduler.tick(at)
        assert publisher.sent_ids == [], f"dispatched at {at}"
        at += timedelta(minutes=30)
    await scheduler.tick(expected_first_send)
    assert publisher.sent_ids == [(await message_ids_of(engine, mailing))[client]]
    status, not_before, _ = (await messages(engine, mailing))[client]
    assert (status, not_before) == ("queued", expected_first_send)


async def test_berlin_window_follows_the_daylight_saving_change(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    client = await add_client(engine, "Europe/Berlin")
    # Berlin goes from UTC+1 to UTC+2 at 01:00 UTC on 29 March 2026; 09:00 local is then 07:00 UTC.
    start = datetime(2026, 3, 28, 20, 0, tzinfo=UTC)
    mailing = await add_mailing(engine, start, start + timedelta(days=2), window=(time(9), time(12)))
    await scheduler.tick(start)
    await scheduler.tick(datetime(2026, 3, 29, 6, 59, tzinfo=UTC))
    assert publisher.sent_ids == []
    await scheduler.tick(datetime(2026, 3, 29, 7, 0, tzinfo=UTC))
    assert publisher.sent_ids == [(await message_ids_of(engine, mailing))[client]]


async def test_a_client_without_an_opening_before_the_end_is_expired_with_a_reason(
    engine: AsyncEngine,
) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    late = await add_client(engine, "Asia/Vladivostok")
    fine = await add_client(engine, "Europe/Moscow")
    # 06:00-08:00 UTC: 09:00-11:00 in Moscow, 16:00-18:00 in Vladivostok (outside 09:00-15:00).
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=2), window=(time(9), time(15)))
    await scheduler.tick(T0)

    rows = await messages(engine, mailing)
    assert rows[late][0] == "expired"
    assert rows[late][2] == "no window opening before the mailing ends"
    assert rows[fine][0] == "queued"
    outcomes = [o for event in publisher.events for o in event.outcomes]
    assert [(o.client_id, o.status) for o in outcomes] == [(late, "expired")]


class CommittedFirstPublisher(RecordingPublisher):
    """Records, for each outcome event, how many of its messages another connection already sees in
    their final status: an outcome published before its commit could be rolled back after."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__()
        self.engine = engine
        self.seen: list[tuple[int, int]] = []  # (outcomes, of them committed as published)

    async def finalized(self, events: Sequence[MessagesFinalized]) -> None:
        await super().finalized(events)
        pairs = [(o.message_id, o.status) for event in events for o in event.outcomes]
        async with self.engine.connect() as conn:
            committed = await conn.scalar(
                text(
                    "SELECT count(*) FROM messages m JOIN unnest(CAST(:ids AS bigint[]), CAST(:st AS text[]))"
                    " AS p(id, status) ON p.id = m.id AND p.status = m.status"
                ),
                {"ids": [i for i, _ in pairs], "st": [str(st) for _, st in pairs]},
            )
        self.seen.append((len(pairs), int(committed or 0)))


async def test_every_outcome_the_scheduler_publishes_is_committed_first(engine: AsyncEngine) -> None:
    publisher = CommittedFirstPublisher(engine)
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    await add_client(engine, "Asia/Vladivostok", tag="a")  # no opening before the end: expired at once
    waiting = await add_client(engine, "Europe/Moscow", tag="a")  # waits for 09:00 Moscow
    dropped = await add_client(engine, "Europe/Moscow", tag="b")
    # 06:00-08:00 UTC: 09:00-11:00 in Moscow, 16:00-18:00 in Vladivostok (outside 09:00-15:00).
    mailing = await add_mailing(
        engine, T0 - timedelta(hours=1), T0 + timedelta(hours=2), window=(time(9), time(15))
    )
    await scheduler.tick(T0 - timedelta(hours=1))
    await set_mailing(engine, mailing, "filter_tags = '{a}'")  # `dropped` is cancelled
    await scheduler.tick(T0 - timedelta(minutes=59))
    await set_mailing(engine, mailing, "end_at = :end", end=T0 - timedelta(minutes=58))
    await scheduler.tick(T0 - timedelta(minutes=58))  # ended: `waiting` expires

    rows = await messages(engine, mailing)
    assert (rows[dropped][0], rows[waiting][0]) == ("cancelled", "expired")
    assert len(publisher.seen) == 3, publisher.seen
    assert all(committed == outcomes for outcomes, committed in publisher.seen), publisher.seen


async def test_nothing_is_dispatched_after_the_end_and_the_mailing_finishes(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    clients = [await add_client(engine, "Europe/Moscow") for _ in range(2)]
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=1), window=(time(9), time(21)))
    await scheduler.tick(T0 + timedelta(hours=1))  # the scheduler was down for the whole period
    assert publisher.sent_ids == []
    rows = await messages(engine, mailing)
    assert {rows[c][0] for c in clients} == {"expired"}
    assert await mailing_status(engine, mailing) == "finished"


async def test_messages_not_sent_by_the_end_expire_and_the_mailing_finishes(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    client = await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=1))
    await scheduler.tick(T0)
    assert len(publisher.take_sent()) == 1
    assert await mailing_status(engine, mailing) == "running"
    await scheduler.tick(T0 + timedelta(hours=1))
    status, _, reason = (await messages(engine, mailing))[client]
    assert (status, reason) == ("expired", "mailing ended before the message was sent")
    assert await mailing_status(engine, mailing) == "finished"


async def test_pause_stops_dispatch_and_resume_continues_it(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=5))
    await set_mailing(engine, mailing, "status = 'paused'")
    await scheduler.tick(T0)
    assert publisher.sent_ids == []
    assert {s for s, _, _ in (await messages(engine, mailing)).values()} == {"pending"}
    await set_mailing(engine, mailing, "status = 'running'")
    await scheduler.tick(T0 + timedelta(minutes=1))
    assert len(publisher.sent_ids) == 1


async def test_cancel_ends_every_unfinished_message_as_cancelled(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    await add_client(engine, "Europe/Moscow")
    await add_client(engine, "Asia/Vladivostok")
    mailing = await add_mailing(engine, T0, T0 + timedelta(days=1), window=(time(9), time(12)))
    await scheduler.tick(T0)
    assert len(publisher.take_sent()) == 1
    await set_mailing(engine, mailing, "status = 'cancelled'")
    await scheduler.process_mailing(mailing, T0 + timedelta(minutes=1))
    rows = await messages(engine, mailing)
    assert {(s, r) for s, _, r in rows.values()} == {("cancelled", "mailing cancelled")}
    assert sorted(o.status for e in publisher.events for o in e.outcomes) == ["cancelled", "cancelled"]


async def test_deleted_mailing_has_its_messages_cancelled(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, T0, T0 + timedelta(days=1), window=(time(22), time(23)))
    await scheduler.tick(T0)
    await set_mailing(engine, mailing, "deleted_at = now()")
    await scheduler.tick(T0 + timedelta(minutes=1))
    assert {(s, r) for s, _, r in (await messages(engine, mailing)).values()} == {
        ("cancelled", "mailing deleted")
    }
    assert publisher.sent_ids == []


async def test_client_added_while_running_gets_its_message(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    await add_client(engine, "Europe/Moscow", tag="vip")
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=5), tags=["vip"])
    await scheduler.tick(T0)
    late = await add_client(engine, "Europe/Samara", tag="vip")
    await add_client(engine, "Europe/Samara", tag="other")
    await scheduler.tick(T0 + timedelta(seconds=2))
    assert late in await messages(engine, mailing)
    assert len(await messages(engine, mailing)) == 2
    assert len(publisher.sent_ids) == 2


async def test_client_written_by_a_transaction_open_across_expansions_gets_its_message(
    engine: AsyncEngine,
) -> None:
    """A long write (a big CSV import) stamps its clients with its transaction's start and commits after
    expansions that could not see them; with no margin at all, the next expansion still picks them up."""
    publisher = RecordingPublisher()
    settings = scheduler_settings(str(engine.url)).model_copy(update={"client_change_margin_seconds": 0})
    scheduler = make_scheduler(engine, settings, publisher)
    await add_client(engine, "Europe/Moscow")  # so that the mailing runs
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=5))
    await scheduler.tick(T0)
    async with engine.connect() as writer:
        await writer.begin()
        late = (
            await writer.execute(
                text(
                    "INSERT INTO clients (phone, operator_code, timezone)"
                    " VALUES ('79990000001', '999', 'Europe/Moscow') RETURNING id"
                )
            )
        ).scalar_one()
        await scheduler.tick(T0 + timedelta(seconds=2))
        await scheduler.tick(T0 + timedelta(seconds=4))
        await writer.commit()
    assert late not in await messages(engine, mailing)
    await scheduler.tick(T0 + timedelta(seconds=6))
    assert late in await messages(engine, mailing)


async def test_a_clients_new_timezone_moves_its_waiting_message_to_the_new_local_window(
    engine: AsyncEngine,
) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    client = await add_client(engine, "Europe/Moscow")
    # 12:00-13:00 local: 09:00 UTC in Moscow; in Omsk (UTC+6), 06:00 UTC, when the mailing starts.
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=5), window=(time(12), time(13)))
    await scheduler.tick(T0)
    assert (await messages(engine, mailing))[client][:2] == ("pending", T0 + timedelta(hours=3))

    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE clients SET timezone = 'Asia/Omsk', updated_at = now() WHERE id = :id"),
            {"id": client},
        )
    await scheduler.tick(T0 + timedelta(minutes=1))

    assert (await messages(engine, mailing))[client][:2] == ("queued", T0 + timedelta(minutes=1))
    assert publisher.sent_ids == list((await message_ids_of(engine, mailing)).values())


async def test_a_change_after_an_unfinished_first_pass_replans_what_that_pass_wrote(
    engine: AsyncEngine,
) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    keep = await add_client(engine, "Europe/Moscow", tag="a")
    drop = await add_client(engine, "Europe/Moscow", tag="b")
    mailing = await add_mailing(engine, T0, T0 + timedelta(days=2), window=(time(12), time(13)))
    await scheduler.tick(T0)
    # As a first pass left it when it stopped before its end (the broker down at a hand-over, say):
    # rows written, the expansion not recorded.
    await set_mailing(engine, mailing, "expanded_at = NULL, expansion_signature = NULL")
    await set_mailing(engine, mailing, "filter_tags = '{a}', window_start = '09:00', window_end = '10:00'")
    await scheduler.tick(T0 + timedelta(minutes=1))

    rows = await messages(engine, mailing)
    assert rows[drop][0::2] == ("cancelled", "client no longer matches the mailing filter")
    assert rows[keep][:2] == ("queued", T0 + timedelta(minutes=1))  # 09:01 in Moscow: inside the new window


async def test_filter_change_cancels_unmatched_and_replans_window(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url)), publisher)
    keep = await add_client(engine, "Europe/Moscow", tag="a")
    drop = await add_client(engine, "Europe/Moscow", tag="b")
    mailing = await add_mailing(engine, T0, T0 + timedelta(days=2), window=(time(20), time(21)))
    await scheduler.tick(T0)
    await set_mailing(engine, mailing, "filter_tags = '{a}', window_start = '12:00', window_end = '13:00'")
    await scheduler.process_mailing(mailing, T0 + timedelta(minutes=1))
    rows = await messages(engine, mailing)
    assert rows[drop][0::2] == ("cancelled", "client no longer matches the mailing filter")
    assert rows[keep][:2] == ("pending", datetime(2026, 6, 1, 9, 0, tzinfo=UTC))


async def test_stale_queued_message_is_published_again(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    settings = scheduler_settings(str(engine.url), requeue_after_seconds=60)
    scheduler = make_scheduler(engine, settings, publisher)
    await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=5))
    await scheduler.tick(T0)
    first = publisher.take_sent()
    await scheduler.tick(T0 + timedelta(seconds=59))
    assert publisher.sent_ids == []
    await scheduler.tick(T0 + timedelta(seconds=61))
    assert publisher.take_sent() == first
    assert await mailing_status(engine, mailing) == "running"


async def test_stale_messages_are_not_copied_again_while_no_sender_consumes(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    settings = scheduler_settings(str(engine.url), requeue_after_seconds=60)
    scheduler = make_scheduler(engine, settings, publisher)
    await add_client(engine, "Europe/Moscow")
    await add_mailing(engine, T0, T0 + timedelta(hours=5))
    await scheduler.tick(T0)
    first = publisher.take_sent()
    publisher.listening = False
    await scheduler.tick(T0 + timedelta(seconds=61))
    assert publisher.sent_ids == []
    publisher.listening = True
    await scheduler.tick(T0 + timedelta(seconds=62))
    assert publisher.take_sent() == first


async def tick_under_cap(engine: AsyncEngine, cap: int, clients: int) -> RecordingPublisher:
    """A tick of a scheduler writing and dispatching 2 messages a batch under an outstanding cap of
    `cap`, for a mailing due now to `clients` new clients; its publisher."""
    publisher = RecordingPublisher()
    settings = scheduler_settings(str(engine.url), max_outstanding=cap, dispatch_batch=2)
    scheduler = make_scheduler(engine, settings, publisher)
    for _ in range(clients):
        await add_client(engine, "Europe/Moscow")
    await add_mailing(engine, T0, T0 + timedelta(hours=5))
    await scheduler.tick(T0)
    return publisher


async def test_outstanding_cap_holds_dispatch_back(engine: AsyncEngine) -> None:
    publisher = await tick_under_cap(engine, cap=3, clients=5)
    assert len(publisher.sent_ids) == 3


async def test_outstanding_cap_is_counted_again_only_when_its_bound_leaves_no_room(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A count plus the pass's own hand-overs bounds what is outstanding: three chunks of 2 are handed
    # over after one count (0); the fourth would make 8 > 7, so it counts (6) and hands over the one
    # that fits, the other staying pending; the fifth and the empty one that ends the pass count (7) and
    # stay pending; the dispatch counts (7) and hands over nothing. A count before every chunk made seven.
    counts: list[int] = []
    count = scheduler_store.outstanding

    async def counting(conn: AsyncConnection) -> int:
        counts.append(await count(conn))
        return counts[-1]

    monkeypatch.setattr(scheduler_store, "outstanding", counting)
    publisher = await tick_under_cap(engine, cap=7, clients=10)
    assert len(publisher.sent_ids) == 7
    assert counts == [0, 6, 7, 7, 7]
