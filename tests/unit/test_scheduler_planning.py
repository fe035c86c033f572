from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

import pytest

from services.scheduler.planning import MailingPlan, chunks, plan_timezones, window_of
from services.scheduler.settings import SchedulerSettings
from shared.domain.windows import DailyWindow

pytestmark = pytest.mark.unit

START = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)


def _plan(window: DailyWindow | None = DailyWindow(time(9), time(21)), hours: int = 48) -> MailingPlan:
    return MailingPlan(1, START, START + timedelta(hours=hours), window, ("vip",), ("900",))


def test_each_timezone_gets_its_own_opening_once() -> None:
    zones = plan_timezones(_plan(), ["Asia/Vladivostok", "Europe/Moscow", "Europe/Moscow"], START)
    assert zones.timezones == ["Asia/Vladivostok", "Europe/Moscow"]
    # 06:00 UTC: 16:00 in Vladivostok (open), 09:00 in Moscow (just opened).
    assert zones.not_befores == [START, START]


def test_timezone_without_an_opening_before_the_end_plans_nothing() -> None:
    plan = _plan(DailyWindow(time(9), time(10)), hours=2)
    zones = plan_timezones(plan, ["Europe/Moscow", "Asia/Vladivostok"], START)
    assert dict(zip(zones.timezones, zones.not_befores, strict=True)) == {
        "Asia/Vladivostok": None,
        "Europe/Moscow": START,
    }


def test_planning_after_the_start_never_plans_in_the_past() -> None:
    later = START + timedelta(hours=3)
    zones = plan_timezones(_plan(window=None), ["Europe/Moscow"], later)
    assert zones.not_befores == [later]


def test_signature_changes_with_filter_window_and_period_only() -> None:
    plan = _plan()
    assert plan.signature == replace(plan, id=2).signature
    assert plan.signature == replace(plan, tags=("vip",)).signature
    assert plan.signature != replace(plan, tags=("other",)).signature
    assert plan.signature != replace(plan, operator_codes=()).signature
    assert plan.signature != replace(plan, window=None).signature
    assert plan.signature != replace(plan, end_at=plan.end_at + timedelta(hours=1)).signature


def test_window_of_missing_times_is_no_window() -> None:
    assert window_of(None, None) is None
    assert window_of(time(22), time(6)) == DailyWindow(time(22), time(6))


def test_chunks_cover_every_item_in_order() -> None:
    assert [list(c) for c in chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    assert list(chunks([], 3)) == []


def test_scheduler_settings_read_their_own_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILING_SCHEDULER_REQUEUE_AFTER_SECONDS", "30")
    monkeypatch.setenv("MAILING_SCHEDULER_MAX_OUTSTANDING", "0")
    monkeypatch.setenv("MAILING_AMQP_NAMESPACE", "elsewhere")
    settings = SchedulerSettings(_env_file=None)
    assert (settings.requeue_after_seconds, settings.max_outstanding) == (30.0, 0)
    assert settings.amqp_namespace == "elsewhere"
    assert settings.metrics_port == 9101
