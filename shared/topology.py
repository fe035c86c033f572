"""The whole RabbitMQ topology, declared idempotently in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from shared.domain.retry import RetryPolicy

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
# How long a parked copy stays in the parking lot: long enough to look at after a weekend.
PARKED_TTL_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Topology:
    namespace: str
    # One TTL queue per delay of the policy.
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    # A delivery that crashes its consumer this many times is dead-lettered to the parking lot.
    delivery_limit: int = 10
    # The parking lot is bounded by a per-message expiry on each parked copy, not by a queue argument:
    # installations already have the queue, and RabbitMQ refuses a redeclare with other arguments.
    parked_ttl_seconds: float = PARKED_TTL_SECONDS

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return self.retry_policy.delays

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def work_exchange(self) -> str:
        return f"{self.namespace}.work"

    @property
    def send_queue(self) -> str:
        return f"{self.namespace}.send"

    send_key = "send"
    parking_key = "parking"

    @property
    def parking_queue(self) -> str:
        return f"{self.namespace}.parking"

    def expiration(self, routing_key: str) -> float | None:
        """The per-message TTL (seconds) of a copy published to the work exchange with this key: parked
        copies expire, nothing else does. One constant TTL keeps expiry in FIFO order, so no copy waits
        behind a longer-lived one at the head of the queue."""
        return self.parked_ttl_seconds if routing_key == self.parking_key else None

    def retry_key(self, tier: int) -> str:
        return f"retry.{int(self.retry_delays[tier] * 1000)}ms"

    def retry_queue(self, tier: int) -> str:
        return f"{self.namespace}.send.{self.retry_key(tier)}"

    def service_queue(self, service: str) -> str:
        return f"{self.namespace}.{service}.events"

    @property
    def all_queues(self) -> list[str]:
        return [
            self.send_queue,
            self.parking_queue,
            *(self.retry_queue(t) for t in range(len(self.retry_delays))),
            *(self.service_queue(service) for service in SERVICE_BINDINGS),
        ]


# A service's queue exists only once the service consumes it: an unread queue would grow without end.
SERVICE_BINDINGS: dict[str, tuple[str, ...]] = {
    "scheduler": ("mailing.*",),
    "reporter": ("message.finalized",),
}


async def declare(channel: AbstractChannel, topology: Topology) -> dict[str, AbstractQueue]:
    """Declare every exchange and queue of the design; safe to call from every service at start."""
    events = await channel.declare_exchange(
        topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    work = await channel.declare_exchange(topology.work_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    queues: dict[str, AbstractQueue] = {}

    parking = await channel.declare_queue(topology.parking_queue, durable=True, arguments=QUORUM)
    await parking.bind(work, topology.parking_key)
    queues[topology.parking_queue] = parking

    send = await channel.declare_queue(
        topology.send_queue,
        durable=True,
        arguments={
            **QUORUM,
            "x-delivery-limit": topology.delivery_limit,
            "x-dead-letter-exchange": topology.work_exchange,
            "x-dead-letter-routing-key": topology.parking_key,
        },
    )
    await send.bind(work, topology.send_key)
    queues[topology.send_queue] = send

    for tier, delay in enumerate(topology.retry_delays):
        # One queue per delay: TTL only expires at the head of a queue, so tiers must not share one.
        retry = await channel.declare_queue(
            topology.retry_queue(tier),
            durable=True,
            arguments={
                **QUORUM,
                "x-message-ttl": int(delay * 1000),
                "x-dead-letter-exchange": topology.work_exchange,
                "x-dead-letter-routing-key": topology.send_key,
            },
        )
        await retry.bind(work, topology.retry_key(tier))
        queues[topology.retry_queue(tier)] = retry

    for service, keys in SERVICE_BINDINGS.items():
        queue = await channel.declare_queue(
            topology.service_queue(service),
            durable=True,
            arguments={
                **QUORUM,
                "x-delivery-limit": topology.delivery_limit,
                "x-dead-letter-exchange": topology.work_exchange,
                "x-dead-letter-routing-key": topology.parking_key,
            },
        )
        for key in keys:
            await queue.bind(events, key)
        queues[topology.service_queue(service)] = queue
    return queues


async def exchanges(
    channel: AbstractChannel, topology: Topology
) -> tuple[AbstractExchange, AbstractExchange]:
    """The (events, work) exchanges, assuming `declare` already ran."""
    events = await channel.get_exchange(topology.events_exchange, ensure=False)
    work = await channel.get_exchange(topology.work_exchange, ensure=False)
    return events, work


async def delete(channel: AbstractChannel, topology: Topology) -> None:
    """Remove everything `declare` made (tests use it to clean up their random namespace)."""
    for name in topology.all_queues:
        await channel.queue_delete(name)
    await channel.exchange_delete(topology.events_exchange)
    await channel.exchange_delete(topology.work_exchange)
