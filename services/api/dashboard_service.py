"""What the admin UI shows beyond the REST API's resources: send rates, the delivery path, a mailing's
messages with their clients' phones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, ColumnElement, Select, func, literal, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.clients_service import phone_starts_with
from services.api.mailings_service import StatusCounts, status_totals
from shared.domain.statuses import MessageStatus
from shared.models import Client, Message, ReportOutcomeMinute, SenderHealth

# Bucket widths for a chart of sends over time, the smallest giving at most MAX_BUCKETS points.
BUCKET_SECONDS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400)
MAX_BUCKETS = 120


@dataclass(frozen=True)
class Series:
    labels: list[str]
    values: list[int]


@dataclass(frozen=True)
class DeliveryPath:
    circuit: str
    retry_backlog: int
    parked: int
    in_flight: int
    # Senders that reported in the last SENDER_SILENT_AFTER seconds, and how many of them are fenced.
    senders: int = 0
    fenced: int = 0


# A sender reports every few seconds (MAILING_SENDER_QUEUE_DEPTH_INTERVAL_SECONDS); silent longer, it is gone.
SENDER_SILENT_AFTER = timedelta(seconds=30)
# The worst state any live sender's breaker is in, by services.sender.breaker.BreakerState's numbers.
CIRCUIT_NAMES = {0: "closed", 1: "half-open", 2: "open"}


async def sender_health(session: AsyncSession, now: datetime) -> tuple[str, int, int]:
    """(the worst circuit state, live senders, fenced senders) from what the senders last reported."""
    row = (
        await session.execute(
            select(
                func.max(SenderHealth.circuit_state),
                func.count(),
                func.count().filter(SenderHealth.fenced),
            ).where(SenderHealth.reported_at > now - SENDER_SILENT_AFTER)
        )
    ).one()
    worst, senders, fenced = row
    circuit = "no sender reporting" if not senders else CIRCUIT_NAMES.get(int(worst), "unknown")
    return circuit, int(senders), int(fenced)


def _bucket(seconds: int) -> ColumnElement[datetime]:
    width = text(f"interval '{int(seconds)} seconds'")
    return func.date_bin(width, ReportOutcomeMinute.minute, text("'epoch'"))


_SENT = ReportOutcomeMinute.status == MessageStatus.SENT.value


async def send_rate(session: AsyncSession, now: datetime, minutes: int = 60) -> Series:
    """Messages sent in each minute of the last `minutes`, as the reporter recorded them: the
    per-minute outcome counts (migration 0008), a row per mailing and minute, not a scan of
    `messages.sent_at` (which has no index: one would cost the sender's status updates their HOT
    updates)."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    c = ReportOutcomeMinute
    rows = await session.execute(
        select(c.minute, func.sum(c.count))
        .where(_SENT, c.minute >= start, c.minute <= now)
        .group_by(c.minute)
    )
    found = {b: int(n) for b, n in rows}
    slots = [start + timedelta(minutes=i) for i in range(minutes)]
    return Series([s.strftime("%H:%M") for s in slots], [found.get(s, 0) for s in slots])


async def mailing_sends(session: AsyncSession, mailing_id: int) -> Series:
    """The mailing's sent messages over time, in buckets wide enough for at most MAX_BUCKETS points, from
    its per-minute outcome counts (a row per minute it sent in, whatever the number of messages)."""
    c = ReportOutcomeMinute
    sent = (c.mailing_id == mailing_id) & _SENT & (c.count > 0)
    first, last = (await session.execute(select(func.min(c.minute), func.max(c.minute)).where(sent))).one()
    if first is None or last is None:
        return Series([], [])
    span = (last - first).total_seconds()
    width = next((b for b in BUCKET_SECONDS if span / b <= MAX_BUCKETS), BUCKET_SECONDS[-1])
    bucket = _bucket(width)
    rows = await session.execute(
        select(bucket, func.sum(c.count)).where(sent).group_by(bucket).order_by(bucket)
    )
    fmt = "%Y-%m-%d" if width >= 86400 else "%m-%d %H:%M"
    labels, values = [], []
    for b, n in rows:
        labels.append(b.strftime(fmt))
        values.append(int(n))
    return Series(labels, values)


async def delivery_path(session: AsyncSession, now: datetime) -> DeliveryPath:
    """Retry backlog (`retrying`) and parked (`failed`) messages of every live mailing, from the
    per-mailing counts in one GROUP BY, and the senders' circuit breakers as they last reported them."""
    total = await status_totals(session)
    circuit, senders, fenced = await sender_health(session, now)
    return DeliveryPath(
        circuit=circuit,
        retry_backlog=total[MessageStatus.RETRYING],
        parked=total[MessageStatus.FAILED],
        in_flight=total[MessageStatus.QUEUED],
        senders=senders,
        fenced=fenced,
    )


@dataclass(frozen=True)
class MessageRow:
    message: Message
    phone: str


async def mailing_messages(
    session: AsyncSession,
    mailing_id: int,
    status: MessageStatus | None,
    search: str,
    counts: StatusCounts,
    limit: int,
    offset: int,
    search_cap: int = 1_000,
) -> tuple[list[MessageRow], int]:
    """A page of the mailing's messages in client id order (the unique index on (mailing_id, client_id)
    walks them in that order), with each client's phone. `search` is a client id or the start of a
    phone. Without a search the total comes from the mailing's counts; with one, it is counted up to
    `search_cap + 1`. The caller bounds `offset`."""
    conditions: list[ColumnElement[bool]] = [Message.mailing_id == mailing_id]
    if status is not None:
        conditions.append(Message.status == status.value)
    search = search.strip()
    total: int | None = counts.total if status is None else counts.counts[status.value]
    if search:
        digits = search.lstrip("+")
        if not (digits.isascii() and digits.isdigit()):
            return [], 0
        # Every client whose phone starts so (deleted ones too: their messages stay), from the index on
        # (phone) INCLUDE (id) alone; and the client of that id.
        candidates: list[Select[int]] = [select(Client.id).where(phone_starts_with(Client.phone, digits))]
        if len(digits) < 11 and int(digits) < 2**63:
            candidates.append(select(literal(int(digits), BigInteger)))
        conditions.append(Message.client_id.in_(union_all(*candidates)))
        total = None
    # The page from `messages` alone, then the phones of its clients: a join in the same statement lets
    # the planner walk every client in id order to merge them.
    # In one status, the walk of the (mailing_id, client_id) index in order reads offset + limit rows out
    # of every total / in_status; sorting the status's rows (found by the (mailing_id, status) index)
    # reads in_status. The counts tell which is fewer; `client_id + 0` keeps the planner off the walk.
    in_status = counts.total if status is None or search else counts.counts[status.value]
    sort = 0 < in_status < (offset + limit) * counts.total / in_status
    order = (Message.client_id + 0) if sort else Message.client_id.expression
    messages = list(
        await session.scalars(select(Message).where(*conditions).order_by(order).limit(limit).offset(offset))
    )
    phones: dict[int, str] = {}
    if messages:
        rows = await session.execute(
            select(Client.id, Client.phone).where(Client.id.in_({m.client_id for m in messages}))
        )
        phones = {int(i): str(p) for i, p in rows}
    found = [MessageRow(m, phones.get(m.client_id, "")) for m in messages]
    if total is None:
        # A search counts up to search_cap + 1 matches: past that the caller shows "search_cap+".
        capped = select(literal(1)).select_from(Message).where(*conditions).limit(search_cap + 1).subquery()
        total = int(await session.scalar(select(func.count()).select_from(capped)) or 0)
    return found, total
