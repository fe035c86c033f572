from enum import StrEnum


class MessageStatus(StrEnum):
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


class MailingStatus(StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELLED = "cancelled"


FINAL_MAILING_STATUSES: frozenset[MailingStatus] = frozenset(
    {MailingStatus.FINISHED, MailingStatus.CANCELLED}
)

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
