"""Which daily reports are due: pure rules, the clock passed in."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.reports import day_bounds, local_midnight

__all__ = ["day_bounds", "due_days", "local_midnight", "next_report_due_at", "report_due_at"]


def report_due_at(day: date, zone: ZoneInfo, send_at: time) -> datetime:
    """The report of `day` is due the next local day at `send_at`. A send time inside a DST gap is taken
    with the offset before the change, i.e. as late as the clock jumped (02:30 -> 03:30)."""
    return datetime.combine(day + timedelta(days=1), send_at, tzinfo=zone).astimezone(UTC)


def _newest_due_day(now: datetime, zone: ZoneInfo, send_at: time) -> date:
    """The newest day whose send time has passed at `now`: yesterday, or the day before."""
    yesterday = now.astimezone(zone).date() - timedelta(days=1)
    return yesterday if report_due_at(yesterday, zone, send_at) <= now else yesterday - timedelta(days=1)


def _first_owed_day(
    now: datetime, zone: ZoneInfo, send_at: time, last_sent: date | None, max_days: int
) -> date:
    """The oldest day still to be reported, due or not yet: the day after the newest sent one, but no
    older than `max_days` due days back. With nothing ever sent, yesterday."""
    if last_sent is None:
        return now.astimezone(zone).date() - timedelta(days=1)
    return max(
        last_sent + timedelta(days=1), _newest_due_day(now, zone, send_at) - timedelta(days=max_days - 1)
    )


def due_days(
    now: datetime, zone: ZoneInfo, send_at: time, last_sent: date | None, *, max_days: int = 31
) -> list[date]:
    """The days whose report is due and not yet sent, oldest first.

    Every day after the newest sent one is due once its send time passed. With nothing ever sent only
    yesterday counts, so a fresh installation does not mail its whole history; at most `max_days`."""
    first = _first_owed_day(now, zone, send_at, last_sent, max_days)
    newest = _newest_due_day(now, zone, send_at)
    return [first + timedelta(days=n) for n in range((newest - first).days + 1)]


def next_report_due_at(
    now: datetime, zone: ZoneInfo, send_at: time, last_sent: date | None, *, max_days: int = 31
) -> datetime:
    """When the oldest report not yet sent was (in the past: it is owed now) or will be (in the future)
    due: the first of `due_days` if any, else the day after the newest sent one, or yesterday's while
    nothing was ever sent. The instant an overdue report is measured from, whatever `send_at` is."""
    return report_due_at(_first_owed_day(now, zone, send_at, last_sent, max_days), zone, send_at)
