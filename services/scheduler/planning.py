"""Pure planning: which send instant each timezone gets, and when a mailing must be re-expanded."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import TypeVar

from shared.domain.windows import DailyWindow, plan_send_time

T = TypeVar("T")


@dataclass(frozen=True)
class MailingPlan:
    """What an expansion needs to know about a mailing, as read from its row."""

    id: int
    start_at: datetime
    end_at: datetime
    window: DailyWindow | None
    tags: tuple[str, ...]
    operator_codes: tuple[str, ...]

    @property
    def signature(self) -> str:
        parts = (
            ",".join(sorted(self.tags)),
            ",".join(sorted(self.operator_codes)),
            self.window.start.isoformat() if self.window else "",
            self.window.end.isoformat() if self.window else "",
            self.start_at.isoformat(),
            self.end_at.isoformat(),
        )
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


def window_of(start: time | None, end: time | None) -> DailyWindow | None:
    return None if start is None or end is None else DailyWindow(start, end)


@dataclass(frozen=True)
class TimezonePlan:
    """Parallel arrays for `unnest`: each timezone and its send instant (None: never before the end)."""

    timezones: list[str]
    not_befores: list[datetime | None]


def plan_timezones(plan: MailingPlan, timezones: Iterable[str], now: datetime) -> TimezonePlan:
    zones = sorted(set(timezones))
    return TimezonePlan(
        zones, [plan_send_time(plan.window, tz, plan.start_at, plan.end_at, now) for tz in zones]
    )


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for offset in range(0, len(items), size):
        yield items[offset : offset + size]
