"""Every message that crosses RabbitMQ, as a versioned pydantic model. Nothing else builds these bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

MailingEventType = Literal["created", "updated", "paused", "resumed", "cancelled", "deleted"]
FinalStatus = Literal["sent", "failed", "expired", "cancelled"]


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
        return f"mailing.{self.type}"


class SendItem(Contract):
    message_id: int
    mailing_id: int
    client_id: int


class SendMessages(Contract):
    """Command to the sender: deliver these messages. One AMQP message carries many SMS."""

    schema_version: Literal[1] = 1
    messages: list[SendItem] = Field(min_length=1)


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

    routing_key: Literal["message.finalized"] = "message.finalized"
