"""The daily report's figures, in one place: the reporter e-mails them, the admin UI shows them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.domain.statuses import FINAL_MESSAGE_STATUSES, MessageStatus

ALL_STATUSES = tuple(s.value for s in MessageStatus)
FINAL_STATUSES = tuple(s.value for s in MessageStatus if s in FINAL_MESSAGE_STATUSES)
TEXT_PREVIEW = 60


@dataclass(frozen=True)
class MailingFigures:
    mailing_id: int
    text: str | None
    day: Mapping[str, int]
    totals: Mapping[str, int]

    @property
    def preview(self) -> str:
        if self.text is None:
            return "(mailing not found)"
        flat = " ".join(self.text.split())
        return flat if len(flat) <= TEXT_PREVIEW else flat[: TEXT_PREVIEW - 1] + "…"


@dataclass(frozen=True)
class DailyReport:
    day: date
    timezone: str
    mailings: Sequence[MailingFigures]

    @property
    def totals(self) -> dict[str, int]:
        return {s: sum(m.day.get(s, 0) for m in self.mailings) for s in FINAL_STATUSES}


# The days whose bounds exist in every timezone: a day's end in UTC, or its start, would fall outside
# what `datetime` holds for the first and last days of the calendar.
FIRST_DAY = date(1, 1, 2)
LAST_DAY = date(9999, 12, 30)


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant local day `day` begins (a midnight skipped by DST resolves to the first hour after)."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of local day `day` in UTC; 23 or 25 hours long on a DST change."""
    return local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone)


# The day's outcomes from the per-minute counts (migration 0008): a row per mailing, status and minute
# instead of one per outcome. Local midnights fall on whole minutes in every timezone in use today; a day
# bound that does not (a historical offset in seconds) counts the outcomes themselves.
_DAY_BY_MINUTE = text(
    "SELECT mailing_id, status, sum(count) FROM report_outcome_minutes"
    " WHERE minute >= :s AND minute < :e GROUP BY mailing_id, status HAVING sum(count) <> 0"
)
_DAY = text(
    "SELECT mailing_id, status, count(*) FROM report_outcomes"
    " WHERE occurred_at >= :s AND occurred_at < :e GROUP BY mailing_id, status"
)


def _whole_minutes(*instants: datetime) -> bool:
    return all(i.second == 0 and i.microsecond == 0 for i in instants)


async def day_figures(conn: AsyncConnection, start: datetime, end: datetime) -> list[MailingFigures]:
    """Per mailing with outcomes in [start, end): counts by final status that day (from the per-minute
    outcome counts), and its totals now (from the per-mailing status counts)."""
    day: dict[int, dict[str, int]] = defaultdict(dict)
    rows = await conn.execute(_DAY_BY_MINUTE if _whole_minutes(start, end) else _DAY, {"s": start, "e": end})
    for mailing_id, status, n in rows:
        day[int(mailing_id)][str(status)] = int(n)
    ids = sorted(day)
    totals: dict[int, dict[str, int]] = defaultdict(dict)
    texts: dict[int, str] = {}
    if ids:
        # From the counts the triggers on `messages` keep (migration 0007), a few rows per mailing, not
        # by counting every message of every mailing of the day.
        rows = await conn.execute(
            text(
                "SELECT mailing_id, status, sum(count) FROM mailing_status_counts"
                " WHERE mailing_id = ANY(:ids) GROUP BY mailing_id, status HAVING sum(count) <> 0"
            ),
            {"ids": ids},
        )
        for mailing_id, status, n in rows:
            totals[int(mailing_id)][str(status)] = int(n)
        result = await conn.execute(text("SELECT id, text FROM mailings WHERE id = ANY(:ids)"), {"ids": ids})
        texts = {int(i): str(t) for i, t in result}
    return [MailingFigures(i, texts.get(i), day[i], totals[i]) for i in ids]


async def daily_report(conn: AsyncConnection, day: date, timezone: str) -> DailyReport:
    """The report of local day `day` in `timezone`, as the daily e-mail tells it."""
    start, end = day_bounds(day, ZoneInfo(timezone))
    return DailyReport(day, timezone, await day_figures(conn, start, end))
