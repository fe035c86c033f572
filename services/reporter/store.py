"""The reporter's SQL: recording outcomes, reading a day's figures, and the report_runs rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime

from loguru import logger
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.reporter.report import MailingFigures
from shared.contracts import MessageOutcome
from shared.messages import FINAL_SQL
from shared.models import ReportOutcome

# One reporter sends at a time, across processes (a session lock: released if the process dies).
REPORT_LOCK_KEY = 0x7265706F7274  # "report"


# Rows per INSERT: 6 parameters each, well under PostgreSQL's 65,535 parameters a statement.
INSERT_CHUNK = 5_000


async def record_outcomes(engine: AsyncEngine, outcomes: Sequence[MessageOutcome]) -> list[int]:
    """Store outcomes not seen before (all in one transaction); returns the message ids inserted."""
    rows = [
        {
            "message_id": o.message_id,
            "mailing_id": o.mailing_id,
            "client_id": o.client_id,
            "status": o.status,
            "attempts": o.attempts,
            "occurred_at": o.occurred_at,
        }
        for o in outcomes
    ]
    inserted: list[int] = []
    async with engine.begin() as conn:
        for first in range(0, len(rows), INSERT_CHUNK):
            statement = (
                insert(ReportOutcome)
                .values(rows[first : first + INSERT_CHUNK])
                .on_conflict_do_nothing(index_elements=[ReportOutcome.message_id])
                .returning(ReportOutcome.message_id)
            )
            inserted += (await conn.execute(statement)).scalars()
    return inserted


async def try_lock(conn: AsyncConnection) -> bool:
    locked = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": REPORT_LOCK_KEY}))
    await conn.commit()
    return locked


async def unlock(conn: AsyncConnection) -> None:
    """Release the lock whatever state the tick left the session in; if even that fails, drop the
    connection: closing the session is what releases a session lock for sure."""
    try:
        await conn.rollback()
        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": REPORT_LOCK_KEY})
        await conn.commit()
    except Exception:
        logger.exception("could not release the report lock; closing its connection instead")
        await conn.invalidate()


async def last_sent_day(conn: AsyncConnection) -> date | None:
    day = await conn.scalar(text("SELECT max(day) FROM report_runs WHERE status = 'sent'"))
    await conn.commit()
    return day if isinstance(day, date) else None


async def oldest_unsent_day(conn: AsyncConnection) -> date | None:
    """A day whose report was begun but never sent (SMTP down, say), or None."""
    day = await conn.scalar(text("SELECT min(day) FROM report_runs WHERE status = 'sending'"))
    await conn.commit()
    return day if isinstance(day, date) else None


async def failed_attempt(conn: AsyncConnection, day: date) -> tuple[int, datetime] | None:
    """(attempts, when the last one began) if the day's last attempt failed, else None."""
    row = (
        await conn.execute(
            text(
                "SELECT attempts, started_at FROM report_runs"
                " WHERE day = :d AND status = 'sending' AND last_error IS NOT NULL"
            ),
            {"d": day},
        )
    ).one_or_none()
    await conn.commit()
    return None if row is None else (int(row[0]), row[1])


async def begin_run(conn: AsyncConnection, day: date, now: datetime) -> tuple[int, str | None] | None:
    """Count an attempt and mark the day 'sending'. Returns the attempts made before this one and how the
    last one ended (its error, or None when it never recorded an end), or None when the day is sent."""
    row = (
        await conn.execute(
            text("SELECT status, attempts, last_error FROM report_runs WHERE day = :d FOR UPDATE"),
            {"d": day},
        )
    ).one_or_none()
    if row is not None and row[0] == "sent":
        await conn.commit()
        return None
    if row is None:
        await conn.execute(
            text(
                "INSERT INTO report_runs (day, status, attempts, started_at) VALUES (:d, 'sending', 1, :now)"
            ),
            {"d": day, "now": now},
        )
    else:
        await conn.execute(
            text(
                "UPDATE report_runs SET attempts = attempts + 1, started_at = :now, last_error = NULL"
                " WHERE day = :d"
            ),
            {"d": day, "now": now},
        )
    await conn.commit()
    return (0, None) if row is None else (int(row[1]), row[2])


async def finish_run(conn: AsyncConnection, day: date, now: datetime, mail_message_id: str) -> None:
    await conn.execute(
        text(
            "UPDATE report_runs SET status = 'sent', sent_at = :now, last_error = NULL,"
            " mail_message_id = :mid WHERE day = :d"
        ),
        {"d": day, "now": now, "mid": mail_message_id},
    )
    await conn.commit()


async def fail_run(conn: AsyncConnection, day: date, error: str) -> None:
    await conn.execute(
        text("UPDATE report_runs SET last_error = :e WHERE day = :d"), {"d": day, "e": error[:2000]}
    )
    await conn.commit()


async def backfill_outcomes(conn: AsyncConnection, start: datetime, end: datetime) -> int:
    """Record the messages that became final in [start, end) but whose event never arrived: a crash
    between a status commit and its event, or a final status set where no event is published (the API's
    cancellations). A final row's `updated_at` is when it became final: a final status never changes."""
    result = await conn.execute(
        text(
            "INSERT INTO report_outcomes (message_id, mailing_id, client_id, status, attempts, occurred_at)"
            " SELECT id, mailing_id, client_id, status, attempts, updated_at FROM messages"
            f" WHERE status IN {FINAL_SQL} AND updated_at >= :s AND updated_at < :e"
            " ON CONFLICT (message_id) DO NOTHING"
        ),
        {"s": start, "e": end},
    )
    await conn.commit()
    return int(getattr(result, "rowcount", 0) or 0)


async def day_figures(conn: AsyncConnection, start: datetime, end: datetime) -> list[MailingFigures]:
    """Per mailing with outcomes in [start, end): counts by final status that day, and its totals now."""
    day: dict[int, dict[str, int]] = defaultdict(dict)
    rows = await conn.execute(
        text(
            "SELECT mailing_id, status, count(*) FROM report_outcomes"
            " WHERE occurred_at >= :s AND occurred_at < :e GROUP BY mailing_id, status"
        ),
        {"s": start, "e": end},
    )
    for mailing_id, status, n in rows:
        day[int(mailing_id)][str(status)] = int(n)
    ids = sorted(day)
    totals: dict[int, dict[str, int]] = defaultdict(dict)
    texts: dict[int, str] = {}
    if ids:
        rows = await conn.execute(
            text(
                "SELECT mailing_id, status, count(*) FROM messages"
                " WHERE mailing_id = ANY(:ids) GROUP BY mailing_id, status"
            ),
            {"ids": ids},
        )
        for mailing_id, status, n in rows:
            totals[int(mailing_id)][str(status)] = int(n)
        result = await conn.execute(text("SELECT id, text FROM mailings WHERE id = ANY(:ids)"), {"ids": ids})
        texts = {int(i): str(t) for i, t in result}
    await conn.commit()
    return [MailingFigures(i, texts.get(i), day[i], totals[i]) for i in ids]
