"""Statements on messages that more than one service runs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Select, Update, func, literal_column, or_, select, update

from shared.domain.statuses import OPEN_MESSAGE_STATUSES, MessageStatus
from shared.models import Message


def _cancel_open(which: ColumnElement[bool], reason: str, now: datetime) -> Update:
    # A message a sender holds (its call may be under way) is left alone: if the call succeeds the client
    # got the SMS and `sent` must be recorded; otherwise the sender's own check, or the scheduler once
    # the lease has run out, cancels it.
    return (
        update(Message)
        .where(
            which,
            Message.status.in_([s.value for s in OPEN_MESSAGE_STATUSES]),
            or_(Message.lease_until.is_(None), Message.lease_until < now),
        )
        # The claim token goes with it: no sender's write, a repeat included, takes the row for its own.
        .values(status=MessageStatus.CANCELLED.value, last_error=reason, updated_at=now, claim_token=None)
    )


def cancel_open_messages(which: ColumnElement[bool], reason: str, now: datetime) -> Update:
    """Cancel the chosen messages that are not final yet, returning their ids (for a small set: a client's
    messages, one a mailing)."""
    return _cancel_open(which, reason, now).returning(Message.id)


def count_cancelled_open_messages(which: ColumnElement[bool], reason: str, now: datetime) -> Select[int]:
    """Cancel the chosen messages that are not final yet, answering only how many: counted in SQL, so a
    mailing of millions never comes into the process."""
    cancelled = _cancel_open(which, reason, now).returning(literal_column("1")).cte("ended")
    return select(func.count()).select_from(cancelled)
