"""PostgreSQL side of the sender: the batched claim, mailing state, and batched outcome writes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.sender.checks import Claim, MailingInfo
from shared.domain.filters import ClientFilter
from shared.domain.windows import DailyWindow
from shared.messages import FINAL_SQL
from shared.settings import CommonSettings

_MAILING_COLUMNS = (
    "g.id, g.text, g.status, g.end_at, g.window_start, g.window_end, g.deleted_at IS NOT NULL,"
    " g.filter_tags, g.filter_operator_codes"
)

# The two hottest statements of the sender run through plain psycopg, each on a connection of its own:
# a round trip cheaper than through SQLAlchemy's pool, transaction and row layers. Parameters go in
# binary (%(name)b) and rows come back binary: arrays of ids and timestamps dump 4-20x faster than
# as text, and timestamps load faster too.
# The mailing's state is not joined in: callers read it from their cache (no older than the recheck
# delay), so each claimed row brings only its own columns.
_CLAIM = """
    WITH claimed AS (
        UPDATE messages AS m
        SET lease_until = now() + make_interval(secs => %(lease)b), attempts = m.attempts + 1,
            claim_token = %(token)b, updated_at = now()
        FROM clients AS c
        WHERE m.id = ANY(%(ids)b::bigint[])
          AND m.status IN ('queued', 'retrying')
          AND (m.lease_until IS NULL OR m.lease_until < now())
          -- A copy that comes before the retry delay is over is dropped: the delay's own copy follows.
          AND (m.status = 'queued' OR m.next_attempt_at IS NULL
               OR m.next_attempt_at <= now() + make_interval(secs => %(early)b))
          AND c.id = m.client_id
        RETURNING m.id, m.mailing_id, m.client_id, m.attempts, c.phone, c.timezone,
            c.deleted_at IS NOT NULL AS client_deleted, c.tag, c.operator_code, m.claim_token,
            CASE WHEN m.status = 'queued' THEN m.queued_at ELSE m.next_attempt_at END AS entered
    ), progress AS (
        INSERT INTO send_progress AS p (queue, consumed_through)
        SELECT %(queue)s, max(entered) FROM claimed HAVING max(entered) IS NOT NULL
        ON CONFLICT (queue) DO UPDATE
        SET consumed_through = greatest(p.consumed_through, excluded.consumed_through), updated_at = now()
    )
    SELECT id, mailing_id, client_id, attempts, phone, timezone, client_deleted, tag, operator_code,
        claim_token
    FROM claimed
    """

# How early a retry's own copy may come and still be claimed: the broker's TTL starts after the row was
# written, so only the two machines' clocks can make it early.
RETRY_CLOCK_TOLERANCE_SECONDS = 0.5

_MAILINGS = text(f"SELECT {_MAILING_COLUMNS} FROM mailings AS g WHERE g.id = ANY(CAST(:ids AS bigint[]))")  # noqa: S608 the interpolated parts are constants (status SQL forms, column lists), values are bind parameters

# Every outcome but a success (see _WRITE_SENT): retrying, failed, expired, cancelled, or back to
# pending or queued. Each write applies only while the claim that made the call still holds the
# message: a sender whose lease ran out and passed to another can neither overwrite nor release it.
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
        %(next_at)b::timestamptz[], %(not_before)b::timestamptz[], %(attempts)b::int[],
        %(tokens)b::bigint[]
    ) AS u(id, status, last_error, next_attempt_at, not_before, attempts, token)
    WHERE m.id = u.id AND m.claim_token = u.token AND m.status NOT IN {FINAL_SQL}
    RETURNING m.id, m.mailing_id, m.client_id, m.status, m.attempts, m.last_error
    """  # noqa: S608 constants (status SQL forms, columns) only; values are bind parameters


# The common case, successes only: two arrays to send instead of six, and only the ids back (the
# writer has the rest from the claims).
_WRITE_SENT = f"""
    UPDATE messages AS m
    SET status = 'sent', sent_at = u.sent_at, lease_until = NULL, next_attempt_at = NULL, updated_at = now()
    FROM unnest(%(ids)b::bigint[], %(sent_at)b::timestamptz[], %(tokens)b::bigint[]) AS u(id, sent_at, token)
    WHERE m.id = u.id AND m.claim_token = u.token AND m.status NOT IN {FINAL_SQL}
    RETURNING m.id
    """  # noqa: S608 constants (status SQL forms, columns) only; values are bind parameters


_as_claim = partial(tuple.__new__, Claim)


class OutcomeRow(NamedTuple):
    """One status write other than `sent` (see `Store.write_sent`). `status` is the current one
    (queued/retrying) when the call never happened."""

    message_id: int
    token: int
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
    mailing_id, body, status, end_at, window_start, window_end, deleted, tags, codes = row
    window = DailyWindow(window_start, window_end) if window_start is not None else None
    client_filter = ClientFilter(frozenset(tags), frozenset(codes))
    return MailingInfo(mailing_id, body, status, end_at, window, bool(deleted), client_filter)


class _Connection:
    """One autocommit psycopg connection, opened on first use and again after any error; no statement
    waits longer than `deadline` (a frozen connection never answers, not even a server timeout)."""

    def __init__(self, settings: CommonSettings) -> None:
        self.dsn = settings.psycopg_dsn
        self.connect_args = settings.db_connect_args()
        self.deadline = settings.db_deadline_seconds
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        # Statements may come concurrently (psycopg queues them on the connection); opening may not.
        self._opening = asyncio.Lock()

    async def _open(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        async with self._opening:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, **self.connect_args
                )
            return self._conn

    async def fetch(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._open()
        try:
            async with asyncio.timeout(self.deadline):
                cursor = await conn.execute(statement, params, prepare=True, binary=True)
                return await cursor.fetchall()
        except (psycopg.Error, TimeoutError):
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
    def __init__(self, engine: AsyncEngine, settings: CommonSettings, send_queue: str) -> None:
        self.engine = engine
        self.send_queue = send_queue
        self.deadline = settings.db_deadline_seconds
        self._claims = _Connection(settings)
        self._writes = _Connection(settings)

    async def close(self) -> None:
        await self._claims.close()
        await self._writes.close()

    async def claim(self, ids: Sequence[int], lease_seconds: float) -> list[Claim]:
        """Lease these messages under a new claim token; a message that is final, held by another
        claim or still inside its retry delay is left out (that copy is redundant)."""
        params = {
            "ids": list(ids),
            "lease": lease_seconds,
            "token": secrets.randbits(63),
            "early": RETRY_CLOCK_TOLERANCE_SECONDS,
            "queue": self.send_queue,
        }
        rows = await self._claims.fetch(_CLAIM, params)
        if rows and len(rows[0]) != len(Claim._fields):
            raise RuntimeError(f"the claim returned {len(rows[0])} columns, a Claim has {len(Claim._fields)}")
        # The rows as they are, typed: Claim._make checks each one's length in Python, for 2k instructions.
        return list(map(_as_claim, rows))

    async def mailings(self, ids: Sequence[int]) -> dict[int, MailingInfo]:
        async with asyncio.timeout(self.deadline), self.engine.connect() as conn:
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
            "tokens": [r.token for r in rows],
        }
        return list(map(Written._make, await self._writes.fetch(_WRITE, params)))

    async def write_sent(self, ids: list[int], sent_at: list[datetime], tokens: list[int]) -> set[int]:
        """Mark these messages sent, each at its time; returns the ids written (still held by their
        claim and not already final)."""
        rows = await self._writes.fetch(_WRITE_SENT, {"ids": ids, "sent_at": sent_at, "tokens": tokens})
        return {row[0] for row in rows}
