"""PostgreSQL side of the sender: the batched claim, mailing state, and batched outcome writes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.sender.checks import Claim, MailingInfo
from shared.domain.windows import DailyWindow
from shared.messages import FINAL_SQL

_MAILING_COLUMNS = "g.id, g.text, g.status, g.end_at, g.window_start, g.window_end, g.deleted_at IS NOT NULL"

# The two hottest statements of the sender run through plain psycopg, each on a connection of its own:
# a round trip cheaper than through SQLAlchemy's pool, transaction and row layers. Parameters go in
# binary (%(name)b) and rows come back binary: arrays of ids and timestamps dump 4-20x faster than
# as text, and timestamps load faster too.
# The mailing's state is not joined in: callers read it from their cache (no older than the recheck
# delay), so each claimed row brings only its own columns.
_CLAIM = """
    UPDATE messages AS m
    SET lease_until = now() + make_interval(secs => %(lease)b), attempts = m.attempts + 1, updated_at = now()
    FROM clients AS c
    WHERE m.id = ANY(%(ids)b::bigint[])
      AND m.status IN ('queued', 'retrying')
      AND (m.lease_until IS NULL OR m.lease_until < now())
      AND c.id = m.client_id
    RETURNING m.id, m.mailing_id, m.client_id, m.attempts, c.phone, c.timezone, c.deleted_at IS NOT NULL
    """

_MAILINGS = text(f"SELECT {_MAILING_COLUMNS} FROM mailings AS g WHERE g.id = ANY(CAST(:ids AS bigint[]))")

# Every outcome but a success (see _WRITE_SENT): retrying, failed, expired, cancelled, or back to
# pending or queued.
_WRITE = f"""
    UPDATE messages AS m
    SET status = u.status,
        last_error = COALESCE(u.last_error, m.last_error),
        next_attempt_at = u.next_attempt_at,
        not_before = COALESCE(u.not_before, m.not_before),
        attempts = COALESCE(u.attempts, m.attempts),
        -- A message handed back is queued anew: the scheduler's sweep counts from here.
        queued_at = CASE WHEN u.status = 'queued' THEN now() ELSE m.queued_at END,
        lease_until = NULL,
        updated_at = now()
    FROM unnest(
        %(ids)b::bigint[], %(statuses)b::text[], %(errors)b::text[],
        %(next_at)b::timestamptz[], %(not_before)b::timestamptz[], %(attempts)b::int[]
    ) AS u(id, status, last_error, next_attempt_at, not_before, attempts)
    WHERE m.id = u.id AND m.status NOT IN {FINAL_SQL}
    RETURNING m.id, m.mailing_id, m.client_id, m.status, m.attempts, m.last_error
    """


# The common case, successes only: two arrays to send instead of six, and only the ids back (the
# writer has the rest from the claims).
_WRITE_SENT = f"""
    UPDATE messages AS m
    SET status = 'sent', sent_at = u.sent_at, lease_until = NULL, next_attempt_at = NULL, updated_at = now()
    FROM unnest(%(ids)b::bigint[], %(sent_at)b::timestamptz[]) AS u(id, sent_at)
    WHERE m.id = u.id AND m.status NOT IN {FINAL_SQL}
    RETURNING m.id
    """


_as_claim = partial(tuple.__new__, Claim)


class OutcomeRow(NamedTuple):
    """One status write other than `sent` (see `Store.write_sent`). `status` is the current one
    (queued/retrying) when the call never happened."""

    message_id: int
    status: str
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    not_before: datetime | None = None
    # The message's attempts after this write, when it changes (an attempt given back): set, not added,
    # so a write repeated after a lost reply (the writer retries) leaves the same row.
    attempts: int | None = None


class Written(NamedTuple):
    message_id: int
    mailing_id: int
    client_id: int
    status: str
    attempts: int
    last_error: str | None


def _mailing(row: Sequence[Any]) -> MailingInfo:
    mailing_id, body, status, end_at, window_start, window_end, deleted = row
    window = DailyWindow(window_start, window_end) if window_start is not None else None
    return MailingInfo(mailing_id, body, status, end_at, window, bool(deleted))


class _Connection:
    """One autocommit psycopg connection, opened on first use and again after any error."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        # Statements may come concurrently (psycopg queues them on the connection); opening may not.
        self._opening = asyncio.Lock()

    async def _open(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        async with self._opening:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=10
                )
            return self._conn

    async def fetch(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._open()
        try:
            cursor = await conn.execute(statement, params, prepare=True, binary=True)
            return await cursor.fetchall()
        except psycopg.Error:
            # The caller retries (the writer) or requeues (the claim) on a fresh connection. Only this
            # connection is dropped: a statement running on a newer one must not lose it.
            if self._conn is conn:
                self._conn = None
            await conn.close()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class Store:
    def __init__(self, engine: AsyncEngine, dsn: str) -> None:
        self.engine = engine
        self._claims = _Connection(dsn)
        self._writes = _Connection(dsn)

    async def close(self) -> None:
        await self._claims.close()
        await self._writes.close()

    async def claim(self, ids: Sequence[int], lease_seconds: float) -> list[Claim]:
        rows = await self._claims.fetch(_CLAIM, {"ids": list(ids), "lease": lease_seconds})
        if rows and len(rows[0]) != len(Claim._fields):
            raise RuntimeError(f"the claim returned {len(rows[0])} columns, a Claim has {len(Claim._fields)}")
        # The rows as they are, typed: Claim._make checks each one's length in Python, for 2k instructions.
        return list(map(_as_claim, rows))

    async def mailings(self, ids: Sequence[int]) -> dict[int, MailingInfo]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_MAILINGS, {"ids": list(ids)})).all()
        return {row[0]: _mailing(row) for row in rows}

    async def write(self, rows: Sequence[OutcomeRow]) -> list[Written]:
        """Write these outcomes; returns the rows written (a message already final is left as it is)."""
        params = {
            "ids": [r.message_id for r in rows],
            "statuses": [r.status for r in rows],
            "errors": [r.last_error for r in rows],
            "next_at": [r.next_attempt_at for r in rows],
            "not_before": [r.not_before for r in rows],
            "attempts": [r.attempts for r in rows],
        }
        return list(map(Written._make, await self._writes.fetch(_WRITE, params)))

    async def write_sent(self, ids: list[int], sent_at: list[datetime]) -> set[int]:
        """Mark these messages sent, each at its time; returns the ids written (not already final)."""
        rows = await self._writes.fetch(_WRITE_SENT, {"ids": ids, "sent_at": sent_at})
        return {row[0] for row in rows}
