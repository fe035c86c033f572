from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, time, timedelta
from time import monotonic

import pytest

from services.sender.breaker import BreakerConfig, BreakerState, CircuitBreaker
from services.sender.checks import Claim, MailingInfo, check_sendable
from services.sender.pacing import LATENCY_WINDOW_SECONDS, MAX_WAIT_SECONDS, MIN_WAIT_SECONDS, Pacer
from services.sender.ratelimit import RateLimiter
from shared.domain.filters import ClientFilter
from shared.domain.statuses import Reason
from shared.domain.windows import DailyWindow

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state_of(b: CircuitBreaker) -> BreakerState:
    return b.state


def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(
        BreakerConfig(window=10, min_calls=4, failure_ratio=0.7, cooldown_seconds=5, probes=2), clock
    )


def test_breaker_opens_when_most_recent_calls_fail_and_refuses_calls_for_the_cooldown() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for ok in (True, True, False, False, False, False):
        assert b.admit() is not None
        b.record(ok)
    assert state_of(b) is BreakerState.CLOSED
    b.record(False)
    assert state_of(b) is BreakerState.OPEN
    assert b.admit() is None
    clock.now = 4.9
    assert b.admit() is None
    assert b.cooldown_left() == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(20))
def test_breaker_opens_exactly_when_the_ratio_over_the_last_window_calls_is_reached(seed: int) -> None:
    # Against a plain recount of the window after every call, over long random runs of answers: mostly
    # failures for half the seeds, mostly successes (long runs of them, a failure now and then) for the rest.
    rng = random.Random(seed)
    success_rate = (0.45, 0.9)[seed % 2]
    clock = FakeClock()
    b = breaker(clock)
    window: list[bool] = []
    for _ in range(300):
        ok = rng.random() < success_rate
        window = ([*window, ok])[-10:]
        b.record(ok)
        should_open = len(window) >= 4 and window.count(False) >= 0.7 * len(window)
        assert (state_of(b) is BreakerState.OPEN) is should_open
        if should_open:
            clock.now += 5  # cool-down over; two good probes close it with an empty window
            for _ in range(2):
                assert b.admit() is not None
                b.record(True)
            assert state_of(b) is BreakerState.CLOSED
            window = []


def test_breaker_lets_a_few_probes_through_after_the_cooldown_and_closes_when_they_succeed() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(4):
        b.record(False)
    clock.now = 5.0
    assert state_of(b) is BreakerState.HALF_OPEN
    assert b.admit() is not None and b.admit() is not None, "two probes"
    assert b.admit() is None
    b.record(True)
    b.record(True)
    assert state_of(b) is BreakerState.CLOSED
    assert b.admit() is not None


def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(4):
        b.record(False)
    clock.now = 5.0
    assert b.admit() is not None
    b.record(False)
    assert state_of(b) is BreakerState.OPEN
    assert b.opened_count == 2


def test_scattered_failures_below_the_ratio_keep_the_breaker_closed() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for ok in [True, False] * 20:
        b.record(ok)
    assert state_of(b) is BreakerState.CLOSED


def claim(tz: str = "UTC") -> Claim:
    return Claim(message_id=1, mailing_id=2, client_id=3, attempts=1, phone="79001234567", timezone=tz)


def mailing(
    status: str = "running", end: timedelta = timedelta(hours=1), window: DailyWindow | None = None
) -> MailingInfo:
    return MailingInfo(id=2, text="hi", status=status, end_at=NOW + end, window=window)


def test_a_message_of_a_running_mailing_inside_its_window_is_sent() -> None:
    assert check_sendable(claim(), mailing(window=DailyWindow(time(9), time(21))), NOW).action == "send"


def test_a_message_of_a_paused_mailing_goes_back_to_pending() -> None:
    verdict = check_sendable(claim(), mailing("paused"), NOW)
    assert (verdict.action, verdict.not_before) == ("wait", NOW)


def test_a_message_of_a_cancelled_or_deleted_mailing_is_cancelled() -> None:
    assert check_sendable(claim(), mailing("cancelled"), NOW).action == "cancel"
    deleted = MailingInfo(
        id=2, text="hi", status="running", end_at=NOW + timedelta(hours=1), window=None, deleted=True
    )
    assert check_sendable(claim(), deleted, NOW).action == "cancel"


def test_a_message_of_a_client_a_narrowed_filter_left_out_is_cancelled_before_the_call() -> None:
    narrowed = MailingInfo(
        id=2,
        text="hi",
        status="running",
        end_at=NOW + timedelta(hours=1),
        window=None,
        filter=ClientFilter(operator_codes=frozenset({"900"})),
    )
    left_out = claim()._replace(operator_code="901")
    verdict = check_sendable(left_out, narrowed, NOW)
    assert (verdict.action, verdict.reason) == ("cancel", Reason.CLIENT_NO_LONGER_MATCHES)
    assert check_sendable(left_out._replace(operator_code="900"), narrowed, NOW).action == "send"


def test_a_message_past_the_mailing_end_expires() -> None:
    assert check_sendable(claim(), mailing(end=timedelta(0)), NOW).action == "expire"


def test_a_message_outside_the_clients_window_waits_for_its_next_opening() -> None:
    # 12:00 UTC is 21:00 in Tokyo: the 09:00-21:00 window has just closed there.
    verdict = check_sendable(
        claim("Asia/Tokyo"), mailing(end=timedelta(days=2), window=DailyWindow(time(9), time(21))), NOW
    )
    assert verdict.action == "wait"
    assert verdict.not_before == datetime(2026, 11, 27, 0, 0, tzinfo=UTC)


def test_a_message_whose_next_opening_is_after_the_end_expires() -> None:
    verdict = check_sendable(
        claim("Asia/Tokyo"), mailing(end=timedelta(hours=2), window=DailyWindow(time(9), time(21))), NOW
    )
    assert (verdict.action, verdict.reason) == ("expire", Reason.NO_OPENING)


class FakeBucket:
    def __init__(self, grants: list[int]) -> None:
        self.grants = grants
        self.asked: list[int] = []

    async def take(self, want: int) -> int:
        self.asked.append(want)
        return self.grants.pop(0) if self.grants else want


async def test_the_rate_limiter_takes_tokens_from_the_shared_bucket_in_chunks() -> None:
    bucket = FakeBucket([5, 5])
    limiter = RateLimiter(bucket, rate=1000, chunk=5)
    for _ in range(10):
        await limiter.acquire()
    assert bucket.asked == [5, 5]


async def test_the_rate_limiter_waits_when_the_bucket_is_empty() -> None:
    bucket = FakeBucket([0, 2])
    limiter = RateLimiter(bucket, rate=1000, chunk=2)
    await limiter.acquire()
    assert bucket.asked == [2, 2]


async def test_a_caller_that_waited_for_the_limiter_past_its_give_up_time_gets_no_token() -> None:
    granted = asyncio.Event()

    class SlowBucket:
        async def take(self, want: int) -> int:
            await granted.wait()
            return want

    limiter = RateLimiter(SlowBucket(), rate=1000, chunk=2)
    first = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)  # the first caller holds the limiter's turn, waiting for the bucket
    late_at = monotonic() + 0.02
    second = asyncio.create_task(limiter.acquire(late_at))
    await asyncio.sleep(late_at - monotonic() + 0.01)
    granted.set()  # two tokens come: one for each caller, but the second one's time is up
    assert await first
    assert not await second


def test_pacing_spreads_a_burst_of_calls_over_the_lowest_latency_seen() -> None:
    clock = FakeClock()
    pacer = Pacer(callers=100, monotonic=clock, gain=1.25)
    assert pacer.reserve() == 0.0  # nothing timed yet: no pacing
    pacer.observe(0.050)
    pacer.observe(0.080)
    assert pacer.interval == pytest.approx(0.050 / 125)
    clock.now = 0.5
    waits = [pacer.reserve() for _ in range(100)]
    # A hundred callers ready at once start 0.4 ms apart: the whole burst spread over 40 ms.
    assert waits[:3] == [0.0, 0.0, 0.0]  # waits under a millisecond are not worth a timer
    assert waits[-1] == pytest.approx(99 * 0.0004)
    assert all(w == 0.0 or w >= MIN_WAIT_SECONDS for w in waits)
    assert waits == sorted(waits)


def test_pacing_never_holds_back_calls_to_a_fast_provider() -> None:
    clock = FakeClock()
    pacer = Pacer(callers=100, monotonic=clock)
    pacer.observe(0.0003)
    assert all(pacer.reserve() == 0.0 for _ in range(300))


def test_pacing_follows_a_provider_that_became_faster_within_two_windows() -> None:
    clock = FakeClock()
    pacer = Pacer(callers=10, monotonic=clock, gain=1.0)
    pacer.observe(0.5)
    clock.now = LATENCY_WINDOW_SECONDS + 0.1
    pacer.observe(0.05)
    assert pacer.interval == pytest.approx(0.005)
    clock.now = 2 * LATENCY_WINDOW_SECONDS + 0.2
    pacer.observe(0.06)
    assert pacer.interval == pytest.approx(0.005)  # the previous window's 50 ms still counts
    clock.now = 3 * LATENCY_WINDOW_SECONDS + 0.3
    pacer.observe(0.07)
    assert pacer.interval == pytest.approx(0.006)  # the 500 ms and 50 ms windows have passed


def test_pacing_forgets_what_it_saw_once_no_call_was_timed_for_two_windows() -> None:
    clock = FakeClock()
    pacer = Pacer(callers=10, monotonic=clock, gain=1.0)
    pacer.observe(0.5)  # a slow spell...
    clock.now = 3600.0  # ...then an hour without calls: the next burst is not held back by it
    assert [pacer.reserve() for _ in range(10)] == [0.0] * 10


def test_no_caller_waits_longer_than_the_cap_even_when_every_call_timed_out() -> None:
    clock = FakeClock()
    pacer = Pacer(callers=300, monotonic=clock)
    pacer.observe(5.0)  # every call hit the 5 s timeout: slots 13 ms apart
    waits = [pacer.reserve() for _ in range(300)]
    assert max(waits) == pytest.approx(MAX_WAIT_SECONDS)


def test_slots_handed_out_at_a_slow_spacing_are_pulled_in_when_the_provider_gets_faster() -> None:
    clock = FakeClock()
    pacer = Pacer(callers=10, monotonic=clock, gain=1.0)
    pacer.observe(1.0)  # 100 ms apart
    for _ in range(5):
        pacer.reserve()  # slots up to 400 ms ahead are taken
    pacer.observe(0.05)  # 5 ms apart from now on
    assert pacer.reserve() == pytest.approx(0.005)
