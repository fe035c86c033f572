"""Every message that crosses RabbitMQ, as a versioned pydantic model. Nothing else builds these bodies."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Final, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.domain.statuses import FINAL_MESSAGE_STATUSES, MailingEventType, MessageStatus

FINALIZED_ROUTING_KEY: Final = "message.finalized"


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


C = TypeVar("C", bound=Contract)


def decode(contract: type[C], body: bytes) -> C:
    return contract.model_validate_json(body)


class MailingChanged(Contract):
    """Event: an operator created, changed, paused, resumed, cancelled or deleted a mailing."""

    schema_version: Literal[1] = 1
    event_id: int = Field(description="The outbox row id; consumers use it to drop a re-delivered event")
    type: MailingEventType
    mailing_id: int
    occurred_at: datetime

    @property
    def routing_key(self) -> str:
        return self.type.routing_key


class SendItem(Contract):
    message_id: int
    mailing_id: int
    client_id: int


class SendMessages(Contract):
    """Command to the sender: deliver these messages. One AMQP message carries many SMS."""

    schema_version: Literal[1] = 1
    messages: list[SendItem] = Field(min_length=1)


def _final(status: MessageStatus) -> MessageStatus:
    if status not in FINAL_MESSAGE_STATUSES:
        raise ValueError(f"not a final status: {status!r}")
    return status


FinalStatus = Annotated[MessageStatus, AfterValidator(_final)]


class MessageOutcome(Contract):
    message_id: int
    mailing_id: int
    client_id: int
    status: FinalStatus
    attempts: int
    occurred_at: datetime
    reason: str | None = None


class MessagesFinalized(Contract):
    """Event: these messages reached a final status."""

    schema_version: Literal[1] = 1
    outcomes: list[MessageOutcome] = Field(min_length=1)

    routing_key: Literal["message.finalized"] = FINALIZED_ROUTING_KEY


_FINAL_STATUSES: Final = frozenset(s.value for s in FINAL_MESSAGE_STATUSES)


def finalized_body(
    outcomes: Sequence[tuple[int, int, int, str, int, str | None]], occurred_at: datetime
) -> bytes:
    """`MessagesFinalized(outcomes=...).encode()` for outcomes given as (message_id, mailing_id, client_id,
    status, attempts, reason), written directly: the sender publishes one such event per status write,
    thousands of outcomes a second, and building and validating a model for each costs more than the
    rest of the write. It parses back to the model built from the same outcomes (tests compare the two)
    and is stricter than the model: ids and attempts must be ints, `occurred_at` timezone-aware."""
    if not outcomes:
        raise ValueError("a MessagesFinalized event needs at least one outcome")
    if occurred_at.utcoffset() is None:
        raise ValueError("occurred_at must be timezone-aware")
    tail = f'"occurred_at":"{occurred_at.isoformat()}","reason":'
    parts: list[str] = []
    append = parts.append
    for message_id, mailing_id, client_id, status, attempts, reason in outcomes:
        if status not in _FINAL_STATUSES:
            raise ValueError(f"not a final status: {status!r}")
        # Plain ints only (not bools, not numeric strings): then printing them is valid JSON. Checked
        # by type, which is cheaper than an integer format for each field.
        if not (type(message_id) is type(mailing_id) is type(client_id) is type(attempts) is int):
            numbers = (message_id, mailing_id, client_id, attempts)
            raise ValueError(f"ids and attempts must be integers, not {numbers!r}")
        append(
            f'{{"message_id":{message_id},"mailing_id":{mailing_id},"client_id":{client_id},'
            f'"status":"{status}","attempts":{attempts},{tail}'
            f"{'null' if reason is None else json.dumps(reason)}}}"
        )
    joined = ",".join(parts)
    return f'{{"schema_version":1,"outcomes":[{joined}],"routing_key":"{FINALIZED_ROUTING_KEY}"}}'.encode()
