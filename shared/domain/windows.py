import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.domain.errors import DomainValidationError

# Longest closed stretch possible: a window skipped by a DST gap opens the next day.
_HORIZON = timedelta(days=4)
_SCAN_STEP = timedelta(hours=1)
_TIME_RE = re.compile(r"([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?", re.ASCII)


@dataclass(frozen=True)
class DailyWindow:
    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise DomainValidationError("window", "window times are local wall-clock times without a zone")
        if self.start == self.end:
            raise DomainValidationError("window", "window start and end must differ")

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


def _parse_time(value: str, which: str) -> time:
    match = _TIME_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise DomainValidationError("window", f"window {which} must look like HH:MM, got {value!r}")
    hour, minute, second = (int(part) if part else 0 for part in match.groups())
    try:
        return time(hour, minute, second)
    except ValueError as exc:
        raise DomainValidationError("window", f"window {which} {value!r} is not a time of day") from exc


def parse_window(start: str, end: str) -> DailyWindow:
    return DailyWindow(_parse_time(start, "start"), _parse_time(end, "end"))


def _to_utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return at.astimezone(UTC)


def _local_time(zone: ZoneInfo, instant: datetime) -> time:
    return instant.astimezone(zone).time()


def is_open(window: DailyWindow | None, tz: str, at: datetime) -> bool:
    instant = _to_utc(at)
    return window is None or window.contains(_local_time(ZoneInfo(tz), instant))


def _instants_of(zone: ZoneInfo, day: date, wall: time) -> set[datetime]:
    """Every instant at which the wall clock shows `wall` on `day`: none in a gap, two in a fold."""
    naive = datetime.combine(day, wall)
    found = set()
    for fold in (0, 1):
        instant = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == naive:
            found.add(instant)
    return found


def _first_with_offset(zone: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    target = hi.astimezone(zone).utcoffset()
    low, high = 0, int((hi - lo).total_seconds())
    while high - low > 1:
        mid = (low + high) // 2
        if (lo + timedelta(seconds=mid)).astimezone(zone).utcoffset() == target:
            high = mid
        else:
            low = mid
    return lo + timedelta(seconds=high)


def _offset_changes(zone: ZoneInfo, start: datetime, stop: datetime) -> list[datetime]:
    """Instants in (start, stop] where the zone's UTC offset changes, i.e. the wall clock jumps."""
    changes = []
    here = start.replace(microsecond=0)
    offset = here.astimezone(zone).utcoffset()
    while here < stop:
        there = here + _SCAN_STEP
        there_offset = there.astimezone(zone).utcoffset()
        if there_offset != offset:
            changes.append(_first_with_offset(zone, here, there))
        here, offset = there, there_offset
    return changes


def _next_state_change(
    zone: ZoneInfo, at: datetime, boundary: time, wanted: Callable[[datetime], bool]
) -> datetime:
    # The state can only change when the wall clock passes the boundary or jumps at a DST change.
    today = at.astimezone(zone).date()
    candidates: set[datetime] = set(_offset_changes(zone, at, at + _HORIZON))
    for shift in range(-1, _HORIZON.days + 1):
        candidates |= _instants_of(zone, today + timedelta(days=shift), boundary)
    good = [candidate for candidate in candidates if candidate >= at and wanted(candidate)]
    if not good:
        raise ValueError(f"no window change within {_HORIZON.days} days in {zone.key}")
    return min(good)


def next_opening(window: DailyWindow | None, tz: str, at: datetime) -> datetime:
    instant = _to_utc(at)
    if window is None:
        return instant
    zone = ZoneInfo(tz)
    if window.contains(_local_time(zone, instant)):
        return instant
    return _next_state_change(zone, instant, window.start, lambda c: window.contains(_local_time(zone, c)))


def plan_send_time(
    window: DailyWindow | None, tz: str, start_at: datetime, end_at: datetime, now: datetime
) -> datetime | None:
    earliest = max(_to_utc(start_at), _to_utc(now))
    opening = next_opening(window, tz, earliest)
    return None if opening >= _to_utc(end_at) else opening


def window_closes_at(window: DailyWindow | None, tz: str, at: datetime) -> datetime | None:
    instant = _to_utc(at)
    if window is None:
        return None
    zone = ZoneInfo(tz)
    if not window.contains(_local_time(zone, instant)):
        raise ValueError("window is not open at the given instant")
    return _next_state_change(zone, instant, window.end, lambda c: not window.contains(_local_time(zone, c)))
