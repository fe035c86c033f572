"""Which daily reports are due: pure rules, the clock passed in."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.reports import day_bounds, local_midnight

__all__ = ["day_bounds", "due_days", "local_midnight", "report_due_at"]


def report_due_at(day: date, zone: ZoneInfo, send_at: time) -> datetime:
    """The report of `day` is due the next local day at `send_at`. A send time inside a DST gap is taken
    with the offset before the change, i.e. as late as the clock jumped (02:30 -> 03:30)."""
    return datetime.combine(day + timedelta(days=1), send_at, tzinfo=zone).astimezone(UTC)


def due_days(
    now: datetime, zone: ZoneInfo, send_at: time, last_sent: date | None, *, max_days: int = 31
) -> list[date]:
    """The days whose report is due and not yet sent, oldest first.

    Every day after the newest sent one is due once its send time passed. With nothing ever sent only
    yesterday counts, so a fresh installation does not mail its whole history; at most `max_days`."""
    yesterday = now.astimezone(zone).date() - timedelta(days=1)
    newest = yesterday if report_due_at(yesterday, zone, send_at) <= now else yesterday - timedelta(days=1)
    if last_sent is None:
        return [yesterday] if newest == yesterday else []
    first = max(last_sent + timedelta(days=1), newest - timedelta(days=max_days - 1))
    return [first + timedelta(days=n) for n in range((newest - first).days + 1)]
