"""The outcome model: decided once from a call's result, then turned into copies and one event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.sender import outcome
from services.sender.breaker import BreakerConfig, BreakerState, CircuitBreaker
from services.sender.bus import PARKED_REASON_HEADER, copies, finalized, needs_publishing
from services.sender.checks import Claim, Verdict
from shared.contracts import MessagesFinalized
from shared.domain.retry import RetryPolicy, classify_exception, classify_response
from shared.domain.statuses import MessageStatus, Reason, Route
from shared.topology import Topology

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TOPOLOGY = Topology("t")
POLICY = RetryPolicy(delays=(1.0, 5.0, 30.0), max_attempts=3, jitter=0.0)


def claim(message_id: int, attempts: int = 1) -> Claim:
    return Claim(message_id, 7, 100 + message_id, attempts, "79001234567", "UTC", token=42)


def after(answer: int | None, attempts: int = 1, end_in: timedelta = timedelta(hours=1)) -> outcome.Outcome:
    result = classify_exception(TimeoutError()) if answer is None else classify_response(answer, b"")
    if answer == 200:
        result = classify_response(200, b'{"code":0,"message":"OK"}')
    return outcome.after_call(
        claim(1, attempts),
        result,
        now=NOW,
        end_at=NOW + end_in,
        policy=POLICY,
        topology=TOPOLOGY,
        rand=lambda: 0.5,
    )


def test_a_success_is_sent_at_the_moment_decided_and_goes_nowhere_else() -> None:
    sent = after(200)
    assert (sent.status, sent.sent_at, sent.route, sent.attempts_after) == (MessageStatus.SENT, NOW, None, 1)
    assert sent.final


def test_a_transient_failure_retries_on_the_tier_of_its_attempt_and_keeps_the_attempt() -> None:
    second = after(503, attempts=2)
    assert (second.status, second.route) == (MessageStatus.RETRYING, TOPOLOGY.retry_key(1))
    assert second.next_attempt_at == NOW + timedelta(seconds=5)
    assert second.attempts is None and second.attempts_after == 2
    assert not second.final


def test_a_refused_token_retries_with_its_attempt_given_back() -> None:
    refused = after(401, attempts=2)
    assert refused.status is MessageStatus.RETRYING
    assert refused.attempts == 1


def test_a_rejected_message_fails_to_the_parking_lot_and_the_last_attempt_fails_too() -> None:
    rejected = after(400)
    assert (rejected.status, rejected.route) == (MessageStatus.FAILED, TOPOLOGY.parking_key)
    exhausted = after(None, attempts=3)
    assert (exhausted.status, exhausted.route) == (MessageStatus.FAILED, TOPOLOGY.parking_key)
    assert exhausted.reason is not None and exhausted.reason.startswith("attempts exhausted")


def test_a_retry_that_would_come_after_the_end_expires_instead() -> None:
    expired = after(503, end_in=timedelta(seconds=0.5))
    assert (expired.status, expired.route) == (MessageStatus.EXPIRED, None)


def test_a_message_given_back_or_refused_by_the_check_keeps_no_attempt() -> None:
    back = outcome.given_back(claim(1, attempts=4), TOPOLOGY.send_key)
    assert (back.status, back.route, back.attempts) == (MessageStatus.QUEUED, TOPOLOGY.send_key, 3)
    cancelled = outcome.not_sent(claim(2, attempts=1), Verdict(Route.CANCEL, Reason.CLIENT_DELETED))
    assert (cancelled.status, cancelled.reason, cancelled.attempts) == (
        MessageStatus.CANCELLED,
        Reason.CLIENT_DELETED,
        0,
    )


def test_copies_go_one_per_route_and_one_per_parked_message_with_its_reason() -> None:
    outcomes = [
        outcome.Outcome(claim(1), MessageStatus.RETRYING, TOPOLOGY.retry_key(0), reason="http 503"),
        outcome.Outcome(claim(2), MessageStatus.RETRYING, TOPOLOGY.retry_key(0), reason="http 503"),
        outcome.given_back(claim(3), TOPOLOGY.send_key),
        outcome.Outcome(claim(4), MessageStatus.FAILED, TOPOLOGY.parking_key, reason="http 400"),
        outcome.Outcome(claim(5), MessageStatus.FAILED, TOPOLOGY.parking_key, reason="x" * 600),
        outcome.sent(claim(6), NOW),
    ]
    made = copies(outcomes, TOPOLOGY.parking_key)
    by_key = [(c.routing_key, [m.message_id for m in c.command.messages]) for c in made]
    assert by_key == [
        (TOPOLOGY.retry_key(0), [1, 2]),
        (TOPOLOGY.send_key, [3]),
        (TOPOLOGY.parking_key, [4]),
        (TOPOLOGY.parking_key, [5]),
    ]
    reasons = [c.headers[PARKED_REASON_HEADER] for c in made if c.headers is not None]
    assert reasons == ["http 400", "x" * 500]
    assert made[0].command.messages[0].client_id == 101


def test_the_event_carries_the_final_outcomes_only_with_their_attempts_and_reasons() -> None:
    outcomes = [
        outcome.sent(claim(1, attempts=2), NOW),
        outcome.Outcome(claim(2), MessageStatus.RETRYING, TOPOLOGY.retry_key(0), reason="http 503"),
        outcome.not_sent(claim(3, attempts=1), Verdict(Route.EXPIRE, Reason.MAILING_ENDED)),
    ]
    event = finalized(outcomes, NOW)
    assert event is not None
    decoded = MessagesFinalized.model_validate_json(event)
    assert [(o.message_id, o.client_id, o.status, o.attempts, o.reason) for o in decoded.outcomes] == [
        (1, 101, "sent", 2, None),
        (3, 103, "expired", 0, Reason.MAILING_ENDED),
    ]
    retrying_only = outcomes[1:2]
    assert finalized(retrying_only, NOW) is None
    assert needs_publishing(retrying_only)
    assert not needs_publishing([outcome.not_sent(claim(4), Verdict(Route.WAIT, "paused", not_before=NOW))])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def half_open_breaker(probes: int = 1) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerConfig(window=4, min_calls=2, failure_ratio=0.5, cooldown_seconds=5, probes=probes), clock
    )
    breaker.record(False)
    breaker.record(False)
    clock.now = 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    return breaker, clock


async def test_a_probe_slot_taken_but_not_called_is_given_back_on_any_exit() -> None:
    breaker, _ = half_open_breaker()
    async with breaker.slot(until=10.0, abandoned=lambda: False) as slot:
        assert slot.acquired
        assert breaker.admit() is None, "the one probe is out"
    assert breaker.admit() is not None, "returned when the call was not made"
    breaker.release()

    with pytest.raises(RuntimeError):
        async with breaker.slot(until=10.0, abandoned=lambda: False) as slot:
            assert slot.acquired
            raise RuntimeError("a recheck failed between the slot and the call")
    assert breaker.admit() is not None, "returned on an exception too"


async def test_a_probe_slot_whose_call_was_recorded_stays_counted() -> None:
    breaker, _ = half_open_breaker(probes=2)
    async with breaker.slot(until=10.0, abandoned=lambda: False) as slot:
        slot.record(True)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit() is not None, "the second probe"
    assert breaker.admit() is None, "the first probe's slot was used, not given back"


async def test_a_slot_admitted_before_the_breaker_opened_neither_frees_nor_fills_a_probe_place() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerConfig(window=4, min_calls=2, failure_ratio=0.5, cooldown_seconds=5, probes=1), clock
    )
    async with (
        breaker.slot(until=100.0, abandoned=lambda: False) as early,
        breaker.slot(until=100.0, abandoned=lambda: False) as late,
    ):
        assert early.acquired and late.acquired, "closed: every call goes"
        breaker.record(False)
        breaker.record(False)  # other calls failed meanwhile: open, then half-open after the cool-down
        clock.now = 5.0
        assert breaker.admit() is not None, "the trial's one probe"
        early.record(True)
        assert breaker.state is BreakerState.HALF_OPEN, "an answer from before the trial is not its probe's"
    # `late` leaves without a call: the probe's place is still taken.
    assert breaker.admit() is None
    breaker.record(True)  # the probe's own answer
    assert breaker.state.name == "CLOSED"


async def test_a_slot_of_an_open_breaker_is_not_acquired_once_its_time_is_up_or_it_is_abandoned() -> None:
    breaker, clock = half_open_breaker()
    breaker.record(False)  # the probe failed: open again for 5 s
    clock.now = 6.0
    async with breaker.slot(until=6.0, abandoned=lambda: False) as slot:
        assert not slot.acquired
    async with breaker.slot(until=100.0, abandoned=lambda: True) as slot:
        assert not slot.acquired
    clock.now = 10.0
    async with breaker.slot(until=100.0, abandoned=lambda: False) as slot:
        assert slot.acquired, "half-open again after the cool-down"
