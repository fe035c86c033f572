"""The outcome writer against fakes of its store and bus: what a broker restart does to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from services.sender.checks import Claim
from services.sender.metrics import SenderMetrics
from services.sender.store import OutcomeRow, Written
from services.sender.writer import OutcomeWriter, WorkCopy
from shared.contracts import SendItem

pytestmark = pytest.mark.unit


class FakeStore:
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.wrote_sent = asyncio.Event()

    async def write(self, rows: Sequence[OutcomeRow]) -> list[Written]:
        return [Written(r.message_id, 7, r.message_id, r.status, 1, r.last_error) for r in rows]

    async def write_sent(self, ids: list[int], sent_at: list[datetime], tokens: list[int]) -> set[int]:
        self.sent += ids
        self.wrote_sent.set()
        return set(ids)


class FlakyBus:
    """Refuses to publish until the broker is back, as a closed channel does."""

    def __init__(self) -> None:
        self.broker_up = asyncio.Event()
        self.published: list[WorkCopy] = []
        self.refused = asyncio.Event()

    async def publish(self, copies: Sequence[WorkCopy], finalized: bytes | None) -> None:
        if not self.broker_up.is_set():
            self.refused.set()
            raise ConnectionError("channel closed")
        self.published += copies


def claim(message_id: int) -> Claim:
    return Claim(message_id, 7, message_id, 1, "79001234567", "UTC", token=42)


def writer_for(store: FakeStore, bus: FlakyBus) -> OutcomeWriter:
    return OutcomeWriter(
        store,
        bus,
        SenderMetrics(CollectorRegistry()),
        parking_key="parking",
        now=lambda: datetime.now(UTC),
        monotonic=time.monotonic,
        interval=0.001,
        max_rows=100,
    )


async def test_outcomes_are_recorded_while_their_copies_wait_for_the_broker_and_then_go_out() -> None:
    store, bus = FakeStore(), FlakyBus()
    writer = writer_for(store, bus)
    writer.start()
    item = SendItem(message_id=2, mailing_id=7, client_id=2)
    retried = writer.submit(OutcomeRow(2, 42, "retrying", last_error="http 503"), item, "retry.1000ms")
    await asyncio.wait_for(bus.refused.wait(), 5)
    assert writer.unwritten_for() == 0.0, "written is recorded, whatever the broker does: no fence"
    sent = writer.sent(claim(1), datetime.now(UTC))
    await asyncio.wait_for(store.wrote_sent.wait(), 5)
    assert store.sent == [1], "the next batch was written while the first one's copies waited"
    assert not retried.done() and not sent.done(), "a delivery is done once its copies are confirmed"

    bus.broker_up.set()
    await asyncio.wait_for(asyncio.gather(retried, sent), 5)
    assert [c.routing_key for c in bus.published] == ["retry.1000ms"]
    await writer.close()


async def test_a_delivery_cancelled_with_its_channel_does_not_stop_the_writer() -> None:
    store, bus = FakeStore(), FlakyBus()
    bus.broker_up.set()
    writer = writer_for(store, bus)
    writer.start()
    first = writer.sent(claim(1), datetime.now(UTC))
    first.cancel()  # the handler waiting on it was cancelled when the broker closed its channel
    await asyncio.sleep(0.05)
    second = writer.sent(claim(2), datetime.now(UTC))
    await asyncio.wait_for(second, 5)
    assert store.sent == [1, 2]
    await writer.close()
