"""Publishing written outcomes: the copies they ask for and one `message.finalized` event per batch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from aio_pika.abc import AbstractExchange

from services.sender.outcome import Outcome
from shared.broker import PUBLISH_TIMEOUT_SECONDS, amqp_message, confirm_all
from shared.contracts import FINALIZED_ROUTING_KEY, SendItem, SendMessages, finalized_body
from shared.domain.statuses import FINAL_MESSAGE_STATUSES
from shared.topology import Topology

PARKED_REASON_HEADER = "x-parked-reason"
PARKED_REASON_LIMIT = 500


@dataclass(frozen=True)
class WorkCopy:
    command: SendMessages
    routing_key: str
    headers: dict[str, str] | None = None


def copies(outcomes: Sequence[Outcome], parking_key: str) -> list[WorkCopy]:
    """One copy per route (a retry tier, the send queue) carrying all its messages; one per parked
    message, which carries the reason it failed."""
    routed: dict[str, list[SendItem]] = defaultdict(list)
    parked: list[WorkCopy] = []
    for outcome in outcomes:
        if outcome.route == parking_key:
            reason = (outcome.reason or "")[:PARKED_REASON_LIMIT]
            command = SendMessages(messages=[outcome.item()])
            parked.append(WorkCopy(command, parking_key, {PARKED_REASON_HEADER: reason}))
        elif outcome.route is not None:
            routed[outcome.route].append(outcome.item())
    return [WorkCopy(SendMessages(messages=items), key) for key, items in routed.items()] + parked


def finalized(outcomes: Sequence[Outcome], at: datetime) -> bytes | None:
    """The encoded `MessagesFinalized` event of the final outcomes, None when there is none."""
    # Written out rather than through Outcome.final and .attempts_after: this runs for every message.
    final = [
        (
            o.claim.message_id,
            o.claim.mailing_id,
            o.claim.client_id,
            o.status,
            o.claim.attempts if o.attempts is None else o.attempts,
            o.reason,
        )
        for o in outcomes
        if o.status in FINAL_MESSAGE_STATUSES
    ]
    return finalized_body(final, at) if final else None


def needs_publishing(outcomes: Sequence[Outcome]) -> bool:
    return any(o.route is not None or o.status in FINAL_MESSAGE_STATUSES for o in outcomes)


class AmqpBus:
    def __init__(self, work: AbstractExchange, events: AbstractExchange, topology: Topology) -> None:
        self.work = work
        self.events = events
        self.topology = topology

    async def publish(self, outcomes: Sequence[Outcome], at: datetime) -> None:
        """Publish the copies and the event of these written outcomes; returns once all are confirmed."""
        topology = self.topology
        sends = [
            self.work.publish(
                amqp_message(
                    c.command.encode(), headers=c.headers, expiration=topology.expiration(c.routing_key)
                ),
                c.routing_key,
            )
            for c in copies(outcomes, topology.parking_key)
        ]
        event = finalized(outcomes, at)
        if event is not None:
            # An outcome is a fact for whoever subscribes; having no subscriber yet is not an error.
            sends.append(self.events.publish(amqp_message(event), FINALIZED_ROUTING_KEY, mandatory=False))
        await confirm_all(sends, within=PUBLISH_TIMEOUT_SECONDS)
