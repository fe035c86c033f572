from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.reporter.schedule import day_bounds, due_days, next_report_due_at, report_due_at

pytestmark = pytest.mark.unit

MOSCOW = ZoneInfo("Europe/Moscow")
BERLIN = ZoneInfo("Europe/Berlin")
EIGHT = time(8, 0)
TWO_PM = time(14, 0)


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


def moscow(day: int, hour: int, minute: int = 0) -> datetime:
    """A local time in Moscow (UTC+3 all year) in November 2026, as UTC."""
    return datetime(2026, 11, day, hour, minute, tzinfo=MOSCOW).astimezone(UTC)


def test_with_a_send_time_after_noon_the_next_report_is_not_due_in_the_morning() -> None:
    last = date(2026, 11, 24)
    # 10:00 on the 26th: the report of the 25th is not due before 14:00, so it is not late.
    assert next_report_due_at(moscow(26, 10), MOSCOW, TWO_PM, last) == moscow(26, 14)
    assert next_report_due_at(moscow(26, 10), MOSCOW, TWO_PM, last) > moscow(26, 10)
    # 15:00 and still not sent: owed since 14:00.
    assert next_report_due_at(moscow(26, 15), MOSCOW, TWO_PM, last) == moscow(26, 14)
    # Sent: the next one is the 26th's, at 14:00 on the 27th.
    assert next_report_due_at(moscow(26, 15), MOSCOW, TWO_PM, date(2026, 11, 25)) == moscow(27, 14)


def test_the_next_report_due_is_the_oldest_one_owed() -> None:
    # Four days owed since the 21st was sent: the report of the 22nd was due on the 23rd.
    assert next_report_due_at(moscow(26, 12), MOSCOW, EIGHT, date(2026, 11, 21)) == moscow(23, 8)


def test_after_a_long_outage_the_next_report_due_is_the_oldest_one_the_reporter_will_send() -> None:
    now = moscow(26, 12)
    days = due_days(now, MOSCOW, EIGHT, date(2025, 1, 1), max_days=3)
    assert next_report_due_at(now, MOSCOW, EIGHT, date(2025, 1, 1), max_days=3) == moscow(24, 8)
    assert next_report_due_at(now, MOSCOW, EIGHT, date(2025, 1, 1), max_days=3) == report_due_at(
        days[0], MOSCOW, EIGHT
    )


def test_with_nothing_ever_sent_yesterdays_report_is_the_next_due() -> None:
    assert next_report_due_at(moscow(26, 7), MOSCOW, EIGHT, None) == moscow(26, 8)
    assert next_report_due_at(moscow(26, 9), MOSCOW, EIGHT, None) == moscow(26, 8)
    assert next_report_due_at(moscow(26, 23, 59), MOSCOW, TWO_PM, None) == moscow(26, 14)


def test_the_next_report_due_follows_the_local_clock_across_dst_changes() -> None:
    # Berlin moves to summer time on 2026-03-29 (UTC+1 -> UTC+2) and back on 2026-10-25.
    spring = datetime(2026, 3, 29, 5, 0, tzinfo=UTC)  # 07:00 summer time, before the send
    assert next_report_due_at(spring, BERLIN, EIGHT, date(2026, 3, 27)) == datetime(
        2026, 3, 29, 6, 0, tzinfo=UTC
    )
    assert next_report_due_at(spring, BERLIN, TWO_PM, date(2026, 3, 27)) == datetime(
        2026, 3, 29, 12, 0, tzinfo=UTC
    )
    # Sent the evening before the change (winter time): the next is due at 08:00 summer time.
    evening = datetime(2026, 3, 28, 20, 0, tzinfo=UTC)
    assert next_report_due_at(evening, BERLIN, EIGHT, date(2026, 3, 27)) == datetime(
        2026, 3, 29, 6, 0, tzinfo=UTC
    )
    autumn = datetime(2026, 10, 24, 20, 0, tzinfo=UTC)  # 22:00 summer time, the evening before the change
    assert next_report_due_at(autumn, BERLIN, EIGHT, date(2026, 10, 23)) == datetime(
        2026, 10, 25, 7, 0, tzinfo=UTC
    )


@pytest.mark.parametrize("send_at", [EIGHT, TWO_PM, time(2, 30), time(23, 59)])
def test_the_next_report_due_is_the_first_due_day_or_still_ahead_over_a_year_of_dst_changes(
    send_at: time,
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)  # 01:00 in Berlin, before any of the send times
    last = date(2025, 12, 30)
    sent: list[date] = []
    while now < datetime(2027, 1, 2, tzinfo=UTC):
        due = next_report_due_at(now, BERLIN, send_at, last)
        days = due_days(now, BERLIN, send_at, last)
        if days:
            assert due == report_due_at(days[0], BERLIN, send_at) <= now
            last = days[-1]
            sent += days
            # Every due day sent: the next one is ahead, never more than a day and an hour.
            due = next_report_due_at(now, BERLIN, send_at, last)
        assert now < due <= now + timedelta(hours=25), (now, send_at)
        now += timedelta(minutes=30)
    assert sent == [date(2025, 12, 31) + timedelta(days=n) for n in range(366)]
