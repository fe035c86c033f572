"""PostgreSQL side of the sender: the batched claim, mailing state, and batched outcome writes."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.sender.checks import Claim, MailingInfo
from services.sender.outcome import Outcome
from shared.domain.filters import ClientFilter
from shared.domain.statuses import FINAL_SQL, IN_FLIGHT_SQL, MessageStatus
from shared.domain.windows import DailyWindow
from shared.settings import CommonSettings

_QUEUED, _SENT = MessageStatus.QUEUED.sql, MessageStatus.SENT.sql
_SENT_STATUS = MessageStatus.SENT
_MAILING_COLUMNS = (
    "g.id, g.text, g.status, g.end_at, g.window_start, g.window_end, g.deleted_at IS NOT NULL,"
    " g.filter_tags, g.filter_operator_codes"
)

# The two hottest statements of the sender run through plain psycopg, each on a connection of its own:
# a round trip cheaper than through SQLAlchemy's pool, transaction and row layers. Parameters go in
# binary (%(name)b) and rows come back binary: arrays of ids and timestamps dump and load much faster
# than as text (docs/benchmarks.md).
# The mailing's state is not joined in: callers read it from their cache (no older than the recheck
# delay), so each claimed row brings only its own columns.
_CLAIM = f"""
    WITH claimed AS (
        UPDATE messages AS m
        SET lease_until = now() + make_interval(secs => %(lease)b), attempts = m.attempts + 1,
            claim_token = %(token)b, updated_at = now()
        FROM clients AS c
        WHERE m.id = ANY(%(ids)b::bigint[])
          AND m.status IN {IN_FLIGHT_SQL}
          AND (m.lease_until IS NULL OR m.lease_until < now())
          -- A copy that comes before the retry delay is over is dropped: the delay's own copy follows.
          AND (m.status = {_QUEUED} OR m.next_attempt_at IS NULL
               OR m.next_attempt_at <= now() + make_interval(secs => %(early)b))
          AND c.id = m.client_id
        RETURNING m.id, m.mailing_id, m.client_id, m.attempts, c.phone, c.timezone,
            c.deleted_at IS NOT NULL AS client_deleted, c.tag, c.operator_code, m.claim_token,
            CASE WHEN m.status = {_QUEUED} THEN m.queued_at ELSE m.next_attempt_at END AS entered
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

_MAILINGS = text(f"SELECT {_MAILING_COLUMNS} FROM mailings AS g WHERE g.id = ANY(CAST(:ids AS bigint[]))")

# Every outcome but a success (see _WRITE_SENT): retrying, failed, expired, cancelled, or back to
# pending or queued. Each write applies only while the claim that made the call still holds the
# message: a sender whose lease ran out and passed to another can neither overwrite nor release it.
# A repeat of a write whose commit reply was lost (`write(..., repeat=True)`) also takes a final row its
# own claim left with the same status: what its first try wrote is counted and published all the same.
# That rests on every other statement that ends a message (the API's and the scheduler's cancels, the
# scheduler's finalize) clearing `claim_token`: a new one must do so too.
_WRITE = f"""
    UPDATE messages AS m
    SET status = u.status,
        last_error = COALESCE(u.last_error, m.last_error),
        next_attempt_at = u.next_attempt_at,
        not_before = COALESCE(u.not_before, m.not_before),
        attempts = COALESCE(u.attempts, m.attempts),
        -- A message handed back is queued anew: the scheduler's sweep counts from here.
        queued_at = CASE WHEN u.status = {_QUEUED} THEN now() ELSE m.queued_at END,
        lease_until = NULL,
        updated_at = now()
    FROM unnest(
        %(ids)b::bigint[], %(statuses)b::text[], %(errors)b::text[],
        %(next_at)b::timestamptz[], %(not_before)b::timestamptz[], %(attempts)b::int[],
        %(tokens)b::bigint[]
    ) AS u(id, status, last_error, next_attempt_at, not_before, attempts, token)
    WHERE m.id = u.id AND m.claim_token = u.token AND {{writable}}
    RETURNING m.id
    """


# The common case, successes only: three arrays to send instead of seven.
_WRITE_SENT = f"""
    UPDATE messages AS m
    SET status = {_SENT}, sent_at = u.sent_at, lease_until = NULL, next_attempt_at = NULL, updated_at = now()
    FROM unnest(%(ids)b::bigint[], %(sent_at)b::timestamptz[], %(tokens)b::bigint[]) AS u(id, sent_at, token)
    WHERE m.id = u.id AND m.claim_token = u.token AND {{writable}}
    RETURNING m.id
    """
_OPEN_ROW = f"m.status NOT IN {FINAL_SQL}"
# (first try, repeat) of each statement.
_WRITES = (
    _WRITE.replace("{writable}", _OPEN_ROW),
    _WRITE.replace("{writable}", f"({_OPEN_ROW} OR m.status = u.status)"),
)
_WRITES_SENT = (
    _WRITE_SENT.replace("{writable}", _OPEN_ROW),
    _WRITE_SENT.replace("{writable}", f"({_OPEN_ROW} OR m.status = {_SENT})"),
)


def _sent_params(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "ids": [o.claim.message_id for o in outcomes],
        "sent_at": [o.sent_at for o in outcomes],
        "tokens": [o.claim.token for o in outcomes],
    }


def _params(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "ids": [o.claim.message_id for o in outcomes],
        "statuses": [o.status for o in outcomes],
        "errors": [o.reason for o in outcomes],
        "next_at": [o.next_attempt_at for o in outcomes],
        "not_before": [o.not_before for o in outcomes],
        "attempts": [o.attempts for o in outcomes],
        "tokens": [o.claim.token for o in outcomes],
    }


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

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._open()
        try:
            async with asyncio.timeout(self.deadline):
                yield conn
        except (psycopg.Error, TimeoutError):
            # The caller retries (the writer) or requeues (the claim) on a fresh connection. Only this
            # connection is dropped: a statement running on a newer one must not lose it.
            if self._conn is conn:
                self._conn = None
            await conn.close()
            raise

    async def fetch(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self._using() as conn:
            cursor = await conn.execute(statement, params, prepare=True, binary=True)
            return await cursor.fetchall()

    async def fetch_ids(self, statements: Sequence[tuple[str, dict[str, Any]]]) -> set[int]:
        """Run these statements in one transaction (all are written or none); the ids their rows return."""
        ids: set[int] = set()
        async with self._using() as conn:
            # One statement commits on its own (autocommit): no BEGIN and COMMIT round trips for it.
            transaction = conn.transaction() if len(statements) > 1 else contextlib.nullcontext()
            async with transaction:
                for statement, params in statements:
                    cursor = await conn.execute(statement, params, prepare=True, binary=True)
                    ids.update([row[0] for row in await cursor.fetchall()])
        return ids

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
        return [Claim(*row) for row in rows]

    async def mailings(self, ids: Sequence[int]) -> dict[int, MailingInfo]:
        async with asyncio.timeout(self.deadline), self.engine.connect() as conn:
            rows = (await conn.execute(_MAILINGS, {"ids": list(ids)})).all()
        return {row[0]: _mailing(row) for row in rows}

    async def write(self, outcomes: Sequence[Outcome], *, repeat: bool = False) -> list[Outcome]:
        """Write these outcomes, successes and the rest in one transaction; returns those written (a
        message already final, or whose claim has passed on, is left as it is). `repeat`: the same
        outcomes again, after a try whose reply was lost (it may have committed)."""
        sent = _SENT_STATUS
        successes = [o for o in outcomes if o.status is sent]
        others = [o for o in outcomes if o.status is not sent] if len(successes) < len(outcomes) else []
        statements: list[tuple[str, dict[str, Any]]] = []
        if successes:
            statements.append((_WRITES_SENT[repeat], _sent_params(successes)))
        if others:
            statements.append((_WRITES[repeat], _params(others)))
        if not statements:
            return []
        written = await self._writes.fetch_ids(statements)
        return [o for o in outcomes if o.claim.message_id in written]
