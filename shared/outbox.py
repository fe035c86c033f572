"""Writing mailing events to the outbox (in the caller's transaction) and reading them back as contracts."""

from __future__ import annotations

from datetime import datetime

from shared.contracts import MailingChanged
from shared.domain.statuses import MailingEventType
from shared.models import OutboxEvent


def mailing_event(event_type: MailingEventType, mailing_id: int, occurred_at: datetime) -> OutboxEvent:
    return OutboxEvent(
        routing_key=event_type.routing_key,
        payload={"type": event_type, "mailing_id": mailing_id, "occurred_at": occurred_at.isoformat()},
    )


def to_contract(row_id: int, payload: dict[str, object]) -> MailingChanged:
    return MailingChanged.model_validate({**payload, "event_id": row_id})
