"""The vocabulary of messages and mailings: statuses, what ends a message and why, with their SQL forms."""

from collections.abc import Iterable
from enum import StrEnum
from typing import Self


class SqlVocabulary(StrEnum):
    """A status word that hand-written SQL quotes: `MessageStatus.SENT.sql` is `'sent'`."""

    @property
    def sql(self) -> str:
        return f"'{self.value}'"

    @classmethod
    def sql_list(cls, statuses: Iterable[Self] | None = None) -> str:
        """`('a', 'b')` for `status IN ...`, in the order of declaration; every status when none given."""
        chosen = set(cls) if statuses is None else set(statuses)
        return "(" + ", ".join(s.sql for s in cls if s in chosen) + ")"


class MessageStatus(SqlVocabulary):
    PENDING = "pending"
    QUEUED = "queued"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


FINAL_MESSAGE_STATUSES: frozenset[MessageStatus] = frozenset(
    {MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.EXPIRED, MessageStatus.CANCELLED}
)
OPEN_MESSAGE_STATUSES: frozenset[MessageStatus] = frozenset(MessageStatus) - FINAL_MESSAGE_STATUSES
# Handed to the send queue, not yet final: what a sender may claim.
IN_FLIGHT_MESSAGE_STATUSES: frozenset[MessageStatus] = frozenset(
    {MessageStatus.QUEUED, MessageStatus.RETRYING}
)

# For hand-written SQL: `status IN {OPEN_SQL}`.
OPEN_SQL = MessageStatus.sql_list(OPEN_MESSAGE_STATUSES)
FINAL_SQL = MessageStatus.sql_list(FINAL_MESSAGE_STATUSES)
IN_FLIGHT_SQL = MessageStatus.sql_list(IN_FLIGHT_MESSAGE_STATUSES)

_TERMINATIONS = frozenset({MessageStatus.FAILED, MessageStatus.EXPIRED, MessageStatus.CANCELLED})

# queued -> queued is a re-publish; queued/retrying -> pending puts a message whose window
# closed meanwhile back to wait for the next opening.
_MESSAGE_MOVES: dict[MessageStatus, frozenset[MessageStatus]] = {
    MessageStatus.PENDING: frozenset({MessageStatus.QUEUED}),
    MessageStatus.QUEUED: frozenset(
        {MessageStatus.QUEUED, MessageStatus.SENT, MessageStatus.RETRYING, MessageStatus.PENDING}
    ),
    MessageStatus.RETRYING: frozenset({MessageStatus.QUEUED, MessageStatus.PENDING}),
}


def can_transition(old: MessageStatus, new: MessageStatus) -> bool:
    if old in FINAL_MESSAGE_STATUSES:
        return False
    return new in _TERMINATIONS or new in _MESSAGE_MOVES.get(old, frozenset())


class MailingStatus(SqlVocabulary):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELLED = "cancelled"


FINAL_MAILING_STATUSES: frozenset[MailingStatus] = frozenset(
    {MailingStatus.FINISHED, MailingStatus.CANCELLED}
)
ACTIVE_MAILING_STATUSES: frozenset[MailingStatus] = frozenset(MailingStatus) - FINAL_MAILING_STATUSES
ACTIVE_MAILING_SQL = MailingStatus.sql_list(ACTIVE_MAILING_STATUSES)

_MAILING_MOVES: dict[MailingStatus, frozenset[MailingStatus]] = {
    MailingStatus.SCHEDULED: frozenset(
        {MailingStatus.RUNNING, MailingStatus.PAUSED, MailingStatus.CANCELLED}
    ),
    MailingStatus.RUNNING: frozenset({MailingStatus.PAUSED, MailingStatus.FINISHED, MailingStatus.CANCELLED}),
    MailingStatus.PAUSED: frozenset(
        {MailingStatus.RUNNING, MailingStatus.SCHEDULED, MailingStatus.CANCELLED, MailingStatus.FINISHED}
    ),
}


def can_transition_mailing(old: MailingStatus, new: MailingStatus) -> bool:
    return new in _MAILING_MOVES.get(old, frozenset())


class MailingEventType(StrEnum):
    """What an operator did to a mailing, as its event says; relayed under `routing_key`."""

    CREATED = "created"
    UPDATED = "updated"
    PAUSED = "paused"
    RESUMED = "resumed"
    CANCELLED = "cancelled"
    DELETED = "deleted"

    @property
    def routing_key(self) -> str:
        return f"mailing.{self.value}"


class ReportStatus(SqlVocabulary):
    """A day's report: sending until the SMTP server took it, then sent."""

    SENDING = "sending"
    SENT = "sent"


class Health(StrEnum):
    """A process's answer on `/healthz` (alive) and `/readyz` (its dependencies answer)."""

    OK = "ok"
    READY = "ready"
    NOT_READY = "not ready"


class Route(StrEnum):
    """Where a claimed message goes after its check or its call."""

    SEND = "send"
    RETRY = "retry"
    WAIT = "wait"
    FAIL = "fail"
    EXPIRE = "expire"
    CANCEL = "cancel"

    @property
    def status(self) -> MessageStatus:
        """The status a message taking this route is written with (a send is written once it is sent)."""
        return _ROUTE_STATUS[self]


_ROUTE_STATUS: dict[Route, MessageStatus] = {
    Route.SEND: MessageStatus.SENT,
    Route.RETRY: MessageStatus.RETRYING,
    Route.WAIT: MessageStatus.PENDING,
    Route.FAIL: MessageStatus.FAILED,
    Route.EXPIRE: MessageStatus.EXPIRED,
    Route.CANCEL: MessageStatus.CANCELLED,
}


class Reason(StrEnum):
    """Why a message ended without being sent (its `last_error`), whichever service ended it."""

    MAILING_CANCELLED = "mailing cancelled"
    MAILING_DELETED = "mailing deleted"
    CLIENT_DELETED = "client deleted"
    CLIENT_NO_LONGER_MATCHES = "client no longer matches the mailing filter"
    MAILING_ENDED = "mailing ended before the message was sent"
    NO_OPENING = "no window opening before the mailing ends"
