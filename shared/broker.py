"""Connecting to RabbitMQ, publishing with confirms, and the one consumer wrapper that acks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from loguru import logger
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, stop_never, wait_exponential

from shared.contracts import C, Contract, decode
from shared.db import TRANSIENT_DB_ERRORS
from shared.topology import PARKED_TTL_SECONDS, Topology

# A robust channel waits for a lost broker to come back; a publisher must not wait that long.
PUBLISH_TIMEOUT_SECONDS = 30.0
CONNECT_ERRORS = (ConnectionError, OSError, aio_pika.exceptions.AMQPConnectionError)
OUTAGE_PAUSES = (0.5, 1.0, 2.0, 5.0)


async def connect(url: str, *, give_up_after: float | None = None) -> AbstractRobustConnection:
    """A robust connection; waits (with growing pauses, at most 5 s) for a broker that is still starting
    or restarting, for ever unless `give_up_after` says otherwise: a service started while the broker
    is away waits for it instead of exiting into a restart loop."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(CONNECT_ERRORS),
        wait=wait_exponential(multiplier=0.2, max=5),
        stop=stop_never if give_up_after is None else stop_after_delay(give_up_after),
        reraise=True,
    ):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                logger.warning(
                    "RabbitMQ not reachable yet, retrying (attempt {})", attempt.retry_state.attempt_number
                )
            return await aio_pika.connect_robust(url, timeout=10)
    raise AssertionError("unreachable")


async def confirm_channel(connection: AbstractRobustConnection) -> AbstractChannel:
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


def amqp_message(
    body: bytes,
    *,
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
    expiration: float | None = None,
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        headers=headers,
        expiration=expiration,
    )


def parked_message(
    body: bytes,
    reason: str,
    *,
    ttl_seconds: float,
    headers: dict[str, Any] | None = None,
    content_type: str | None = "application/json",
) -> aio_pika.Message:
    """A copy for the parking lot: why it was parked in `x-parked-reason`, and an expiry, so the lot
    empties itself of what nobody looked at (the database keeps every failed message)."""
    return aio_pika.Message(
        body,
        content_type=content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={**(headers or {}), "x-parked-reason": reason[:500]},
        expiration=ttl_seconds,
    )


class Publisher:
    """Publishes contracts with publisher confirms and `mandatory`, confirming a batch as a stream."""

    def __init__(self, exchange: AbstractExchange) -> None:
        self.exchange = exchange

    async def publish(self, contract: Contract, routing_key: str, *, message_id: str | None = None) -> None:
        await self.exchange.publish(amqp_message(contract.encode(), message_id=message_id), routing_key)

    async def publish_many(
        self,
        items: Iterable[tuple[Contract, str]],
        *,
        within: float = PUBLISH_TIMEOUT_SECONDS,
        mandatory: bool = True,
    ) -> None:
        """Publish every item and return once the broker confirmed all of them; raises if any failed
        or the confirms did not all come `within` seconds (callers often hold a transaction open).

        `mandatory` makes an unroutable message an error: right for commands and for events a known
        consumer must get; a fact nobody subscribes to yet (`message.finalized`) is published without."""
        await confirm_all(
            [self.exchange.publish(amqp_message(c.encode()), key, mandatory=mandatory) for c, key in items],
            within=within,
        )


async def confirm_all(publishes: Sequence[Awaitable[object]], *, within: float) -> None:
    """Await publishes made on a confirm channel together (confirms stream back), raising the first error."""
    results = await asyncio.wait_for(asyncio.gather(*publishes, return_exceptions=True), timeout=within)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class Reject(Exception):
    """A handler raises it for a delivery that can never be processed: it goes to the parking lot."""


T = TypeVar("T", bound=Contract)


@dataclass
class Delivery(Generic[T]):
    body: T
    redelivered: bool
    delivery_count: int


Handler = Callable[[Delivery[C]], Awaitable[None]]


@dataclass(frozen=True)
class ParkingLot:
    """Where a consumer parks what can never be processed: `routing_key` on the publisher's exchange, each
    parked copy expiring after `ttl_seconds`."""

    publisher: Publisher
    routing_key: str
    ttl_seconds: float = PARKED_TTL_SECONDS


@dataclass(frozen=True)
class Patience:
    """How a consumer waits: `requeue_pause` before it requeues a failed delivery; a handler that raises
    one of `transient` (a dependency is down) is called again, the delivery in hand, for up to
    `outage_seconds`."""

    requeue_pause: float = 1.0
    transient: tuple[type[BaseException], ...] = ()
    outage_seconds: float = 300.0


class Consumer(Generic[C]):
    """Owns the ack decision for every handler: ack on success, park on Reject or an unreadable body,
    requeue on any other error (the queue's delivery limit parks a poison message)."""

    def __init__(
        self,
        queue: AbstractQueue,
        contract: type[C],
        handler: Callable[[Delivery[C]], Awaitable[None]],
        *,
        parking: ParkingLot,
        patience: Patience = Patience(),
    ) -> None:
        self.queue = queue
        self.contract = contract
        self.handler = handler
        self.parking = parking
        self.patience = patience
        self._tag: str | None = None
        self._active: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._tag = await self.queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            await self._process(message)
        except aio_pika.exceptions.ChannelInvalidStateError:
            # The channel closed (broker restart) while the handler ran: the broker delivers the message
            # again on the new channel, and the handlers are idempotent.
            logger.warning("a delivery from {} outlived its channel; it comes again", self.queue.name)
        finally:
            if task is not None:
                self._active.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        count = int(message.headers.get("x-delivery-count", 0) or 0)  # type: ignore[arg-type]
        try:
            body = decode(self.contract, message.body)
        except (ValidationError, ValueError) as exc:
            await self._park(message, f"unreadable body: {exc}")
            return
        try:
            await self._handle_riding_out_outages(Delivery(body, bool(message.redelivered), count))
        except Reject as exc:
            await self._park(message, str(exc))
        except asyncio.CancelledError:
            # Stopping, not a failure of this delivery: a nack does not count towards the limit.
            await message.nack(requeue=True)
            raise
        except Exception:
            logger.exception("handler failed on {} (delivery {}); requeueing", self.queue.name, count + 1)
            await asyncio.sleep(self.patience.requeue_pause)
            # A reject, not a nack: from RabbitMQ 4.3 only a reject counts towards the queue's delivery
            # limit (x-delivery-limit), which is what parks a delivery that always fails.
            await message.reject(requeue=True)
        else:
            await message.ack()

    async def _handle_riding_out_outages(self, delivery: Delivery[C]) -> None:
        # A dependency that is down (the database restarting) is waited for with the delivery in hand:
        # each requeue would count towards the queue's delivery limit and park a healthy delivery.
        pauses = iter(OUTAGE_PAUSES)
        deadline = asyncio.get_running_loop().time() + self.patience.outage_seconds
        while True:
            try:
                await self.handler(delivery)
                return
            except self.patience.transient as exc:
                pause = next(pauses, OUTAGE_PAUSES[-1])
                if asyncio.get_running_loop().time() + pause > deadline:
                    raise
                logger.warning(
                    "handler on {} met an outage ({!r}); trying again in {}s", self.queue.name, exc, pause
                )
                await asyncio.sleep(pause)

    async def _park(self, message: AbstractIncomingMessage, reason: str) -> None:
        logger.error("parking a delivery from {}: {}", self.queue.name, reason)
        parked = parked_message(
            message.body,
            reason,
            ttl_seconds=self.parking.ttl_seconds,
            headers={**message.headers, "x-parked-from": self.queue.name},
            content_type=message.content_type,
        )
        await self.parking.publisher.exchange.publish(parked, self.parking.routing_key)
        await message.ack()

    async def stop(self, *, drain_timeout: float = 10.0) -> None:
        """Stop taking deliveries, then give the ones in progress time to finish."""
        if self._tag is not None:
            tag, self._tag = self._tag, None
            try:
                # A robust channel waits for its connection without end: a broker that is away (or a
                # stalled network) must not hold the shutdown, and it sends no deliveries meanwhile.
                async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                    await self.queue.cancel(tag)
            except Exception as exc:  # a broken connection raises what its transport raised; stop regardless
                logger.warning(
                    "could not cancel the consumer of {} ({!r}); stopping anyway", self.queue.name, exc
                )
        if self._active:
            await asyncio.wait(list(self._active), timeout=drain_timeout)


# Reading a queue's counts must not hang a service's loop while the broker is away.
QUEUE_STATUS_TIMEOUT_SECONDS = 5.0
# Nor cancelling a consumer its shutdown.
CANCEL_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class QueueStatus:
    ready: int
    consumers: int


async def queue_status(channel: AbstractChannel, name: str) -> QueueStatus:
    """The named queue's ready messages and consumers, by a passive declare on the underlying channel:
    it never creates the queue, and unlike `declare_queue` it leaves nothing on a robust channel to be
    declared again after every reconnect."""
    async with asyncio.timeout(QUEUE_STATUS_TIMEOUT_SECONDS):
        underlay = await channel.get_underlay_channel()
        result = await underlay.queue_declare(name, passive=True)
    return QueueStatus(int(result.message_count or 0), int(result.consumer_count or 0))


async def queue_depths(channel: AbstractChannel, names: Sequence[str]) -> dict[str, int]:
    """Ready-message counts of the named queues."""
    return {name: (await queue_status(channel, name)).ready for name in names}


async def consumed_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    """A queue to consume from, known to the robust channel: after the broker comes back the channel
    declares it again and restores its consumers (a queue got with `get_queue(ensure=False)` is not
    restored, and its consumer silently stays gone)."""
    return await channel.declare_queue(name, passive=True)


def service_consumer(
    queue: AbstractQueue,
    contract: type[C],
    handler: Callable[[Delivery[C]], Awaitable[None]],
    *,
    work: AbstractExchange,
    topology: Topology,
) -> Consumer[C]:
    """The consumer every service runs: parks to the topology's parking lot (copies that expire), and
    waits out a database outage with the delivery in hand."""
    return Consumer(
        queue,
        contract,
        handler,
        parking=ParkingLot(Publisher(work), topology.parking_key, topology.parked_ttl_seconds),
        patience=Patience(transient=TRANSIENT_DB_ERRORS),
    )
