"""The per-message path of the sender against fakes: what happens around the waits before a call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from services.sender.breaker import BreakerConfig, CircuitBreaker
from services.sender.checks import Claim, MailingInfo
from services.sender.metrics import SenderMetrics
from services.sender.pacing import Pacer
from services.sender.service import Clocks, Sender
from services.sender.store import OutcomeRow
from services.sender.writer import OutcomeWriter
from shared.contracts import SendItem
from shared.domain.retry import ProviderResult, RetryPolicy, classify_response
from shared.topology import Topology

pytestmark = pytest.mark.unit

MAILING = MailingInfo(7, "hello", "running", datetime.now(UTC) + timedelta(hours=1), None)


class FakeStore:
    async def claim(self, ids: Sequence[int], lease_seconds: float) -> list[Claim]:
        raise AssertionError("not used here")

    async def mailings(self, ids: Sequence[int]) -> dict[int, MailingInfo]:
        return {MAILING.id: MAILING}


class FakeProvider:
    def __init__(self, answer: ProviderResult = ProviderResult(True, None, "ok")) -> None:
        self.called: list[int] = []
        self.answer = answer

    async def send(self, claim: Claim, text: str, limit_seconds: float | None = None) -> ProviderResult:
        self.called.append(claim.message_id)
        return self.answer


class FakeWriter:
    def __init__(self) -> None:
        self.rows: list[tuple[OutcomeRow, str | None]] = []
        # How long the oldest outcome has waited for its commit: the database's health as the sender sees it.
        self.unwritten = 0.0

    def submit(self, row: OutcomeRow, item: SendItem, route: str | None = None) -> asyncio.Future[None]:
        self.rows.append((row, route))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def sent(self, claim: Claim, at: datetime) -> asyncio.Future[None]:
        item = SendItem(message_id=claim.message_id, mailing_id=claim.mailing_id, client_id=claim.client_id)
        return self.submit(OutcomeRow(claim.message_id, claim.token, "sent"), item)

    def unwritten_for(self) -> float:
        return self.unwritten


def message(message_id: int, attempts: int = 1) -> tuple[Claim, SendItem]:
    claim = Claim(message_id, MAILING.id, message_id, attempts, "79001234567", "UTC", False)
    return claim, SendItem(message_id=message_id, mailing_id=MAILING.id, client_id=message_id)


def make_sender(
    provider: FakeProvider, writer: FakeWriter, topology: Topology, pacer: Pacer | None = None
) -> Sender:
    return Sender(
        store=FakeStore(),
        provider=provider,
        writer=cast(OutcomeWriter, writer),
        breaker=CircuitBreaker(BreakerConfig(), time.monotonic),
        metrics=SenderMetrics(CollectorRegistry()),
        topology=topology,
        policy=RetryPolicy(),
        clocks=Clocks(now=lambda: datetime.now(UTC), monotonic=time.monotonic),
        max_in_flight=1,
        request_timeout=5.0,
        lease_seconds=60.0,
        mailing_recheck_seconds=60.0,
        fence_after_seconds=3.0,
        pacer=pacer,
    )


async def test_a_message_whose_pacing_wait_meets_a_stop_is_given_back_not_called() -> None:
    provider, writer = FakeProvider(), FakeWriter()
    pacer = Pacer(callers=1, monotonic=time.monotonic)
    pacer.observe(0.2)  # one caller, 200 ms calls: starts at least 160 ms apart
    topology = Topology("t")
    sender = make_sender(provider, writer, topology, pacer)
    give_up_at = time.monotonic() + 30
    await sender._deliver(*message(1), give_up_at)  # takes the first slot: called at once
    second = asyncio.create_task(sender._deliver(*message(2), give_up_at))
    await asyncio.sleep(0)  # the second caller is now waiting for its slot
    assert not second.done()
    sender.stop()
    await second

    assert provider.called == [1]
    (sent, _), (given_back, route) = writer.rows
    assert sent.status == "sent"
    assert (given_back.message_id, given_back.status, given_back.attempts) == (2, "queued", 0)
    assert route == topology.send_key


@pytest.mark.parametrize(
    ("answer", "attempts_written"),
    [
        (classify_response(401, b""), 2),  # the token's fault: the claim's attempt is given back
        (classify_response(403, b""), 2),
        (classify_response(503, b""), None),  # counted: the claim's count stands
    ],
)
async def test_a_refused_token_gives_the_attempt_back_a_failure_keeps_it(
    answer: ProviderResult, attempts_written: int | None
) -> None:
    writer, topology = FakeWriter(), Topology("t")
    sender = make_sender(FakeProvider(answer), writer, topology)

    await sender._deliver(*message(1, attempts=3), time.monotonic() + 30)

    ((row, route),) = writer.rows
    assert (row.status, row.attempts) == ("retrying", attempts_written)
    assert route in {topology.retry_key(tier) for tier in range(len(topology.retry_delays))}


async def test_a_sender_whose_outcomes_cannot_be_recorded_makes_no_call_until_they_are() -> None:
    provider, writer, topology = FakeProvider(), FakeWriter(), Topology("t")
    sender = make_sender(provider, writer, topology)
    writer.unwritten = 3.5  # past the fence (3 s): the database has taken nothing for that long

    await sender._deliver(*message(1), time.monotonic() + 30)

    assert provider.called == []
    ((row, route),) = writer.rows
    assert (row.status, row.attempts, route) == ("queued", 0, topology.send_key)
    assert sender.metrics.fenced._value.get() == 1

    writer.unwritten = 0.0
    await sender._deliver(*message(2), time.monotonic() + 30)
    assert provider.called == [2]
    assert sender.metrics.fenced._value.get() == 0
