"""The outcome writer against fakes of its store and bus: what a broker restart does to it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from services.sender import outcome
from services.sender.bus import copies
from services.sender.checks import Claim
from services.sender.metrics import SenderMetrics
from services.sender.outcome import Outcome
from services.sender.writer import OutcomeWriter
from shared.domain.statuses import MessageStatus

pytestmark = pytest.mark.unit


class FakeStore:
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.wrote_sent = asyncio.Event()

    async def write(self, outcomes: Sequence[Outcome], *, repeat: bool = False) -> list[Outcome]:
        successes = [o.claim.message_id for o in outcomes if o.status is MessageStatus.SENT]
        if successes:
            self.sent += successes
            self.wrote_sent.set()
        return list(outcomes)


class FlakyBus:
    """Refuses to publish until the broker is back, as a closed channel does."""

    def __init__(self) -> None:
        self.broker_up = asyncio.Event()
        self.published: list[Outcome] = []
        self.refused = asyncio.Event()

    async def publish(self, outcomes: Sequence[Outcome], at: datetime) -> None:
        if not self.broker_up.is_set():
            self.refused.set()
            raise ConnectionError("channel closed")
        self.published += outcomes


def claim(message_id: int) -> Claim:
    return Claim(message_id, 7, message_id, 1, "79001234567", "UTC", token=42)


def writer_for(store: FakeStore, bus: FlakyBus) -> OutcomeWriter:
    return OutcomeWriter(
        store,
        bus,
        SenderMetrics(CollectorRegistry()),
        now=lambda: datetime.now(UTC),
        monotonic=time.monotonic,
        interval=0.001,
        max_rows=100,
    )


async def test_outcomes_are_recorded_while_their_copies_wait_for_the_broker_and_then_go_out() -> None:
    store, bus = FakeStore(), FlakyBus()
    writer = writer_for(store, bus)
    writer.start()
    retried = writer.submit(Outcome(claim(2), MessageStatus.RETRYING, "retry.1000ms", reason="http 503"))
    await asyncio.wait_for(bus.refused.wait(), 5)
    assert writer.unwritten_for() == 0.0, "written is recorded, whatever the broker does: no fence"
    sent = writer.submit(outcome.sent(claim(1), datetime.now(UTC)))
    await asyncio.wait_for(store.wrote_sent.wait(), 5)
    assert store.sent == [1], "the next batch was written while the first one's copies waited"
    assert not retried.done() and not sent.done(), "a delivery is done once its copies are confirmed"

    bus.broker_up.set()
    await asyncio.wait_for(asyncio.gather(retried, sent), 5)
    assert [c.routing_key for c in copies(bus.published, "parking")] == ["retry.1000ms"]
    await writer.close()


async def test_a_delivery_cancelled_with_its_channel_does_not_stop_the_writer() -> None:
    store, bus = FakeStore(), FlakyBus()
    bus.broker_up.set()
    writer = writer_for(store, bus)
    writer.start()
    first = writer.submit(outcome.sent(claim(1), datetime.now(UTC)))
    first.cancel()  # the handler waiting on it was cancelled when the broker closed its channel
    await asyncio.sleep(0.05)
    second = writer.submit(outcome.sent(claim(2), datetime.now(UTC)))
    await asyncio.wait_for(second, 5)
    assert store.sent == [1, 2]
    await writer.close()


class LostReplyStore(FakeStore):
    """Its first write commits, but the reply never comes; a later try finds the rows final already."""

    def __init__(self) -> None:
        super().__init__()
        self.repeats: list[bool] = []

    async def write(self, outcomes: Sequence[Outcome], *, repeat: bool = False) -> list[Outcome]:
        self.repeats.append(repeat)
        if len(self.repeats) == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return list(outcomes) if repeat else []


async def test_outcomes_whose_write_reply_was_lost_are_still_counted_and_published() -> None:
    store, bus = LostReplyStore(), FlakyBus()
    bus.broker_up.set()
    writer = writer_for(store, bus)
    writer.start()
    failed = Outcome(claim(1), MessageStatus.FAILED, "parking", reason="http 400")
    await asyncio.wait_for(writer.submit(failed), 5)
    assert store.repeats == [False, True]
    assert bus.published == [failed], "its message.finalized and parking-lot copy go out"
    metrics = writer.metrics.registry
    assert metrics.get_sample_value("mailing_sender_outcomes_total", {"status": "failed"}) == 1
    assert metrics.get_sample_value("mailing_sender_outcomes_unwritten_total") in (None, 0)
    await writer.close()
