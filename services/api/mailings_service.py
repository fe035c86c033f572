"""Mailing operations: each change, its messages' cancellations and its outbox event in the caller's
transaction. The caller commits and then wakes the outbox relay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

from loguru import logger
from sqlalchemy import ColumnElement, and_, delete, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.errors import Conflict, NotFound
from services.api.schemas import MAX_ID
from shared.domain.errors import DomainValidationError
from shared.domain.statuses import (
    FINAL_MAILING_STATUSES,
    MailingEventType,
    MailingStatus,
    MessageStatus,
    Reason,
    can_transition_mailing,
)
from shared.domain.windows import DailyWindow
from shared.messages import count_cancelled_open_messages
from shared.models import Client, Mailing, MailingStatusCount, Message, ReportOutcome
from shared.outbox import mailing_event

REQUEUED_PREFIX = "requeued by an operator after: "
# The parked view lists this many reasons at most, the most frequent first.
PARKED_REASONS_SHOWN = 20


class MailingChanges(TypedDict, total=False):
    text: str
    start_at: datetime
    end_at: datetime
    filter_tags: list[str]
    filter_operator_codes: list[str]
    window: DailyWindow | None


@dataclass(frozen=True)
class ParkedSummary:
    count: int
    reasons: list[tuple[str, int]]


@dataclass(frozen=True)
class StatusCounts:
    total: int
    counts: dict[str, int]


def _window_columns(window: DailyWindow | None) -> tuple[object, object]:
    return (None, None) if window is None else (window.start, window.end)


def _check_period(start_at: datetime, end_at: datetime, now: datetime) -> None:
    if end_at <= start_at:
        raise DomainValidationError("end_at", "end_at must be after start_at")
    if end_at <= now:
        raise DomainValidationError("end_at", "end_at has already passed: nothing could be sent")


async def _locked(session: AsyncSession, mailing_id: int) -> Mailing:
    # The row lock orders concurrent changes of one mailing, so its outbox ids follow the commit order.
    if not 1 <= mailing_id <= MAX_ID:
        raise NotFound("mailing", mailing_id)
    mailing = await session.scalar(
        select(Mailing).where(Mailing.id == mailing_id, Mailing.deleted_at.is_(None)).with_for_update()
    )
    if mailing is None:
        raise NotFound("mailing", mailing_id)
    return mailing


async def get_mailing(session: AsyncSession, mailing_id: int) -> Mailing:
    if not 1 <= mailing_id <= MAX_ID:
        raise NotFound("mailing", mailing_id)
    mailing = await session.scalar(
        select(Mailing).where(Mailing.id == mailing_id, Mailing.deleted_at.is_(None))
    )
    if mailing is None:
        raise NotFound("mailing", mailing_id)
    logger.bind(mailing_id=mailing_id).info("mailing read ({})", mailing.status)
    return mailing


def _record(session: AsyncSession, event: MailingEventType, mailing: Mailing, now: datetime) -> None:
    session.add(mailing_event(event, mailing.id, now))


async def create_mailing(
    session: AsyncSession,
    *,
    text: str,
    start_at: datetime,
    end_at: datetime,
    filter_tags: list[str],
    filter_operator_codes: list[str],
    window: DailyWindow | None,
    now: datetime,
) -> Mailing:
    _check_period(start_at, end_at, now)
    window_start, window_end = _window_columns(window)
    mailing = Mailing(
        text=text,
        start_at=start_at,
        end_at=end_at,
        filter_tags=filter_tags,
        filter_operator_codes=filter_operator_codes,
        window_start=window_start,
        window_end=window_end,
        status=MailingStatus.SCHEDULED.value,
        created_at=now,
        updated_at=now,
    )
    session.add(mailing)
    await session.flush()
    _record(session, MailingEventType.CREATED, mailing, now)
    logger.bind(mailing_id=mailing.id).info(
        "mailing created: start {} end {}, {} tags, {} operator codes, window {}",
        start_at.isoformat(),
        end_at.isoformat(),
        len(filter_tags),
        len(filter_operator_codes),
        "none" if window is None else f"{window.start}-{window.end}",
    )
    return mailing


async def _has_started_sending(session: AsyncSession, mailing_id: int) -> bool:
    started = await session.scalar(
        select(literal(1))
        .where(
            Message.mailing_id == mailing_id,
            or_(Message.status == MessageStatus.SENT.value, Message.attempts > 0),
        )
        .limit(1)
    )
    return started is not None


async def update_mailing(
    session: AsyncSession, mailing_id: int, changes: MailingChanges, now: datetime
) -> Mailing:
    mailing = await _locked(session, mailing_id)
    log = logger.bind(mailing_id=mailing_id)
    if MailingStatus(mailing.status) in FINAL_MAILING_STATUSES:
        log.info("update refused: mailing is {}", mailing.status)
        raise Conflict("status", f"a {mailing.status} mailing can no longer be changed")
    start_at = changes.get("start_at", mailing.start_at)
    end_at = changes.get("end_at", mailing.end_at)
    if "start_at" in changes or "end_at" in changes:
        _check_period(start_at, end_at, now)
    if mailing.status == MailingStatus.RUNNING and start_at > now and start_at != mailing.start_at:
        # Its messages are being planned and sent already; a later start cannot call them back.
        log.info("start change refused: the mailing is running")
        raise Conflict(
            "start_at", "a running mailing cannot start later: pause it to hold its messages, or cancel it"
        )
    if (
        "text" in changes
        and changes["text"] != mailing.text
        and await _has_started_sending(session, mailing_id)
    ):
        log.info("text change refused: sending has started")
        raise Conflict("text", "the text can no longer change: messages of this mailing were already sent")
    changed: list[str] = []
    for name in ("text", "start_at", "end_at", "filter_tags", "filter_operator_codes"):
        if name in changes and changes[name] != getattr(mailing, name):
            setattr(mailing, name, changes[name])
            changed.append(name)
    if "window" in changes:
        window_start, window_end = _window_columns(changes["window"])
        if (window_start, window_end) != (mailing.window_start, mailing.window_end):
            mailing.window_start, mailing.window_end = window_start, window_end  # type: ignore[assignment]
            changed.append("window")
    if changed:
        mailing.updated_at = now
        _record(session, MailingEventType.UPDATED, mailing, now)
        log.info("mailing updated: {}", ", ".join(changed))
    else:
        log.info("mailing update changed nothing")
    return mailing


async def _cancel_open_messages(session: AsyncSession, mailing_id: int, reason: str, now: datetime) -> int:
    cancelled = await session.scalar(
        count_cancelled_open_messages(Message.mailing_id == mailing_id, reason, now)
    )
    return cancelled or 0


def _move(mailing: Mailing, target: MailingStatus, now: datetime) -> None:
    current = MailingStatus(mailing.status)
    if not can_transition_mailing(current, target):
        logger.bind(mailing_id=mailing.id).info("refused to move mailing from {} to {}", current, target)
        raise Conflict("status", f"a {current} mailing cannot become {target}")
    mailing.status = target.value
    mailing.updated_at = now


async def pause_mailing(session: AsyncSession, mailing_id: int, now: datetime) -> Mailing:
    mailing = await _locked(session, mailing_id)
    if mailing.status not in (MailingStatus.SCHEDULED, MailingStatus.RUNNING):
        raise Conflict(
            "status", f"only a scheduled or running mailing can be paused, this one is {mailing.status}"
        )
    _move(mailing, MailingStatus.PAUSED, now)
    _record(session, MailingEventType.PAUSED, mailing, now)
    logger.bind(mailing_id=mailing_id).info("mailing paused")
    return mailing


async def resume_mailing(session: AsyncSession, mailing_id: int, now: datetime) -> Mailing:
    mailing = await _locked(session, mailing_id)
    if mailing.status != MailingStatus.PAUSED:
        raise Conflict("status", f"only a paused mailing can be resumed, this one is {mailing.status}")
    target = MailingStatus.RUNNING if mailing.start_at <= now else MailingStatus.SCHEDULED
    _move(mailing, target, now)
    _record(session, MailingEventType.RESUMED, mailing, now)
    logger.bind(mailing_id=mailing_id).info("mailing resumed as {}", target)
    return mailing


async def cancel_mailing(session: AsyncSession, mailing_id: int, now: datetime) -> Mailing:
    mailing = await _locked(session, mailing_id)
    _move(mailing, MailingStatus.CANCELLED, now)
    cancelled = await _cancel_open_messages(session, mailing_id, Reason.MAILING_CANCELLED, now)
    _record(session, MailingEventType.CANCELLED, mailing, now)
    logger.bind(mailing_id=mailing_id).info("mailing cancelled with {} messages not yet sent", cancelled)
    return mailing


async def delete_mailing(session: AsyncSession, mailing_id: int, now: datetime) -> None:
    mailing = await _locked(session, mailing_id)
    if MailingStatus(mailing.status) not in FINAL_MAILING_STATUSES:
        # Keeps a deleted mailing out of every "status = running" query, deleted_at filter or not.
        mailing.status = MailingStatus.CANCELLED.value
    mailing.deleted_at = now
    mailing.updated_at = now
    cancelled = await _cancel_open_messages(session, mailing_id, Reason.MAILING_DELETED, now)
    _record(session, MailingEventType.DELETED, mailing, now)
    logger.bind(mailing_id=mailing_id).info("mailing deleted; {} messages not yet sent cancelled", cancelled)


async def parked_summary(session: AsyncSession, mailing_id: int) -> ParkedSummary:
    """The mailing's parked (`failed`) messages: how many, and the most frequent reasons with their counts,
    in one GROUP BY; the window sum counts every reason, those past the shown ones included."""
    await get_mailing(session, mailing_id)
    reason = func.coalesce(Message.last_error, "")
    count = func.count()
    rows = (
        await session.execute(
            select(reason, count, func.sum(count).over())
            .where(Message.mailing_id == mailing_id, Message.status == MessageStatus.FAILED.value)
            .group_by(reason)
            .order_by(count.desc(), reason)
            .limit(PARKED_REASONS_SHOWN)
        )
    ).all()
    total = int(rows[0][2]) if rows else 0
    return ParkedSummary(total, [(str(r), int(n)) for r, n, _ in rows])


async def requeue_parked(session: AsyncSession, mailing_id: int, now: datetime, by: str) -> int:
    """Send a running mailing's parked messages back for delivery: each `failed` message of a live client
    becomes `pending`, due now, with its attempts reset; the scheduler dispatches it. The one way a final
    status changes. Their outcomes are dropped from the reporter's record in the same statement, so the
    message's next final status is the one the daily report counts."""
    mailing = await _locked(session, mailing_id)
    log = logger.bind(mailing_id=mailing_id)
    if mailing.status != MailingStatus.RUNNING:
        log.info("requeue of parked messages refused: mailing is {}", mailing.status)
        raise Conflict(
            "status",
            f"only a running mailing's parked messages can be requeued, this one is {mailing.status}",
        )
    requeued = (
        update(Message)
        .where(
            Message.mailing_id == mailing_id,
            Message.status == MessageStatus.FAILED.value,
            Message.client_id == Client.id,
            Client.deleted_at.is_(None),
        )
        .values(
            status=MessageStatus.PENDING.value,
            attempts=0,
            next_attempt_at=None,
            not_before=now,
            lease_until=None,
            claim_token=None,
            last_error=REQUEUED_PREFIX + func.coalesce(Message.last_error, ""),
            updated_at=now,
        )
        .returning(Message.id)
        .cte("requeued")
    )
    forgotten = delete(ReportOutcome).where(ReportOutcome.message_id.in_(select(requeued.c.id)))
    count = await session.scalar(
        select(func.count()).select_from(requeued).add_cte(forgotten.cte("forgotten"))
    )
    requeued_count = int(count or 0)
    if requeued_count:
        _record(session, MailingEventType.UPDATED, mailing, now)
    log.info("{} parked messages requeued by {}", requeued_count, by)
    return requeued_count


def live_mailings(status: MailingStatus | None) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = Mailing.deleted_at.is_(None)
    if status is not None:
        condition = and_(condition, Mailing.status == status.value)
    return condition


async def list_mailings(
    session: AsyncSession, status: MailingStatus | None, limit: int, offset: int
) -> tuple[list[Mailing], int]:
    where = live_mailings(status)
    total = await session.scalar(select(func.count()).select_from(Mailing).where(where))
    rows = await session.scalars(
        select(Mailing).where(where).order_by(Mailing.id).limit(limit).offset(offset)
    )
    return list(rows), total or 0


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys((s.value for s in MessageStatus), 0)


async def status_counts(session: AsyncSession, mailing_ids: Sequence[int]) -> dict[int, StatusCounts]:
    """Each mailing's messages by status (every status present, zeros included), from the counts the
    triggers on `messages` keep (migration 0007): a few rows per mailing, summed over the writers' slots,
    instead of counting the mailing's messages. A mailing without messages counts zero everywhere."""
    by_mailing = {mailing_id: _zero_counts() for mailing_id in mailing_ids}
    if by_mailing:
        c = MailingStatusCount
        rows = await session.execute(
            select(c.mailing_id, c.status, func.sum(c.count))
            .where(c.mailing_id.in_(list(by_mailing)))
            .group_by(c.mailing_id, c.status)
        )
        for mailing_id, status, count in rows:
            by_mailing[mailing_id][status] = int(count)
    return {
        mailing_id: StatusCounts(total=sum(counts.values()), counts=counts)
        for mailing_id, counts in by_mailing.items()
    }


async def status_totals(session: AsyncSession) -> dict[str, int]:
    """Messages by status over every live mailing (every status present), from the same counts as
    `status_counts`, summed in one GROUP BY."""
    c = MailingStatusCount
    totals = _zero_counts()
    rows = await session.execute(
        select(c.status, func.sum(c.count))
        .join(Mailing, Mailing.id == c.mailing_id)
        .where(Mailing.deleted_at.is_(None))
        .group_by(c.status)
    )
    for status, count in rows:
        totals[status] = int(count)
    return totals


async def mailing_stats_page(
    session: AsyncSession, status: MailingStatus | None, limit: int, offset: int
) -> tuple[list[tuple[Mailing, StatusCounts]], int]:
    mailings, total = await list_mailings(session, status, limit, offset)
    counts = await status_counts(session, [m.id for m in mailings])
    return [(m, counts[m.id]) for m in mailings], total


async def mailing_stats(session: AsyncSession, mailing_id: int) -> tuple[Mailing, StatusCounts]:
    mailing = await get_mailing(session, mailing_id)
    return mailing, (await status_counts(session, [mailing_id]))[mailing_id]
