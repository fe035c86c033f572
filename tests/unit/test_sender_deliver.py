"""The per-message path of the sender against fakes: what happens around the waits before a call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from services.sender.breaker import BreakerConfig, CircuitBreaker
from services.sender.checks import Claim, MailingInfo
from services.sender.metrics import SenderMetrics
from services.sender.outcome import Outcome
from services.sender.pacing import Pacer
from services.sender.ratelimit import RateLimiter
from services.sender.service import Clocks, Guards, Sender, SenderParts
from services.sender.settings import SenderSettings
from services.sender.writer import OutcomeWriter
from shared.domain.retry import ProviderResult, classify_response
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
        self.outcomes: list[Outcome] = []
        # How long the oldest outcome has waited for its commit: the database's health as the sender sees it.
        self.unwritten = 0.0

    def submit(self, outcome: Outcome) -> asyncio.Future[None]:
        self.outcomes.append(outcome)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def unwritten_for(self) -> float:
        return self.unwritten


def message(message_id: int, attempts: int = 1) -> Claim:
    return Claim(message_id, MAILING.id, message_id, attempts, "79001234567", "UTC", False)


NAMESPACE = "t"
TOPOLOGY = Topology(NAMESPACE)


def make_sender(
    provider: FakeProvider, writer: FakeWriter, pacer: Pacer | None = None, limiter: object = None
) -> Sender:
    settings = SenderSettings(amqp_namespace=NAMESPACE, max_in_flight=1, mailing_recheck_seconds=60.0)
    parts = SenderParts(
        FakeStore(), provider, cast(OutcomeWriter, writer), SenderMetrics(CollectorRegistry())
    )
    guards = Guards(CircuitBreaker(BreakerConfig(), time.monotonic), pacer, cast(RateLimiter | None, limiter))
    return Sender(settings, parts, guards, Clocks(now=lambda: datetime.now(UTC), monotonic=time.monotonic))


def fenced(sender: Sender) -> float | None:
    return sender.metrics.registry.get_sample_value("mailing_sender_fenced")


async def test_a_message_whose_pacing_wait_meets_a_stop_is_given_back_not_called() -> None:
    provider, writer = FakeProvider(), FakeWriter()
    pacer = Pacer(callers=1, monotonic=time.monotonic)
    pacer.observe(0.2)  # one caller, 200 ms calls: starts at least 160 ms apart
    sender = make_sender(provider, writer, pacer)
    give_up_at = time.monotonic() + 30
    await sender._deliver(message(1), give_up_at)  # takes the first slot: called at once
    second = asyncio.create_task(sender._deliver(message(2), give_up_at))
    await asyncio.sleep(0)  # the second caller is now waiting for its slot
    assert not second.done()
    sender.stop()
    await second

    assert provider.called == [1]
    sent, given_back = writer.outcomes
    assert sent.status == "sent"
    assert (given_back.claim.message_id, given_back.status, given_back.attempts) == (2, "queued", 0)
    assert given_back.route == TOPOLOGY.send_key


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
    writer = FakeWriter()
    sender = make_sender(FakeProvider(answer), writer)

    await sender._deliver(message(1, attempts=3), time.monotonic() + 30)

    (written,) = writer.outcomes
    assert (written.status, written.attempts) == ("retrying", attempts_written)
    assert written.route in {TOPOLOGY.retry_key(tier) for tier in range(len(TOPOLOGY.retry_delays))}


async def test_a_sender_whose_outcomes_cannot_be_recorded_makes_no_call_until_they_are() -> None:
    provider, writer = FakeProvider(), FakeWriter()
    sender = make_sender(provider, writer)
    writer.unwritten = 3.5  # past the fence (3 s): the database has taken nothing for that long

    await sender._deliver(message(1), time.monotonic() + 30)

    assert provider.called == []
    (given_back,) = writer.outcomes
    assert (given_back.status, given_back.attempts, given_back.route) == ("queued", 0, TOPOLOGY.send_key)
    assert fenced(sender) == 1

    writer.unwritten = 0.0
    await sender._deliver(message(2), time.monotonic() + 30)
    assert provider.called == [2]
    assert fenced(sender) == 0


class LateLimiter:
    """Grants its token only once the message's give-up time has passed: a long wait for the limit."""

    async def acquire(self, give_up_at: float | None = None) -> bool:
        assert give_up_at is not None
        await asyncio.sleep(give_up_at - time.monotonic() + 0.01)
        return True


class BrokenLimiter:
    """The shared bucket's database is away."""

    async def acquire(self, give_up_at: float | None = None) -> bool:
        raise psycopg.OperationalError("server closed the connection unexpectedly")


async def test_no_call_starts_after_the_give_up_time_whatever_the_wait_before_it() -> None:
    provider, writer = FakeProvider(), FakeWriter()
    sender = make_sender(provider, writer, limiter=LateLimiter())

    await sender._deliver(message(1), time.monotonic() + 0.05)

    assert provider.called == [], "called with half the lease or less left"
    (given_back,) = writer.outcomes
    assert (given_back.status, given_back.attempts, given_back.route) == ("queued", 0, TOPOLOGY.send_key)


async def test_a_rate_limit_the_database_cannot_answer_gives_the_message_back() -> None:
    provider, writer = FakeProvider(), FakeWriter()
    sender = make_sender(provider, writer, limiter=BrokenLimiter())

    await sender._deliver(message(1), time.monotonic() + 30)

    assert provider.called == []
    (given_back,) = writer.outcomes
    assert (given_back.status, given_back.attempts, given_back.route) == ("queued", 0, TOPOLOGY.retry_key(0))


async def test_a_fence_lifts_when_looked_at_again_without_new_work() -> None:
    provider, writer = FakeProvider(), FakeWriter()
    sender = make_sender(provider, writer)
    writer.unwritten = 3.5
    await sender._deliver(message(1), time.monotonic() + 30)
    assert fenced(sender) == 1

    writer.unwritten = 0.0  # the writer caught up; no delivery comes to this sender any more
    assert not sender.check_fence()  # what the health report asks every few seconds
    assert fenced(sender) == 0
