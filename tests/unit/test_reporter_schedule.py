from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.reporter.schedule import day_bounds, due_days, report_due_at

pytestmark = pytest.mark.unit

MOSCOW = ZoneInfo("Europe/Moscow")
BERLIN = ZoneInfo("Europe/Berlin")
EIGHT = time(8, 0)


def test_report_of_a_day_is_due_the_next_morning_in_local_time() -> None:
    assert report_due_at(date(2026, 11, 25), MOSCOW, EIGHT) == datetime(2026, 11, 26, 5, 0, tzinfo=UTC)


def test_yesterdays_report_waits_until_the_send_time() -> None:
    before = datetime(2026, 11, 26, 4, 59, tzinfo=UTC)  # 07:59 in Moscow
    at = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
    last = date(2026, 11, 24)
    assert due_days(before, MOSCOW, EIGHT, last) == []
    assert due_days(at, MOSCOW, EIGHT, last) == [date(2026, 11, 25)]


def test_a_gap_of_missed_days_is_sent_oldest_first() -> None:
    now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    assert due_days(now, MOSCOW, EIGHT, date(2026, 11, 21)) == [
        date(2026, 11, 22),
        date(2026, 11, 23),
        date(2026, 11, 24),
        date(2026, 11, 25),
    ]


def test_a_long_outage_sends_only_the_most_recent_days() -> None:
    now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    days = due_days(now, MOSCOW, EIGHT, date(2025, 1, 1), max_days=3)
    assert days == [date(2026, 11, 23), date(2026, 11, 24), date(2026, 11, 25)]


def test_a_fresh_install_sends_only_yesterday_and_only_once_due() -> None:
    assert due_days(datetime(2026, 11, 26, 9, 0, tzinfo=UTC), MOSCOW, EIGHT, None) == [date(2026, 11, 25)]
    assert due_days(datetime(2026, 11, 26, 4, 0, tzinfo=UTC), MOSCOW, EIGHT, None) == []


def test_nothing_is_due_once_yesterday_was_sent() -> None:
    assert due_days(datetime(2026, 11, 26, 20, 0, tzinfo=UTC), MOSCOW, EIGHT, date(2026, 11, 25)) == []


def test_a_timezone_far_from_utc_uses_its_own_calendar_day() -> None:
    kiritimati = ZoneInfo("Pacific/Kiritimati")  # UTC+14
    # 2026-11-25 19:00 UTC is already 09:00 on the 26th there: the 25th is due.
    now = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)
    assert due_days(now, kiritimati, EIGHT, date(2026, 11, 24)) == [date(2026, 11, 25)]
    pago = ZoneInfo("Pacific/Pago_Pago")  # UTC-11: still the 25th, 08:00 there; only the 24th is due
    assert due_days(now, pago, EIGHT, date(2026, 11, 23)) == [date(2026, 11, 24)]


def test_send_time_follows_the_local_clock_across_a_dst_change() -> None:
    # Berlin moves to summer time on 2026-03-29 at 02:00.
    assert report_due_at(date(2026, 3, 28), BERLIN, EIGHT) == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    assert report_due_at(date(2026, 3, 27), BERLIN, EIGHT) == datetime(2026, 3, 28, 7, 0, tzinfo=UTC)
    start, end = day_bounds(date(2026, 3, 29), BERLIN)
    assert end - start == timedelta(hours=23)


def test_a_send_time_inside_the_dst_gap_still_comes_once() -> None:
    half_past_two = time(2, 30)  # does not exist in Berlin on 2026-03-29
    due = report_due_at(date(2026, 3, 28), BERLIN, half_past_two)
    assert due == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 summer time
    assert due_days(due - timedelta(seconds=1), BERLIN, half_past_two, date(2026, 3, 27)) == []
    assert due_days(due, BERLIN, half_past_two, date(2026, 3, 27)) == [date(2026, 3, 28)]


def test_every_day_is_due_exactly_once_over_a_year_with_dst_changes() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    last = date(2025, 12, 31)
    sent: list[date] = []
    while now < datetime(2027, 1, 2, tzinfo=UTC):
        days = due_days(now, BERLIN, EIGHT, last)
        sent += days
        last = days[-1] if days else last
        now += timedelta(minutes=30)
    assert sent == [date(2026, 1, 1) + timedelta(days=n) for n in range(365)]
