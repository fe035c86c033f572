import itertools

import pytest

from shared.domain.statuses import (
    FINAL_MAILING_STATUSES,
    FINAL_MESSAGE_STATUSES,
    MailingEventType,
    MailingStatus,
    MessageStatus,
    can_transition,
    can_transition_mailing,
)

pytestmark = pytest.mark.unit

M = MessageStatus
ALLOWED_MESSAGE_MOVES = {
    (M.PENDING, M.QUEUED),
    (M.QUEUED, M.SENT),
    (M.QUEUED, M.RETRYING),
    (M.QUEUED, M.PENDING),
    (M.QUEUED, M.QUEUED),
    (M.RETRYING, M.QUEUED),
    (M.RETRYING, M.PENDING),
} | {(old, new) for old in (M.PENDING, M.QUEUED, M.RETRYING) for new in (M.FAILED, M.EXPIRED, M.CANCELLED)}


def test_statuses_have_their_wire_values() -> None:
    assert [s.value for s in MessageStatus] == [
        "pending",
        "queued",
        "retrying",
        "sent",
        "failed",
        "expired",
        "cancelled",
    ]
    assert [s.value for s in MailingStatus] == ["scheduled", "running", "paused", "finished", "cancelled"]


def test_mailing_events_have_their_wire_values_and_routing_keys() -> None:
    assert [(e.value, e.routing_key) for e in MailingEventType] == [
        ("created", "mailing.created"),
        ("updated", "mailing.updated"),
        ("paused", "mailing.paused"),
        ("resumed", "mailing.resumed"),
        ("cancelled", "mailing.cancelled"),
        ("deleted", "mailing.deleted"),
    ]


def test_final_message_statuses_are_sent_failed_expired_cancelled() -> None:
    assert {M.SENT, M.FAILED, M.EXPIRED, M.CANCELLED} == FINAL_MESSAGE_STATUSES


@pytest.mark.parametrize("old,new", list(itertools.product(MessageStatus, MessageStatus)))
def test_message_moves_only_along_the_designed_graph(old: MessageStatus, new: MessageStatus) -> None:
    assert can_transition(old, new) == ((old, new) in ALLOWED_MESSAGE_MOVES)


@pytest.mark.parametrize("final", sorted(FINAL_MESSAGE_STATUSES))
def test_final_message_status_never_changes(final: MessageStatus) -> None:
    assert not any(can_transition(final, new) for new in MessageStatus)


def test_retrying_message_is_requeued_before_it_can_be_sent() -> None:
    assert not can_transition(M.RETRYING, M.SENT)
    assert not can_transition(M.PENDING, M.SENT)


S = MailingStatus
ALLOWED_MAILING_MOVES = {
    (S.SCHEDULED, S.RUNNING),
    (S.SCHEDULED, S.PAUSED),
    (S.SCHEDULED, S.CANCELLED),
    (S.RUNNING, S.PAUSED),
    (S.RUNNING, S.FINISHED),
    (S.RUNNING, S.CANCELLED),
    (S.PAUSED, S.RUNNING),
    (S.PAUSED, S.SCHEDULED),
    (S.PAUSED, S.CANCELLED),
    (S.PAUSED, S.FINISHED),
}


@pytest.mark.parametrize("old,new", list(itertools.product(MailingStatus, MailingStatus)))
def test_mailing_moves_only_along_the_designed_graph(old: MailingStatus, new: MailingStatus) -> None:
    assert can_transition_mailing(old, new) == ((old, new) in ALLOWED_MAILING_MOVES)


def test_finished_and_cancelled_mailings_are_final() -> None:
    assert {S.FINISHED, S.CANCELLED} == FINAL_MAILING_STATUSES
    for final in FINAL_MAILING_STATUSES:
        assert not any(can_transition_mailing(final, new) for new in MailingStatus)
