from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.probe_stub.app import ProbeStubService
from services.sender.bootstrap import SenderService, build_sender
from shared.contracts import MessagesFinalized, SendMessages, decode
from shared.settings import CommonSettings
from shared.topology import Topology

from .test_sender_support import (
    Db,
    Stub,
    drain_queue,
    eventually,
    observe_events,
    publish_send,
    send_new_mailing,
    sender_settings,
    start_stub,
)

pytestmark = pytest.mark.integration

FINAL = {"sent", "failed", "expired", "cancelled"}


@pytest.fixture
async def stub_server() -> AsyncIterator[ProbeStubService]:
    server = await start_stub()
    yield server
    await server.stop()


@pytest.fixture
def stub(stub_server: ProbeStubService) -> Stub:
    return Stub(f"http://127.0.0.1:{stub_server.port}")


class Senders:
    def __init__(self, settings: CommonSettings, stub: Stub) -> None:
        self.settings = settings
        self.stub = stub
        self.apps: list[SenderService] = []

    async def start(self, **overrides: Any) -> SenderService:
        app = build_sender(
            sender_settings(self.settings, self.stub.base_url, **overrides),
            registry=CollectorRegistry(),
            serve_ops=False,
        )
        await app.start()
        self.apps.append(app)
        return app

    async def stop(self, app: SenderService) -> None:
        self.apps.remove(app)
        await app.stop()


@pytest.fixture
async def senders(settings: CommonSettings, stub: Stub, topology: Topology) -> AsyncIterator[Senders]:
    running = Senders(settings, stub)
    yield running
    for app in list(running.apps):
        await running.stop(app)


async def all_final(db: Db, mailing_id: int) -> bool:
    return all(row[0] in FINAL for row in (await db.statuses(mailing_id)).values())


async def test_messages_are_sent_and_their_outcomes_published(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    observer = await observe_events(settings.amqp_url, topology, "message.#")
    await senders.start()
    mailing, items = await send_new_mailing(db, settings.amqp_url, topology, 30, per_event=7)

    await eventually(lambda: all_final(db, mailing), what="every message final")

    rows = await db.statuses(mailing)
    assert {row[0] for row in rows.values()} == {"sent"}
    assert all(row[1] == 1 and row[3] is not None and row[5] is None for row in rows.values())
    assert (await stub.stats())["distinct_accepted"] == 30
    events = [decode(MessagesFinalized, b) for b in await drain_queue(settings.amqp_url, observer)]
    assert sorted(o.message_id for e in events for o in e.outcomes) == sorted(i.message_id for i in items)


async def test_successes_and_failures_written_together_each_get_their_outcome(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    # Successes and other outcomes go out in statements of their own within one flush (a long flush
    # interval puts both kinds in each): every message still ends with one outcome, as the database has it.
    observer = await observe_events(settings.amqp_url, topology, "message.#")
    await stub.faults(error_rate=0.5)
    await senders.start(flush_interval_ms=200.0)
    mailing, items = await send_new_mailing(db, settings.amqp_url, topology, 40, per_event=40)

    async def some_retrying() -> bool:
        return any(row[0] == "retrying" for row in (await db.statuses(mailing)).values())

    await eventually(some_retrying, what="a failed first attempt")
    await stub.faults(error_rate=0)
    await eventually(lambda: all_final(db, mailing), what="every message final")

    rows = await db.statuses(mailing)
    assert {row[0] for row in rows.values()} == {"sent"}
    assert any(row[1] > 1 for row in rows.values()), "no message needed a second attempt"
    events = [decode(MessagesFinalized, b) for b in await drain_queue(settings.amqp_url, observer)]
    outcomes = {o.message_id: o for e in events for o in e.outcomes}
    assert sum(len(e.outcomes) for e in events) == len(outcomes) == len(items)
    clients = {i.message_id: i.client_id for i in items}
    for message_id, outcome in outcomes.items():
        assert (outcome.status, outcome.attempts) == (rows[message_id][0], rows[message_id][1])
        assert (outcome.mailing_id, outcome.client_id) == (mailing, clients[message_id])


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"error_rate": 1.0}, "http 5"),
        ({"timeout_rate": 1.0}, "timeout"),
        ({"malformed_rate": 1.0}, "malformed|provider code"),
        ({"rate_limit_rate": 1.0}, "http 429"),
        ({"outage_seconds": 30.0}, "Disconnected"),
    ],
    ids=["5xx", "timeout", "malformed", "429", "refused"],
)
async def test_a_transient_failure_is_retried_through_the_tier_queues_then_sent(
    fault: dict[str, float],
    reason: str,
    db: Db,
    stub: Stub,
    senders: Senders,
    settings: CommonSettings,
    topology: Topology,
) -> None:
    await senders.start()
    await stub.faults(**fault)
    mailing, _ = await send_new_mailing(db, settings.amqp_url, topology, 3)

    async def retried_twice() -> bool:
        rows = (await db.statuses(mailing)).values()
        return all(row[0] == "retrying" and row[1] >= 2 for row in rows)

    await eventually(retried_twice, what="two failed attempts each")
    rows = (await db.statuses(mailing)).values()
    assert all(re.search(reason, row[2]) and row[6] is not None for row in rows), rows
    await stub.faults(error_rate=0, timeout_rate=0, malformed_rate=0, rate_limit_rate=0, outage_seconds=0)
    await eventually(lambda: all_final(db, mailing), what="every message final")
    rows = (await db.statuses(mailing)).values()
    assert {row[0] for row in rows} == {"sent"}
    assert (await stub.stats())["duplicates"] == 0


async def test_a_permanent_failure_is_failed_and_parked(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    await senders.start()
    await stub.faults(reject_rate=1.0)
    mailing, items = await send_new_mailing(db, settings.amqp_url, topology, 2)

    await eventually(lambda: all_final(db, mailing), what="every message final")

    rows = (await db.statuses(mailing)).values()
    assert all(row[0] == "failed" and row[1] == 1 and row[2] == "http 400" for row in rows)
    parked = [decode(SendMessages, b) for b in await drain_queue(settings.amqp_url, topology.parking_queue)]
    assert sorted(m.message_id for p in parked for m in p.messages) == sorted(i.message_id for i in items)


async def test_a_message_whose_attempts_are_exhausted_is_failed_and_parked(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    await senders.start(max_attempts=3)
    await stub.faults(error_rate=1.0)
    mailing, _ = await send_new_mailing(db, settings.amqp_url, topology, 2)

    await eventually(lambda: all_final(db, mailing), what="every message final")

    rows = (await db.statuses(mailing)).values()
    assert all(row[0] == "failed" and row[1] == 3 and "attempts exhausted" in row[2] for row in rows), rows
    parked = await drain_queue(settings.amqp_url, topology.parking_queue)
    assert len(parked) == 2


async def test_a_refused_token_costs_no_attempt_and_the_messages_wait_for_a_good_one(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    refused = await senders.start(max_attempts=2, probe_token="not-a-valid-token")
    mailing, _ = await send_new_mailing(db, settings.amqp_url, topology, 2)

    async def refused_twice_the_attempts_allowed() -> bool:
        # Had these attempts counted, both messages would have failed after two each.
        return refused.metrics.calls.by_result.get("http_401", 0) >= 2 * 2 * 2

    await eventually(refused_twice_the_attempts_allowed, what="eight refused calls")
    await senders.stop(refused)
    rows = (await db.statuses(mailing)).values()
    # "queued": claimed but not yet called when the sender stopped, and given back.
    assert all(row[0] in ("retrying", "queued") and row[1] == 0 for row in rows), rows
    assert any(row[2] == "http 401" for row in rows), rows

    await senders.start(max_attempts=2)
    await eventually(lambda: all_final(db, mailing), what="every message final")
    rows = (await db.statuses(mailing)).values()
    assert all(row[0] == "sent" and row[1] == 1 for row in rows), rows


async def test_a_message_still_failing_when_the_mailing_ends_expires(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    await senders.start()
    await stub.faults(error_rate=1.0)
    mailing, _ = await send_new_mailing(db, settings.amqp_url, topology, 3, end_in=timedelta(seconds=1.2))

    await eventually(lambda: all_final(db, mailing), what="every message final")

    rows = (await db.statuses(mailing)).values()
    assert {row[0] for row in rows} == {"expired"}
    assert (await stub.stats())["accepted"] == 0


async def test_a_message_whose_window_closes_during_retries_waits_for_the_next_opening(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    await senders.start()
    await stub.faults(error_rate=1.0)
    now = datetime.now(UTC)
    closes = now + timedelta(seconds=1.5)  # long enough for a first (failing) call on a loaded machine
    mailing = await db.mailing(
        end_in=timedelta(days=3), window=((now - timedelta(hours=1)).time(), closes.time())
    )
    items = await db.queued_messages(mailing, 2)
    await publish_send(settings.amqp_url, topology, items)

    async def back_to_pending() -> bool:
        return all(row[0] == "pending" for row in (await db.statuses(mailing)).values())

    await eventually(back_to_pending, what="messages back to pending")

    rows = (await db.statuses(mailing)).values()
    next_opening = now - timedelta(hours=1) + timedelta(days=1)
    for row in rows:
        assert abs((row[4] - next_opening).total_seconds()) < 1, row
        assert row[1] >= 1 and row[5] is None
    assert (await stub.stats())["accepted"] == 0


@pytest.mark.parametrize(("action", "expected"), [("paused", "pending"), ("cancelled", "cancelled")])
async def test_pausing_or_cancelling_a_mailing_stops_its_delivery(
    action: str,
    expected: str,
    db: Db,
    stub: Stub,
    senders: Senders,
    settings: CommonSettings,
    topology: Topology,
) -> None:
    await senders.start(max_in_flight=4)
    await stub.faults(latency_ms=100)
    mailing, _ = await send_new_mailing(db, settings.amqp_url, topology, 40, per_event=10)

    async def some_sent() -> bool:
        return (await stub.stats())["accepted"] >= 4

    await eventually(some_sent, what="first sends")
    await db.execute("UPDATE mailings SET status = %s WHERE id = %s", (action, mailing))
    accepted_at_change = (await stub.stats())["accepted"]

    async def settled() -> bool:
        return all(row[0] in FINAL | {"pending"} for row in (await db.statuses(mailing)).values())

    await eventually(settled, what="every message settled")
    rows = (await db.statuses(mailing)).values()
    sent = sum(row[0] == "sent" for row in rows)
    assert sent == (await stub.stats())["distinct_accepted"]
    # Only calls already in flight when the mailing changed may still complete.
    assert sent <= accepted_at_change + 4
    assert sum(row[0] == expected for row in rows) == 40 - sent


async def test_a_pause_stops_new_calls_within_the_mailing_recheck_delay(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    # With the cache in use (the default delay is 0.5 s): state read before the pause may still be used
    # for up to `recheck` seconds, never longer.
    recheck, latency = 0.3, 0.1
    await senders.start(max_in_flight=4, mailing_recheck_seconds=recheck)
    await stub.faults(latency_ms=latency * 1000)
    mailing, _ = await send_new_mailing(db, settings.amqp_url, topology, 200, per_event=50)

    async def some_sent() -> bool:
        return (await stub.stats())["accepted"] >= 4

    await eventually(some_sent, what="first sends")
    await db.execute("UPDATE mailings SET status = 'paused' WHERE id = %s", (mailing,))
    paused_at = time.time()

    async def settled() -> bool:
        return all(row[0] in FINAL | {"pending"} for row in (await db.statuses(mailing)).values())

    await eventually(settled, what="every message settled")
    # The stand-in stamps a send when it answers, `latency` after the call started; 4 calls a latency
    # would have sent all 200 in 5 s.
    last_answer = max(datetime.fromisoformat(a["received_at"]) for a in await stub.accepted())
    assert last_answer.timestamp() <= paused_at + recheck + latency + 1.0
    statuses = [row[0] for row in (await db.statuses(mailing)).values()]
    assert statuses.count("pending") >= 100


async def test_a_message_already_final_is_never_sent_again(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    await senders.start()
    mailing, items = await send_new_mailing(db, settings.amqp_url, topology, 3)
    await eventually(lambda: all_final(db, mailing), what="every message final")
    await publish_send(settings.amqp_url, topology, items + items)

    async def consumed() -> bool:
        return not await drain_queue(settings.amqp_url, topology.send_queue)

    await eventually(consumed, what="copies consumed")
    assert (await stub.stats())["requests"] == 3


async def test_stopping_the_sender_finishes_or_returns_every_message(
    db: Db, stub: Stub, senders: Senders, settings: CommonSettings, topology: Topology
) -> None:
    first = await senders.start(max_in_flight=4)
    await stub.faults(latency_ms=150)
    mailing, _ = await send_new_mailing(db, settings.amqp_url, topology, 30, per_event=10)

    async def some_sent() -> bool:
        return (await stub.stats())["accepted"] >= 4

    await eventually(some_sent, what="first sends")
    await senders.stop(first)

    rows = (await db.statuses(mailing)).values()
    assert all(row[0] in ("sent", "queued") and row[5] is None for row in rows), rows
    assert sum(row[0] == "sent" for row in rows) == (await stub.stats())["distinct_accepted"]
    await stub.faults(latency_ms=0)
    await senders.start()
    await eventually(lambda: all_final(db, mailing), what="every message final")
    assert {row[0] for row in (await db.statuses(mailing)).values()} == {"sent"}
    assert (await stub.stats())["duplicates"] == 0
