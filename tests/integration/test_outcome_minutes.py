"""The per-minute outcome counts (migration 0008) against real PostgreSQL: after inserts (the reporter's,
duplicates dropped), updates, deletes (an operator's requeue) and truncate they equal a count of the
outcomes by minute, and the daily report read from them equals the one counted from the outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.db import make_engine
from shared.reports import _DAY, day_figures
from shared.settings import CommonSettings

from .test_sender_support import Db

pytestmark = pytest.mark.integration

MINUTE = "date_bin(interval '1 minute', occurred_at, timestamptz 'epoch')"


async def assert_exact(db: Db) -> None:
    kept = await db.execute(
        "SELECT mailing_id, status, minute, count FROM report_outcome_minutes WHERE count <> 0"
        " ORDER BY 1, 2, 3"
    )
    actual = await db.execute(
        f"SELECT mailing_id, status, {MINUTE}, count(*) FROM report_outcomes"
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    assert kept == actual


async def test_every_write_on_the_outcomes_keeps_the_minutes_exact_and_the_report_equal(
    settings: CommonSettings,
) -> None:
    db = Db(settings.psycopg_dsn)
    start = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)  # local midnight in Moscow
    insert = (
        "INSERT INTO report_outcomes (message_id, mailing_id, client_id, status, attempts, occurred_at)"
        " SELECT g, 1 + g %% 3, g, (ARRAY['sent', 'failed', 'expired', 'cancelled'])[1 + g %% 4], 1,"
        " %s::timestamptz + make_interval(secs => g * 37) FROM generate_series(%s::int, %s::int) AS g"
        " ON CONFLICT (message_id) DO NOTHING"
    )
    await db.execute(insert, (start - timedelta(hours=2), 1, 3000))
    await assert_exact(db)
    # A re-delivered batch: its duplicates are dropped and counted nowhere.
    await db.execute(insert, (start - timedelta(hours=2), 2900, 3100))
    await assert_exact(db)
    # An operator's requeue drops outcomes; nothing updates them today, the triggers follow anyway.
    await db.execute("DELETE FROM report_outcomes WHERE message_id %% 5 = 0")
    await db.execute(
        "UPDATE report_outcomes SET occurred_at = occurred_at + interval '90 seconds'"
        " WHERE message_id %% 7 = 0"
    )
    await assert_exact(db)
    engine = make_engine(settings)
    try:
        async with engine.connect() as conn:
            end = start + timedelta(days=1)
            figures = await day_figures(conn, start, end)
            counted = await conn.execute(_DAY, {"s": start, "e": end})
            expected: dict[int, dict[str, int]] = {}
            for mailing_id, status, n in counted:
                expected.setdefault(int(mailing_id), {})[str(status)] = int(n)
            assert figures and {f.mailing_id: dict(f.day) for f in figures} == expected
    finally:
        await engine.dispose()
    await db.execute("TRUNCATE report_outcomes")
    assert await db.execute("SELECT count(*) FROM report_outcome_minutes") == [(0,)]
