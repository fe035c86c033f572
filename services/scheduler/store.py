"""Set-wise SQL of the scheduler. Every decision uses the `now` passed in, never the database clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scheduler.planning import MailingPlan, TimezonePlan, window_of
from shared.domain.statuses import (
    ACTIVE_MAILING_SQL,
    IN_FLIGHT_SQL,
    OPEN_SQL,
    MailingStatus,
    MessageStatus,
    Reason,
)

# Advisory-lock key space of the scheduler, so its per-mailing locks never collide with anyone else's.
_LOCK_SPACE = 0x5343 << 48

_QUEUED_VALUE, _EXPIRED_VALUE = MessageStatus.QUEUED.value, MessageStatus.EXPIRED.value
# The statuses the statements below quote, in their SQL form.
_PENDING, _QUEUED, _EXPIRED, _CANCELLED = (
    s.sql
    for s in (MessageStatus.PENDING, MessageStatus.QUEUED, MessageStatus.EXPIRED, MessageStatus.CANCELLED)
)
_RUNNING, _FINISHED, _MAILING_CANCELLED = (
    s.sql for s in (MailingStatus.RUNNING, MailingStatus.FINISHED, MailingStatus.CANCELLED)
)


@dataclass(frozen=True)
class MailingRow:
    plan: MailingPlan
    status: str
    deleted: bool
    expanded_at: datetime | None
    expansion_signature: str | None


@dataclass(frozen=True)
class Finalized:
    message_id: int
    mailing_id: int
    client_id: int
    status: str
    attempts: int
    reason: str | None


class Claimed(NamedTuple):
    """A message made `queued`, for the hand-over: a tuple, as thousands are made a chunk."""

    message_id: int
    mailing_id: int
    client_id: int


def _filter_sql(plan: MailingPlan, params: dict[str, Any]) -> str:
    conditions = ["TRUE"]
    if plan.tags:
        conditions.append("c.tag = ANY(CAST(:f_tags AS text[]))")
        params["f_tags"] = list(plan.tags)
    if plan.operator_codes:
        conditions.append("c.operator_code = ANY(CAST(:f_codes AS text[]))")
        params["f_codes"] = list(plan.operator_codes)
    return "(" + " AND ".join(conditions) + ")"


def _changed_sql(changed_since: datetime | None, params: dict[str, Any]) -> str:
    if changed_since is None:
        return ""
    params["changed_since"] = changed_since
    return "AND c.updated_at >= :changed_since"


async def try_lock_mailing(conn: AsyncConnection, mailing_id: int) -> bool:
    """Held until the transaction ends; another scheduler skips the mailing meanwhile."""
    result = await conn.execute(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _LOCK_SPACE | mailing_id}
    )
    return bool(result.scalar_one())


async def lock_mailing(conn: AsyncConnection, mailing_id: int) -> None:
    """The same lock, waited for: what holds it is a transaction of one chunk or one step."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_SPACE | mailing_id})


async def load_mailing(conn: AsyncConnection, mailing_id: int) -> MailingRow | None:
    row = (
        await conn.execute(
            text(
                "SELECT id, start_at, end_at, window_start, window_end, filter_tags, filter_operator_codes,"
                " status, deleted_at IS NOT NULL AS deleted, expanded_at, expansion_signature"
                " FROM mailings WHERE id = :id"
            ),
            {"id": mailing_id},
        )
    ).one_or_none()
    if row is None:
        return None
    plan = MailingPlan(
        id=row.id,
        start_at=row.start_at,
        end_at=row.end_at,
        window=window_of(row.window_start, row.window_end),
        tags=tuple(row.filter_tags),
        operator_codes=tuple(row.filter_operator_codes),
    )
    return MailingRow(plan, row.status, row.deleted, row.expanded_at, row.expansion_signature)


async def mailings_needing_attention(conn: AsyncConnection, now: datetime) -> list[int]:
    """Started non-final mailings, plus cancelled or deleted ones that still have unfinished messages."""
    result = await conn.execute(
        text(
            f"SELECT id FROM mailings WHERE status IN {ACTIVE_MAILING_SQL}"
            " AND (start_at <= :now OR deleted_at IS NOT NULL)"
            " UNION SELECT g.id FROM mailings g"
            f" WHERE (g.status = {_MAILING_CANCELLED} OR g.deleted_at IS NOT NULL)"
            f" AND EXISTS (SELECT 1 FROM messages m WHERE m.mailing_id = g.id AND m.status IN {OPEN_SQL})"
            " ORDER BY 1"
        ),
        {"now": now},
    )
    return list(result.scalars())


async def running_mailings(conn: AsyncConnection, now: datetime) -> list[int]:
    result = await conn.execute(
        text(
            f"SELECT id FROM mailings WHERE status = {_RUNNING} AND deleted_at IS NULL"
            " AND start_at <= :now AND end_at > :now ORDER BY id"
        ),
        {"now": now},
    )
    return list(result.scalars())


async def matching_timezones(
    conn: AsyncConnection, plan: MailingPlan, changed_since: datetime | None
) -> list[str]:
    params: dict[str, Any] = {}
    where = _filter_sql(plan, params)
    changed = _changed_sql(changed_since, params)
    result = await conn.execute(
        text(f"SELECT DISTINCT c.timezone FROM clients c WHERE c.deleted_at IS NULL AND {where} {changed}"),
        params,
    )
    return list(result.scalars())


def _finalized(rows: Sequence[Any], mailing_id: int) -> list[Finalized]:
    """Rows of (id, client_id, status, attempts, last_error): unpacked as tuples, as a lookup by name in
    SQLAlchemy's `Row` costs more than the rest of the loop (an end can take every message of a mailing)."""
    return [
        Finalized(id_, mailing_id, client, status, attempts, reason)
        for id_, client, status, attempts, reason in rows
    ]


@dataclass(frozen=True)
class ExpansionChunk:
    """What one chunk of an expansion wrote: None as `last_client_id` when no client was left."""

    last_client_id: int | None
    queued: list[Claimed]
    pending: int
    expired: list[Finalized]


async def insert_chunk(
    conn: AsyncConnection,
    plan: MailingPlan,
    zones: TimezonePlan,
    now: datetime,
    changed_since: datetime | None,
    *,
    after_client_id: int,
    limit: int,
    queue_first: int,
    skip_existing: bool = False,
) -> ExpansionChunk:
    """One row for each of the next `limit` matching clients by id, planned per timezone; an existing
    (mailing, client) is left alone. The row of one of the chunk's first `queue_first` clients that is due
    at `now` is written `queued` (the caller hands it to the sender once this commits); any other due row
    `pending` (the dispatch claims it later).

    With `skip_existing` (a mailing expanded before), clients that have their message are passed over
    before the limit, so a pass that finds nothing new is one anti-join, not an insert attempt a client:
    clients written just before the last pass are all looked at again (`_changed_sql`)."""
    params: dict[str, Any] = {
        "mid": plan.id,
        "tzs": zones.timezones,
        "nbs": zones.not_befores,
        "end_at": plan.end_at,
        "reason": Reason.NO_OPENING,
        "now": now,
        "after": after_client_id,
        "limit": limit,
        "queue_first": queue_first,
    }
    where = _filter_sql(plan, params)
    changed = _changed_sql(changed_since, params)
    without_message = (
        "AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.mailing_id = :mid AND m.client_id = c.id)"
        if skip_existing
        else ""
    )
    rows = (
        await conn.execute(
            text(
                # The chunk's clients first, then their timezones' plan: joined before the LIMIT, the
                # plan was a nested loop comparing every client with every timezone.
                "WITH picked AS (SELECT c.id, c.timezone FROM clients c"
                f" WHERE c.deleted_at IS NULL AND c.id > :after AND {where} {changed} {without_message}"
                " ORDER BY c.id LIMIT :limit),"
                # Up to the last of the first `queue_first` clients, found once for the chunk (none: NULL).
                " src AS (SELECT k.id, p.nb, COALESCE(k.id <= (SELECT max(q.id)"
                " FROM (SELECT id FROM picked ORDER BY id LIMIT :queue_first) AS q), FALSE)"
                " AND p.nb <= :now AS to_queue"
                " FROM picked k"
                " JOIN unnest(CAST(:tzs AS text[]), CAST(:nbs AS timestamptz[])) AS p(tz, nb)"
                " ON p.tz = k.timezone),"
                " ins AS ("
                " INSERT INTO messages (mailing_id, client_id, status, not_before, last_error, queued_at,"
                " created_at, updated_at)"
                f" SELECT :mid, s.id, CASE WHEN s.nb IS NULL THEN {_EXPIRED} WHEN s.to_queue THEN {_QUEUED}"
                f" ELSE {_PENDING} END,"
                " COALESCE(s.nb, :end_at), CASE WHEN s.nb IS NULL THEN :reason END,"
                " CASE WHEN s.to_queue THEN CAST(:now AS timestamptz) END, :now, :now"
                " FROM src AS s ORDER BY s.id"
                " ON CONFLICT (mailing_id, client_id) DO NOTHING"
                " RETURNING id, client_id, status)"
                # Pending rows are only counted: all of a chunk are, when its window opens later.
                f" SELECT last.id AS last, (SELECT count(*) FROM ins WHERE status = {_PENDING}) AS pending,"
                " i.id, i.client_id, i.status"
                " FROM (SELECT max(id) AS id FROM picked) AS last"
                f" LEFT JOIN (SELECT * FROM ins WHERE status <> {_PENDING}) AS i ON TRUE"
            ),
            params,
        )
    ).all()
    # A chunk's rows unpacked as tuples: a `Row`'s lookup by name costs more than the rest of the loop.
    mid = plan.id
    queued = [Claimed(id_, mid, client) for _, _, id_, client, status in rows if status == _QUEUED_VALUE]
    expired = [
        Finalized(id_, mid, client, status, 0, Reason.NO_OPENING)
        for _, _, id_, client, status in rows
        if status == _EXPIRED_VALUE
    ]
    last, pending = rows[0][:2]
    return ExpansionChunk(last, queued, int(pending), expired)


async def finalized_at(
    conn: AsyncConnection, mailing_id: int, status: str, reasons: Sequence[str], now: datetime, chunk: int
) -> AsyncIterator[list[Finalized]]:
    """The messages this transaction's set-wise statements at `now` made `status` for one of `reasons`,
    `chunk` at a time from a server-side cursor: a window that never opens before the end can expire
    every client of the mailing, a narrowed filter can cancel most of them."""
    result = await conn.stream(
        text(
            "SELECT id, client_id, status, attempts, last_error FROM messages"
            " WHERE mailing_id = :mid AND status = :status AND last_error = ANY(CAST(:reasons AS text[]))"
            " AND updated_at = :now"
        ),
        {"mid": mailing_id, "status": status, "reasons": list(reasons), "now": now},
    )
    async for rows in result.partitions(chunk):
        yield _finalized(rows, mailing_id)


async def cancel_unmatched(
    conn: AsyncConnection, plan: MailingPlan, now: datetime, changed_since: datetime | None
) -> int:
    """Messages not sent yet (pending, queued or retrying) whose client was deleted or no longer matches
    the filter are cancelled; a copy still in a queue then finds them final. One a sender holds right
    now is left to it: its check before the call sees the filter too."""
    params: dict[str, Any] = {
        "mid": plan.id,
        "now": now,
        "deleted": Reason.CLIENT_DELETED,
        "unmatched": Reason.CLIENT_NO_LONGER_MATCHES,
    }
    where = _filter_sql(plan, params)
    changed = _changed_sql(changed_since, params)
    result = await conn.execute(
        text(
            "WITH cancelled AS ("
            f" UPDATE messages m SET status = {_CANCELLED}, updated_at = :now, claim_token = NULL,"
            " last_error = CASE WHEN c.deleted_at IS NOT NULL THEN :deleted ELSE :unmatched END"
            " FROM clients c"
            " WHERE c.id = m.client_id AND m.mailing_id = :mid"
            f" AND m.status IN {OPEN_SQL}"
            " AND (m.lease_until IS NULL OR m.lease_until < :now)"
            f" AND (c.deleted_at IS NOT NULL OR NOT {where}) {changed}"
            " RETURNING 1)"
            " SELECT count(*) FROM cancelled"
        ),
        params,
    )
    return int(result.scalar_one())


# Why `cancel_unmatched` cancels a message, for reading its rows back with `finalized_at`.
UNMATCHED_REASONS = (Reason.CLIENT_DELETED, Reason.CLIENT_NO_LONGER_MATCHES)


async def replan_pending(
    conn: AsyncConnection,
    plan: MailingPlan,
    zones: TimezonePlan,
    now: datetime,
    changed_since: datetime | None = None,
) -> tuple[int, int]:
    """Moves pending messages to the current window and period (with `changed_since`, only those of the
    clients changed since: a new timezone moves the client's window); returns how many moved and how
    many expired (counted in SQL: read the expired ones with `finalized_at`)."""
    params: dict[str, Any] = {
        "mid": plan.id,
        "tzs": zones.timezones,
        "nbs": zones.not_befores,
        "reason": Reason.NO_OPENING,
        "now": now,
    }
    changed = _changed_sql(changed_since, params)
    row = (
        await conn.execute(
            text(
                "WITH moved AS ("
                " UPDATE messages m SET updated_at = :now,"
                " not_before = COALESCE(p.nb, m.not_before),"
                f" status = CASE WHEN p.nb IS NULL THEN {_EXPIRED} ELSE m.status END,"
                " last_error = CASE WHEN p.nb IS NULL THEN :reason ELSE m.last_error END"
                " FROM clients c"
                " JOIN unnest(CAST(:tzs AS text[]), CAST(:nbs AS timestamptz[])) AS p(tz, nb)"
                " ON p.tz = c.timezone"
                f" WHERE c.id = m.client_id AND m.mailing_id = :mid AND m.status = {_PENDING} {changed}"
                # A due message that may still be sent now keeps its place in the queue.
                " AND (p.nb IS NULL OR (m.not_before <> p.nb AND NOT (m.not_before <= :now AND p.nb = :now)))"
                " RETURNING m.status)"
                f" SELECT count(*) FILTER (WHERE status = {_PENDING}) AS moved,"
                f" count(*) FILTER (WHERE status = {_EXPIRED}) AS expired FROM moved"
            ),
            params,
        )
    ).one()
    return int(row.moved), int(row.expired)


async def finalize_unfinished(
    conn: AsyncConnection, mailing_id: int, status: str, reason: str, now: datetime, limit: int
) -> list[Finalized]:
    """Ends up to `limit` non-final messages of a mailing; a message a sender holds right now is left to it.

    Called chunk by chunk until it returns fewer than `limit`, so no caller holds a whole mailing."""
    result = await conn.execute(
        text(
            "WITH chunk AS (SELECT id FROM messages"
            f" WHERE mailing_id = :mid AND status IN {OPEN_SQL}"
            " AND (lease_until IS NULL OR lease_until < :now)"
            " LIMIT :limit FOR UPDATE SKIP LOCKED)"
            " UPDATE messages m SET status = :status, last_error = :reason, updated_at = :now,"
            # No sender's write, a repeat included, may take the row for its own afterwards.
            " claim_token = NULL"
            f" FROM chunk WHERE m.id = chunk.id AND m.status IN {OPEN_SQL}"
            " RETURNING m.id, m.client_id, m.status, m.attempts, m.last_error"
        ),
        {"mid": mailing_id, "status": status, "reason": reason, "now": now, "limit": limit},
    )
    return _finalized(result.all(), mailing_id)


async def expansion_start(conn: AsyncConnection) -> datetime:
    """What `mark_expanded` records once an expansion begun in this transaction has written its last chunk.

    It is on the database clock on purpose: it is compared with clients.updated_at, which a write sets to
    its transaction's start (`now()`). A client written by a transaction still open now is not seen by
    this expansion and may commit much later (a CSV import of 300,000 rows holds its transaction for tens
    of seconds), with an updated_at older than any margin: so it is held back to the start of the oldest
    transaction of this database that has written anything and is still open, and the next incremental
    pass looks at everything that transaction wrote. (Without the right to see other sessions' start,
    `pg_stat_activity` shows NULL and only the margin is left.)"""
    result = await conn.execute(
        text(
            "SELECT LEAST(transaction_timestamp(),"
            " (SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()))"
        )
    )
    started: datetime = result.scalar_one()
    return started


async def mark_expanded(conn: AsyncConnection, mailing_id: int, signature: str, started: datetime) -> None:
    """Every client matching at `started` (see `expansion_start`) has its message."""
    await conn.execute(
        text("UPDATE mailings SET expanded_at = :at, expansion_signature = :sig WHERE id = :id"),
        {"id": mailing_id, "sig": signature, "at": started},
    )


async def set_mailing_status(
    conn: AsyncConnection, mailing_id: int, new: str, allowed_from: Sequence[str]
) -> bool:
    result = await conn.execute(
        text("UPDATE mailings SET status = :new WHERE id = :id AND status = ANY(CAST(:old AS text[]))"),
        {"id": mailing_id, "new": new, "old": list(allowed_from)},
    )
    return bool(result.rowcount)


async def finish_if_done(conn: AsyncConnection, mailing_id: int, allowed_from: Sequence[str]) -> bool:
    # The mailing's row first, in a statement of its own, so that the check below reads a snapshot taken
    # after any writer that held it (a requeue of parked messages): an UPDATE that waits for a row
    # re-checks that row when it gets it, not its NOT EXISTS.
    await conn.execute(text("SELECT 1 FROM mailings WHERE id = :id FOR UPDATE"), {"id": mailing_id})
    result = await conn.execute(
        text(
            f"UPDATE mailings SET status = {_FINISHED} WHERE id = :id AND status = ANY(CAST(:old AS text[]))"
            f" AND NOT EXISTS (SELECT 1 FROM messages WHERE mailing_id = :id AND status IN {OPEN_SQL})"
        ),
        {"id": mailing_id, "old": list(allowed_from)},
    )
    return bool(result.rowcount)


async def outstanding(conn: AsyncConnection) -> int:
    result = await conn.execute(text(f"SELECT count(*) FROM messages WHERE status IN {IN_FLIGHT_SQL}"))
    return int(result.scalar_one())


async def claim_due(
    conn: AsyncConnection, mailing_ids: Sequence[int], now: datetime, limit: int
) -> list[Claimed]:
    result = await conn.execute(
        text(
            "WITH due AS (SELECT id FROM messages"
            f" WHERE mailing_id = ANY(CAST(:mids AS bigint[])) AND status = {_PENDING} AND not_before <= :now"
            " LIMIT :limit FOR UPDATE SKIP LOCKED)"
            f" UPDATE messages m SET status = {_QUEUED}, queued_at = :now, updated_at = :now"
            f" FROM due WHERE m.id = due.id AND m.status = {_PENDING}"
            " RETURNING m.id, m.mailing_id, m.client_id"
        ),
        {"mids": list(mailing_ids), "now": now, "limit": limit},
    )
    return [Claimed(*row) for row in result.all()]


async def unqueue(conn: AsyncConnection, message_ids: Sequence[int], dispatched_at: datetime) -> int:
    """Back to pending what `claim_due` queued at `dispatched_at` and no sender touched since (its
    publish failed); a row a sender took meanwhile (held, given back or final) is left as it is."""
    result = await conn.execute(
        text(
            f"UPDATE messages SET status = {_PENDING}, queued_at = NULL"
            f" WHERE id = ANY(CAST(:ids AS bigint[])) AND status = {_QUEUED} AND updated_at = :at"
        ),
        {"ids": list(message_ids), "at": dispatched_at},
    )
    return int(result.rowcount)


async def claim_stale(
    conn: AsyncConnection, mailing_ids: Sequence[int], now: datetime, cutoff: datetime, limit: int
) -> list[Claimed]:
    """Queued or retrying messages that entered the send queue before `cutoff` (a queued one at
    `queued_at`, a retry when its delay ends, at `next_attempt_at`) and that no sender holds: they are
    queued anew, to be published again.

    A retry was queued before its delay began: every statement that makes a message `queued` sets
    `queued_at`, and the sender's retry keeps it. So `queued_at < cutoff` holds for every message taken,
    and leads the condition: it is what `ix_messages_in_flight` is ordered by, so the sweep reads the
    index from its oldest entry instead of every message in flight (docs/benchmarks.md, "eighth
    session")."""
    result = await conn.execute(
        text(
            "WITH stale AS (SELECT id FROM messages"
            f" WHERE mailing_id = ANY(CAST(:mids AS bigint[])) AND status IN {IN_FLIGHT_SQL}"
            f" AND queued_at < :cutoff AND (status = {_QUEUED} OR next_attempt_at < :cutoff)"
            " AND (lease_until IS NULL OR lease_until < :now)"
            " LIMIT :limit FOR UPDATE SKIP LOCKED)"
            f" UPDATE messages m SET status = {_QUEUED}, queued_at = :now, updated_at = :now"
            f" FROM stale WHERE m.id = stale.id AND m.status IN {IN_FLIGHT_SQL}"
            " RETURNING m.id, m.mailing_id, m.client_id"
        ),
        {"mids": list(mailing_ids), "now": now, "cutoff": cutoff, "limit": limit},
    )
    return [Claimed(*row) for row in result.all()]


@dataclass(frozen=True)
class SendProgress:
    # When the newest message the senders claimed from the queue had entered it, and when that was.
    consumed_through: datetime
    claimed_at: datetime


async def senders_holding_back(conn: AsyncConnection, since: datetime) -> bool:
    """Whether a sender that reported since `since` holds its deliveries back: its breaker is not closed
    or it is fenced (it claims nothing meanwhile, and what it holds is not lost)."""
    result = await conn.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM sender_health WHERE reported_at >= :since"
            " AND (circuit_state <> 0 OR fenced))"
        ),
        {"since": since},
    )
    return bool(result.scalar_one())


async def send_progress(conn: AsyncConnection, queue: str) -> SendProgress | None:
    result = await conn.execute(
        text("SELECT consumed_through, updated_at FROM send_progress WHERE queue = :q"), {"q": queue}
    )
    row = result.one_or_none()
    return None if row is None else SendProgress(row[0], row[1])


async def due_backlog(conn: AsyncConnection, mailing_ids: Sequence[int], now: datetime) -> int:
    result = await conn.execute(
        text(
            "SELECT count(*) FROM messages WHERE mailing_id = ANY(CAST(:mids AS bigint[]))"
            f" AND status = {_PENDING} AND not_before <= :now"
        ),
        {"mids": list(mailing_ids), "now": now},
    )
    return int(result.scalar_one())
