"""An expansion writes a mailing's messages a chunk of clients a transaction and hands each chunk's due
messages to the sender as it commits: the first are sent while the rest are still being written."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler import scheduler as scheduling
from services.scheduler import store
from services.scheduler.planning import plan_timezones
from services.scheduler.scheduler import Scheduler
from shared.contracts import SendMessages

from .test_scheduler_helpers import (
    RecordingPublisher,
    add_client,
    add_mailing,
    mailing_status,
    make_scheduler,
    scheduler_settings,
    set_mailing,
    status_counts,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)
CLIENTS = 10
CHUNK = 3


async def rows_of(engine: AsyncEngine, mailing_id: int) -> int:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT count(*) FROM messages WHERE mailing_id = :m"), {"m": mailing_id}
        )
        return int(result.scalar_one())


class SeeingPublisher(RecordingPublisher):
    """Records, at each publish, how many of the mailing's messages were written by then; `on_send` may
    do something between two chunks."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__()
        self.engine = engine
        self.mailing_id = 0
        self.written_at_send: list[int] = []
        self.on_send: list[str] = []

    async def send(self, commands: Sequence[SendMessages]) -> None:
        self.written_at_send.append(await rows_of(self.engine, self.mailing_id))
        if self.on_send:
            await set_mailing(self.engine, self.mailing_id, self.on_send.pop())
        await super().send(commands)


async def mailing_to_every_client(engine: AsyncEngine) -> tuple[Scheduler, SeeingPublisher, list[int]]:
    """CLIENTS clients in Moscow and a mailing to all of them, due at T0; a scheduler expanding CHUNK
    clients a transaction, its publisher watching that mailing; the clients' ids."""
    publisher = SeeingPublisher(engine)
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url), dispatch_batch=CHUNK), publisher)
    clients = [await add_client(engine, "Europe/Moscow") for _ in range(CLIENTS)]
    publisher.mailing_id = await add_mailing(engine, T0, T0 + timedelta(hours=5))
    return scheduler, publisher, clients


async def test_each_chunk_is_handed_to_the_sender_as_it_commits_and_every_message_once(
    engine: AsyncEngine,
) -> None:
    scheduler, publisher, clients = await mailing_to_every_client(engine)

    assert await scheduler.process_mailing(publisher.mailing_id, T0)

    # 3, 3, 3 and 1 clients: each chunk published once its rows were written, before the next was.
    assert publisher.written_at_send == [3, 6, 9, 10]
    assert [len(c.messages) for c in publisher.commands] == [3, 3, 3, 1]
    assert sorted(i.client_id for c in publisher.commands for i in c.messages) == clients
    assert len(set(publisher.sent_ids)) == CLIENTS
    assert await status_counts(engine) == {"queued": CLIENTS}
    # Nothing is left for the dispatch, and the expansion is recorded: the mailing is not expanded again.
    publisher.take_sent()
    await scheduler.tick(T0 + timedelta(seconds=1))
    assert publisher.sent_ids == []
    assert await mailing_status(engine, publisher.mailing_id) == "running"


async def test_the_first_chunks_are_small_and_grow_to_the_dispatch_batch(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first messages go out after a write of FIRST_CHUNK clients, not of a whole dispatch batch.
    monkeypatch.setattr(scheduling, "FIRST_CHUNK", 1)
    scheduler, publisher, clients = await mailing_to_every_client(engine)

    assert await scheduler.process_mailing(publisher.mailing_id, T0)

    assert [len(c.messages) for c in publisher.commands] == [1, 2, 3, 3, 1]
    assert publisher.written_at_send == [1, 3, 6, 9, 10]
    assert sorted(i.client_id for c in publisher.commands for i in c.messages) == clients


async def test_a_later_pass_chunks_only_the_clients_without_a_message(engine: AsyncEngine) -> None:
    scheduler, publisher, clients = await mailing_to_every_client(engine)
    assert await scheduler.process_mailing(publisher.mailing_id, T0)
    publisher.take_sent()
    publisher.written_at_send.clear()
    added = [await add_client(engine, "Europe/Moscow") for _ in range(CHUNK + 1)]

    # Every client was written within the change margin, so the pass looks at all of them again; those
    # with a message are passed over before the limit: the chunks are 3 and 1 new clients, not the
    # tail of the old ones with 2 new, then 2.
    assert await scheduler.process_mailing(publisher.mailing_id, T0 + timedelta(seconds=2))
    assert publisher.written_at_send == [CLIENTS + CHUNK, CLIENTS + CHUNK + 1]
    assert [i.client_id for c in publisher.commands for i in c.messages] == added
    assert await status_counts(engine) == {"queued": len(clients) + len(added)}


async def test_a_chunk_due_later_stays_pending_and_the_dispatch_hands_it_over_when_due(
    engine: AsyncEngine,
) -> None:
    publisher = RecordingPublisher()
    # No sender takes the queued message meanwhile: the recovery sweep is kept out of this test.
    settings = scheduler_settings(str(engine.url), dispatch_batch=CHUNK, requeue_after_seconds=86_400)
    scheduler = make_scheduler(engine, settings, publisher)
    moscow = await add_client(engine, "Europe/Moscow")  # 09:00 local at T0: inside the window
    london = await add_client(engine, "Europe/London")  # 07:00 local: the window opens at 09:00 local
    await add_mailing(engine, T0, T0 + timedelta(hours=10), window=(time(9), time(18)))

    await scheduler.tick(T0)
    assert [i.client_id for c in publisher.commands for i in c.messages] == [moscow]
    assert await status_counts(engine) == {"queued": 1, "pending": 1}
    publisher.take_sent()
    await scheduler.tick(T0 + timedelta(hours=2))
    assert [i.client_id for c in publisher.commands for i in c.messages] == [london]


async def test_an_expansion_stops_writing_when_the_mailing_is_cancelled_midway(engine: AsyncEngine) -> None:
    scheduler, publisher, _ = await mailing_to_every_client(engine)
    publisher.on_send = ["status = 'cancelled'"]  # while the first chunk is being published

    assert not await scheduler.process_mailing(publisher.mailing_id, T0)
    assert publisher.written_at_send == [CHUNK]
    assert await rows_of(engine, publisher.mailing_id) == CHUNK
    # The next pass ends what was written; the sender's check would have found them cancelled too.
    assert await scheduler.process_mailing(publisher.mailing_id, T0 + timedelta(seconds=1))
    assert await status_counts(engine) == {"cancelled": CHUNK}


async def test_an_expansion_stops_when_the_mailing_is_changed_midway_and_the_next_follows_the_change(
    engine: AsyncEngine,
) -> None:
    scheduler, publisher, _ = await mailing_to_every_client(engine)
    # While the first chunk is handed over: 12:00-13:00 in Moscow, 09:00 UTC, not due at T0 any more.
    publisher.on_send = ["window_start = '12:00', window_end = '13:00'"]

    assert not await scheduler.process_mailing(publisher.mailing_id, T0)
    assert await rows_of(engine, publisher.mailing_id) == CHUNK, "written under the plan it no longer has"
    assert await scheduler.process_mailing(publisher.mailing_id, T0 + timedelta(seconds=1))
    assert await status_counts(engine) == {"queued": CHUNK, "pending": CLIENTS - CHUNK}


async def test_a_paused_mailing_is_expanded_but_nothing_is_handed_over(engine: AsyncEngine) -> None:
    publisher = RecordingPublisher()
    scheduler = make_scheduler(engine, scheduler_settings(str(engine.url), dispatch_batch=CHUNK), publisher)
    for _ in range(CLIENTS):
        await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=5))
    await set_mailing(engine, mailing, "status = 'paused'")

    assert await scheduler.process_mailing(mailing, T0)
    assert publisher.sent_ids == []
    assert await status_counts(engine) == {"pending": CLIENTS}


async def test_the_tick_and_the_event_consumer_never_expand_one_mailing_at_once(engine: AsyncEngine) -> None:
    scheduler, publisher, _ = await mailing_to_every_client(engine)
    release = asyncio.Event()
    held = asyncio.Event()
    send = publisher.send

    async def hold_first_send(commands: Sequence[SendMessages]) -> None:
        held.set()
        await release.wait()
        await send(commands)

    publisher.send = hold_first_send  # type: ignore[method-assign]
    first = asyncio.create_task(scheduler.process_mailing(publisher.mailing_id, T0))
    await held.wait()
    assert not await scheduler.process_mailing(publisher.mailing_id, T0), "the mailing is being expanded"
    release.set()
    assert await first
    assert len(publisher.sent_ids) == CLIENTS


async def test_a_chunk_queues_the_due_rows_of_its_first_clients_and_writes_every_other_due_row_pending(
    engine: AsyncEngine,
) -> None:
    # 09:00-21:00 local, ending at 10:00 UTC: at T0 (06:00 UTC) Moscow is open (09:00), London not yet
    # (07:00, opens at 08:00 UTC), New York never before the end (02:00, opens at 13:00 UTC).
    zones = ["Europe/Moscow", "Europe/London", "Europe/Moscow", "America/New_York", "Europe/Moscow"]
    ids = [await add_client(engine, tz) for tz in zones]
    mailing = await add_mailing(engine, T0, T0 + timedelta(hours=4), window=(time(9), time(21)))

    async def chunk(queue_first: int) -> tuple[store.ExpansionChunk, dict[int, tuple[str, bool]]]:
        async with engine.begin() as conn:
            row = await store.load_mailing(conn, mailing)
            assert row is not None
            plan = plan_timezones(row.plan, await store.matching_timezones(conn, row.plan, None), T0)
            written = await store.insert_chunk(
                conn, row.plan, plan, T0, None, after_client_id=0, limit=10, queue_first=queue_first
            )
            result = await conn.execute(
                text("SELECT client_id, status, queued_at IS NOT NULL FROM messages WHERE mailing_id = :m"),
                {"m": mailing},
            )
            states = {int(c): (str(s), bool(q)) for c, s, q in result}
            await conn.rollback()
        return written, states

    written, states = await chunk(queue_first=3)
    assert [c.client_id for c in written.queued] == [ids[0], ids[2]]
    assert written.pending == 2 and [f.client_id for f in written.expired] == [ids[3]]
    assert written.last_client_id == ids[-1]
    assert states == {
        ids[0]: ("queued", True),
        ids[1]: ("pending", False),  # among the first three, but not due yet
        ids[2]: ("queued", True),
        ids[3]: ("expired", False),
        ids[4]: ("pending", False),  # due, but past the first three
    }

    written, states = await chunk(queue_first=0)
    assert written.queued == [] and written.pending == 4
    assert {c: s for c, (s, _) in states.items()} == {
        ids[0]: "pending",
        ids[1]: "pending",
        ids[2]: "pending",
        ids[3]: "expired",
        ids[4]: "pending",
    }

    written, _ = await chunk(queue_first=10)
    assert [c.client_id for c in written.queued] == [ids[0], ids[2], ids[4]]
