from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.errors import DomainValidationError
from shared.domain.windows import (
    DailyWindow,
    is_open,
    next_opening,
    parse_window,
    plan_send_time,
    window_closes_at,
)

pytestmark = pytest.mark.unit

ZONES = [
    "Europe/Moscow",
    "Asia/Vladivostok",
    "Europe/Kaliningrad",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "UTC",
]
# DST changes of the zones above, so that the property tests visit them often.
TRANSITIONS = [
    datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
    datetime(2026, 10, 25, 1, 0, tzinfo=UTC),
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
    datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
    datetime(2026, 4, 4, 15, 0, tzinfo=UTC),
    datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
]
BERLIN = "Europe/Berlin"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(
    tz: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0
) -> datetime:
    """The instant of a local wall-clock time, in UTC: ambiguous local datetimes never compare equal."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz), fold=fold).astimezone(UTC)


def window(start: str, end: str) -> DailyWindow:
    return parse_window(start, end)


minutes_of_day = st.builds(time, st.integers(0, 23), st.integers(0, 59))


@st.composite
def windows(draw: st.DrawFn) -> DailyWindow:
    start = draw(minutes_of_day)
    kind = draw(st.sampled_from(["any", "one minute", "near dst"]))
    if kind == "one minute":
        end_dt = datetime.combine(datetime(2000, 1, 1), start) + timedelta(minutes=1)
        end = end_dt.time()
    elif kind == "near dst":
        start = time(draw(st.integers(0, 3)), draw(st.sampled_from([0, 15, 29, 30, 31, 45, 59])))
        end = time(draw(st.integers(0, 4)), draw(st.sampled_from([0, 1, 30, 59])))
    else:
        end = draw(minutes_of_day)
    if start == end:
        end = time((start.hour + 12) % 24, start.minute)
    return DailyWindow(start, end)


uniform_instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)
instants_near_dst = st.builds(
    lambda base, minutes, seconds: base + timedelta(minutes=minutes, seconds=seconds),
    st.sampled_from(TRANSITIONS),
    st.integers(-3 * 24 * 60, 3 * 24 * 60),
    st.integers(0, 59),
)
instants = st.one_of(uniform_instants, instants_near_dst)


class TestParsingWindows:
    def test_hours_and_minutes_are_parsed(self) -> None:
        assert parse_window("09:00", "21:30") == DailyWindow(time(9), time(21, 30))

    def test_seconds_are_accepted(self) -> None:
        assert parse_window("09:00:15", "21:00:00") == DailyWindow(time(9, 0, 15), time(21))

    @pytest.mark.parametrize("bad", ["9:00", "24:00", "12:60", "noon", "", "12:00:00:00", "1200", "12:00+03"])
    def test_malformed_time_is_rejected_as_window_error(self, bad: str) -> None:
        with pytest.raises(DomainValidationError) as caught:
            parse_window(bad, "21:00")
        assert caught.value.field == "window"

    def test_window_starting_where_it_ends_is_rejected(self) -> None:
        with pytest.raises(DomainValidationError) as caught:
            parse_window("09:00", "09:00")
        assert caught.value.field == "window"


class TestContains:
    def test_plain_window_is_half_open(self) -> None:
        w = window("09:00", "21:00")
        assert w.contains(time(9))
        assert w.contains(time(20, 59, 59))
        assert not w.contains(time(21))
        assert not w.contains(time(8, 59))

    def test_wrapping_window_spans_midnight(self) -> None:
        w = window("22:00", "06:00")
        assert w.contains(time(22))
        assert w.contains(time(0))
        assert w.contains(time(5, 59))
        assert not w.contains(time(6))
        assert not w.contains(time(12))


class TestIsOpen:
    def test_no_window_is_always_open(self) -> None:
        assert is_open(None, "Asia/Vladivostok", utc(2026, 1, 1, 3))

    def test_window_is_judged_in_the_clients_local_time(self) -> None:
        w = window("09:00", "21:00")
        at = utc(2026, 1, 1, 1)  # 11:00 in Vladivostok, 04:00 in Moscow
        assert is_open(w, "Asia/Vladivostok", at)
        assert not is_open(w, "Europe/Moscow", at)

    def test_naive_instant_is_refused(self) -> None:
        with pytest.raises(ValueError):
            is_open(None, "UTC", datetime(2026, 1, 1))


class TestNextOpening:
    def test_open_window_returns_the_instant_itself(self) -> None:
        at = local("Europe/Moscow", 2026, 5, 1, 10)
        result = next_opening(window("09:00", "21:00"), "Europe/Moscow", at)
        assert result == at
        assert result.tzinfo is UTC

    def test_message_outside_window_waits_for_next_opening(self) -> None:
        at = local("Europe/Moscow", 2026, 5, 1, 22)
        assert next_opening(window("09:00", "21:00"), "Europe/Moscow", at) == local(
            "Europe/Moscow", 2026, 5, 2, 9
        )

    def test_morning_before_window_opens_same_day(self) -> None:
        at = local("Europe/Moscow", 2026, 5, 1, 7, 30)
        assert next_opening(window("09:00", "21:00"), "Europe/Moscow", at) == local(
            "Europe/Moscow", 2026, 5, 1, 9
        )

    def test_wrapping_window_opens_late_evening_in_vladivostok(self) -> None:
        tz = "Asia/Vladivostok"
        at = local(tz, 2026, 7, 1, 12)
        assert next_opening(window("22:00", "06:00"), tz, at) == local(tz, 2026, 7, 1, 22)

    def test_wrapping_window_is_open_after_midnight_in_vladivostok(self) -> None:
        tz = "Asia/Vladivostok"
        at = local(tz, 2026, 7, 2, 3)
        assert next_opening(window("22:00", "06:00"), tz, at) == at
        assert window_closes_at(window("22:00", "06:00"), tz, at) == local(tz, 2026, 7, 2, 6)

    def test_opening_in_spring_forward_gap_opens_when_clocks_jump(self) -> None:
        at = local(BERLIN, 2026, 3, 29, 0, 0)
        result = next_opening(window("02:30", "04:00"), BERLIN, at)
        assert result == local(BERLIN, 2026, 3, 29, 3, 0)
        assert result == utc(2026, 3, 29, 1, 0)

    def test_window_entirely_inside_spring_forward_gap_opens_next_day(self) -> None:
        at = local(BERLIN, 2026, 3, 29, 0, 0)
        result = next_opening(window("02:10", "02:50"), BERLIN, at)
        assert result == local(BERLIN, 2026, 3, 30, 2, 10)

    def test_fall_back_window_opens_at_first_occurrence(self) -> None:
        at = local(BERLIN, 2026, 10, 25, 0, 0)
        result = next_opening(window("02:30", "03:00"), BERLIN, at)
        assert result == local(BERLIN, 2026, 10, 25, 2, 30, fold=0)
        assert result == utc(2026, 10, 25, 0, 30)
        assert window_closes_at(window("02:30", "03:00"), BERLIN, result) == utc(2026, 10, 25, 1, 0)

    def test_fall_back_window_opens_again_at_the_repeated_hour(self) -> None:
        at = utc(2026, 10, 25, 1, 0)  # 02:00 CET, just after the clocks went back
        result = next_opening(window("02:30", "03:00"), BERLIN, at)
        assert result == local(BERLIN, 2026, 10, 25, 2, 30, fold=1)
        assert result == utc(2026, 10, 25, 1, 30)

    def test_clocks_going_back_into_the_window_open_it(self) -> None:
        at = utc(2026, 10, 25, 0, 45)  # 02:45 CEST, outside 02:00-02:30
        assert next_opening(window("02:00", "02:30"), BERLIN, at) == utc(2026, 10, 25, 1, 0)

    def test_half_hour_dst_of_lord_howe_is_honoured(self) -> None:
        tz = "Australia/Lord_Howe"
        at = local(tz, 2026, 10, 4, 0, 0)  # clocks go 02:00 -> 02:30
        assert next_opening(window("02:10", "03:00"), tz, at) == local(tz, 2026, 10, 4, 2, 30)

    def test_no_window_returns_the_instant_in_utc(self) -> None:
        at = local("Asia/Kathmandu", 2026, 1, 1, 3)
        result = next_opening(None, "Asia/Kathmandu", at)
        assert result == at
        assert result.tzinfo is UTC


class TestPlanSendTime:
    def test_send_time_is_start_when_window_open(self) -> None:
        start = utc(2026, 5, 1, 10)
        result = plan_send_time(window("09:00", "21:00"), "UTC", start, utc(2026, 5, 2), utc(2026, 5, 1, 8))
        assert result == start

    def test_send_time_is_now_when_start_has_passed(self) -> None:
        now = utc(2026, 5, 1, 12)
        result = plan_send_time(None, "UTC", utc(2026, 5, 1, 10), utc(2026, 5, 2), now)
        assert result == now

    def test_send_time_waits_for_window_opening(self) -> None:
        result = plan_send_time(
            window("09:00", "21:00"), "UTC", utc(2026, 5, 1, 22), utc(2026, 5, 3), utc(2026, 5, 1)
        )
        assert result == utc(2026, 5, 2, 9)

    def test_message_is_never_sent_when_opening_is_at_the_end(self) -> None:
        result = plan_send_time(
            window("09:00", "21:00"), "UTC", utc(2026, 5, 1, 22), utc(2026, 5, 2, 9), utc(2026, 5, 1)
        )
        assert result is None

    def test_message_is_never_sent_when_opening_is_after_the_end(self) -> None:
        result = plan_send_time(
            window("09:00", "21:00"), "UTC", utc(2026, 5, 1, 22), utc(2026, 5, 2, 8), utc(2026, 5, 1)
        )
        assert result is None

    def test_message_is_never_sent_when_mailing_already_ended(self) -> None:
        result = plan_send_time(None, "UTC", utc(2026, 5, 1), utc(2026, 5, 2), utc(2026, 5, 3))
        assert result is None


class TestWindowClosesAt:
    def test_no_window_never_closes(self) -> None:
        assert window_closes_at(None, "UTC", utc(2026, 1, 1)) is None

    def test_open_window_closes_at_its_end(self) -> None:
        tz = "Europe/Moscow"
        closes = window_closes_at(window("09:00", "21:00"), tz, local(tz, 2026, 1, 1, 10))
        assert closes == local(tz, 2026, 1, 1, 21)
        assert closes is not None and closes.tzinfo is UTC

    def test_closed_window_has_no_closing_time(self) -> None:
        with pytest.raises(ValueError):
            window_closes_at(window("09:00", "21:00"), "UTC", utc(2026, 1, 1, 22))


def _assert_closed_between(w: DailyWindow, tz: str, at: datetime, until: datetime) -> None:
    probes = {at, until - timedelta(seconds=1), until - timedelta(minutes=1)}
    probes |= {at + (until - at) * k / 7 for k in range(7)}
    for probe in probes:
        if at <= probe < until:
            assert not is_open(w, tz, probe), f"open at {probe.astimezone(ZoneInfo(tz))}"


@settings(max_examples=300, deadline=None)
@given(w=windows(), tz=st.sampled_from(ZONES), at=instants)
def test_next_opening_is_the_earliest_open_instant(w: DailyWindow, tz: str, at: datetime) -> None:
    r = next_opening(w, tz, at)
    assert r.tzinfo is UTC
    assert r >= at
    assert r - at < timedelta(days=3)
    assert is_open(w, tz, r)
    _assert_closed_between(w, tz, at, r)


@settings(max_examples=200, deadline=None)
@given(w=windows(), tz=st.sampled_from(ZONES), at=instants)
def test_window_closes_after_opening_and_stays_open_until_then(w: DailyWindow, tz: str, at: datetime) -> None:
    opened = next_opening(w, tz, at)
    closes = window_closes_at(w, tz, opened)
    assert closes is not None and closes > opened
    assert not is_open(w, tz, closes)
    for k in range(8):
        probe = opened + (closes - opened) * k / 8
        assert is_open(w, tz, probe)
    assert is_open(w, tz, closes - timedelta(seconds=1))


@settings(max_examples=200, deadline=None)
@given(
    w=st.none() | windows(),
    tz=st.sampled_from(ZONES),
    start=instants,
    length=st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=5)),
    lag=st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=2)),
)
def test_planned_send_time_is_open_and_within_the_mailing(
    w: DailyWindow | None, tz: str, start: datetime, length: timedelta, lag: timedelta
) -> None:
    end, now = start + length, start + lag
    planned = plan_send_time(w, tz, start, end, now)
    earliest = max(start, now)
    if planned is None:
        assert next_opening(w, tz, earliest) >= end
    else:
        assert earliest <= planned < end
        assert is_open(w, tz, planned)
