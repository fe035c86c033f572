"""What the admin UI shows beyond the REST API's resources: send rates, the delivery path, a mailing's
messages with their clients' phones."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.mailings_service import StatusCounts, status_counts
from shared.domain.statuses import MessageStatus
from shared.models import Client, Mailing, Message, SenderHealth

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
    return func.date_bin(text(f"interval '{int(seconds)} seconds'"), Message.sent_at, text("'epoch'"))


async def send_rate(session: AsyncSession, now: datetime, minutes: int = 60) -> Series:
    """Messages sent in each minute of the last `minutes`, read by a range on `sent_at`."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    bucket = _bucket(60)
    rows = await session.execute(
        select(bucket, func.count()).where(Message.sent_at >= start, Message.sent_at <= now).group_by(bucket)
    )
    found = {b: int(n) for b, n in rows}
    slots = [start + timedelta(minutes=i) for i in range(minutes)]
    return Series([s.strftime("%H:%M") for s in slots], [found.get(s, 0) for s in slots])


async def mailing_sends(session: AsyncSession, mailing_id: int) -> Series:
    """The mailing's sent messages over time, in buckets wide enough for at most MAX_BUCKETS points."""
    sent = (Message.mailing_id == mailing_id) & (Message.status == MessageStatus.SENT.value)
    first, last = (
        await session.execute(select(func.min(Message.sent_at), func.max(Message.sent_at)).where(sent))
    ).one()
    if first is None or last is None:
        return Series([], [])
    span = (last - first).total_seconds()
    width = next((b for b in BUCKET_SECONDS if span / b <= MAX_BUCKETS), BUCKET_SECONDS[-1])
    bucket = _bucket(width)
    rows = await session.execute(select(bucket, func.count()).where(sent).group_by(bucket).order_by(bucket))
    fmt = "%Y-%m-%d" if width >= 86400 else "%m-%d %H:%M"
    labels, values = [], []
    for b, n in rows:
        labels.append(b.strftime(fmt))
        values.append(int(n))
    return Series(labels, values)


async def delivery_path(session: AsyncSession, now: datetime) -> DeliveryPath:
    """Retry backlog (`retrying`) and parked (`failed`) messages of every live mailing, through the one
    counts function, and the senders' circuit breakers as they last reported them."""
    ids = list(await session.scalars(select(Mailing.id).where(Mailing.deleted_at.is_(None))))
    counts = await status_counts(session, ids)
    total = _sum(counts.values())
    circuit, senders, fenced = await sender_health(session, now)
    return DeliveryPath(
        circuit=circuit,
        retry_backlog=total[MessageStatus.RETRYING],
        parked=total[MessageStatus.FAILED],
        in_flight=total[MessageStatus.QUEUED],
        senders=senders,
        fenced=fenced,
    )


def _sum(counts: Iterable[StatusCounts]) -> dict[str, int]:
    summed = {s.value: 0 for s in MessageStatus}
    for c in counts:
        for s, n in c.counts.items():
            summed[s] += n
    return summed


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
) -> tuple[list[MessageRow], int]:
    """A page of the mailing's messages, oldest first, with each client's phone. `search` is a client id
    or (part of) a phone from its start. Without a search the total comes from the mailing's counts."""
    conditions: list[ColumnElement[bool]] = [Message.mailing_id == mailing_id]
    if status is not None:
        conditions.append(Message.status == status.value)
    search = search.strip()
    total: int | None = counts.total if status is None else counts.counts[status.value]
    if search:
        digits = search.lstrip("+")
        if not digits.isdigit():
            return [], 0
        by_phone = select(Client.id).where(Client.phone.startswith(digits, autoescape=True))
        matches: ColumnElement[bool] = Message.client_id.in_(by_phone)
        if len(digits) < 11 and int(digits) < 2**63:
            matches = matches | (Message.client_id == int(digits))
        conditions.append(matches)
        total = None
    rows = await session.execute(
        select(Message, Client.phone)
        .join(Client, Client.id == Message.client_id)
        .where(*conditions)
        .order_by(Message.id)
        .limit(limit)
        .offset(offset)
    )
    found = [MessageRow(m, p) for m, p in rows]
    if total is None:
        total = int(await session.scalar(select(func.count()).select_from(Message).where(*conditions)) or 0)
    return found, total
