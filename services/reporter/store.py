"""The reporter's SQL: recording outcomes, reading a day's figures, and the report_runs rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any, cast

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import reports
from shared.contracts import MessageOutcome
from shared.domain.statuses import FINAL_SQL, ReportStatus
from shared.reports import MailingFigures

_SENT, _SENDING = ReportStatus.SENT.sql, ReportStatus.SENDING.sql
# One statement for any number of outcomes: six arrays, not six parameters a row (a statement takes at
# most 65,535 parameters), each sent as the text of an array literal. Prepared once a connection.
_RECORD = (
    "INSERT INTO report_outcomes (message_id, mailing_id, client_id, status, attempts, occurred_at)"
    " SELECT * FROM unnest(%(ids)s::bigint[], %(mailings)s::bigint[], %(clients)s::bigint[],"
    " %(statuses)s::text[], %(attempts)s::integer[], %(times)s::timestamptz[])"
    " ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
)


def array_literal(items: Sequence[str]) -> str:
    """PostgreSQL's text form of an array of the given elements, each already in its text form and
    needing no quotes (numbers, the statuses) or quoted (`quoted_time`). psycopg dumps a Python list an
    element at a time in Python; this is one join (docs/benchmarks.md, "Where the end-to-end CPU goes":
    a third less of the reporter's CPU an outcome than the binary dump)."""
    return "{" + ",".join(items) + "}"


def quoted_time(at: datetime) -> str:
    """An element of a timestamptz array literal (a time without offset is read in the session's zone,
    as psycopg's dump of it was)."""
    return f'"{at.isoformat()}"'


async def record_outcomes(engine: AsyncEngine, outcomes: Sequence[MessageOutcome]) -> list[int]:
    """Store outcomes not seen before (all in one statement); returns the message ids inserted."""
    # An event's outcomes mostly share one time: each is written out once.
    times: dict[datetime, str] = {}
    params = {
        "ids": array_literal([str(o.message_id) for o in outcomes]),
        "mailings": array_literal([str(o.mailing_id) for o in outcomes]),
        "clients": array_literal([str(o.client_id) for o in outcomes]),
        "statuses": array_literal([o.status.value for o in outcomes]),
        "attempts": array_literal([str(o.attempts) for o in outcomes]),
        "times": array_literal(
            [
                times.get(o.occurred_at) or times.setdefault(o.occurred_at, quoted_time(o.occurred_at))
                for o in outcomes
            ]
        ),
    }
    async with engine.begin() as conn:
        # The pooled connection's own psycopg connection, inside the transaction begun above.
        driver = cast(
            "psycopg.AsyncConnection[tuple[Any, ...]]", (await conn.get_raw_connection()).driver_connection
        )
        cursor = await driver.execute(_RECORD, params, prepare=True)
        return [row[0] for row in await cursor.fetchall()]


async def last_sent_day(engine: AsyncEngine) -> date | None:
    async with engine.connect() as conn:
        day = await conn.scalar(text(f"SELECT max(day) FROM report_runs WHERE status = {_SENT}"))
    return day if isinstance(day, date) else None


async def oldest_unsent_day(engine: AsyncEngine) -> date | None:
    """A day whose report was begun but never sent (SMTP down, say), or None."""
    async with engine.connect() as conn:
        day = await conn.scalar(text(f"SELECT min(day) FROM report_runs WHERE status = {_SENDING}"))
    return day if isinstance(day, date) else None


async def failed_attempt(engine: AsyncEngine, day: date) -> tuple[int, datetime] | None:
    """(attempts, when the last one began) if the day's last attempt failed, else None."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT attempts, started_at FROM report_runs"
                    f" WHERE day = :d AND status = {_SENDING} AND last_error IS NOT NULL"
                ),
                {"d": day},
            )
        ).one_or_none()
    return None if row is None else (int(row[0]), row[1])


@dataclass(frozen=True)
class Claim:
    """The day is this holder's until its lease ends. `attempts`: those made before this one;
    `last_error`: how the last of them ended, None when it never recorded an end."""

    attempts: int
    last_error: str | None


class Refused(StrEnum):
    SENT = ReportStatus.SENT.value
    HELD = "held"  # by another reporter, under a lease that has not run out


async def claim_run(
    engine: AsyncEngine, day: date, holder: str, lease_seconds: float, now: datetime
) -> Claim | Refused:
    """Count an attempt, mark the day as sending and lease it to `holder`, unless it is sent or another
    holder's lease is still running. The lease runs on the database's clock, the one all replicas share."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO report_runs (day, status, attempts, started_at)"
                f" VALUES (:d, {_SENDING}, 0, :now)"
                " ON CONFLICT (day) DO NOTHING"
            ),
            {"d": day, "now": now},
        )
        # PostgreSQL before 18 cannot return a row's values from before an update; the row lock taken
        # here keeps them true until the update below.
        status, attempts, last_error, free = (
            await conn.execute(
                text(
                    "SELECT status, attempts, last_error,"
                    " lease_until IS NULL OR lease_until < now() OR holder = :me"
                    " FROM report_runs WHERE day = :d FOR UPDATE"
                ),
                {"d": day, "me": holder},
            )
        ).one()
        if status == ReportStatus.SENT:
            return Refused.SENT
        if not free:
            return Refused.HELD
        await conn.execute(
            text(
                "UPDATE report_runs SET attempts = attempts + 1, started_at = :now, last_error = NULL,"
                " holder = :me, lease_until = now() + make_interval(secs => :lease) WHERE day = :d"
            ),
            {"d": day, "now": now, "me": holder, "lease": lease_seconds},
        )
    return Claim(int(attempts), last_error)


async def finish_run(
    engine: AsyncEngine, day: date, holder: str, now: datetime, mail_message_id: str
) -> bool:
    """Mark the day sent and end the lease; False (nothing written) when `holder` no longer holds it."""
    async with engine.begin() as conn:
        result = await conn.execute(
            text(
                f"UPDATE report_runs SET status = {_SENT}, sent_at = :now, last_error = NULL,"
                " mail_message_id = :mid, lease_until = NULL"
                f" WHERE day = :d AND status = {_SENDING} AND holder = :me"
            ),
            {"d": day, "now": now, "mid": mail_message_id, "me": holder},
        )
    return bool(getattr(result, "rowcount", 0))


async def fail_run(engine: AsyncEngine, day: date, holder: str, error: str) -> bool:
    """Record the error and end the lease, so any reporter may retry once the pause is over; False
    (nothing written) when `holder` no longer holds the day."""
    async with engine.begin() as conn:
        result = await conn.execute(
            text(
                "UPDATE report_runs SET last_error = :e, lease_until = NULL"
                f" WHERE day = :d AND status = {_SENDING} AND holder = :me"
            ),
            {"d": day, "e": error[:2000], "me": holder},
        )
    return bool(getattr(result, "rowcount", 0))


async def backfill_outcomes(engine: AsyncEngine, start: datetime, end: datetime) -> int:
    """Record the messages that became final in [start, end) but whose event never arrived: a crash
    between a status commit and its event, or a final status set where no event is published (the API's
    cancellations). A final row's `updated_at` is when it became final: a final status never changes."""
    async with engine.begin() as conn:
        result = await conn.execute(
            text(
                "INSERT INTO report_outcomes"
                " (message_id, mailing_id, client_id, status, attempts, occurred_at)"
                " SELECT id, mailing_id, client_id, status, attempts, updated_at FROM messages"
                f" WHERE status IN {FINAL_SQL} AND updated_at >= :s AND updated_at < :e"
                " ON CONFLICT (message_id) DO NOTHING"
            ),
            {"s": start, "e": end},
        )
    return int(getattr(result, "rowcount", 0) or 0)


async def day_figures(engine: AsyncEngine, start: datetime, end: datetime) -> list[MailingFigures]:
    """Per mailing with outcomes in [start, end): counts by final status that day, and its totals now."""
    async with engine.connect() as conn:
        return await reports.day_figures(conn, start, end)
