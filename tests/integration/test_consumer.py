from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aio_pika
import pytest

from bench.chaos import FreezingProxy
from shared.broker import (
    CANCEL_TIMEOUT_SECONDS,
    Consumer,
    Delivery,
    ParkingLot,
    Patience,
    Publisher,
    Reject,
    confirm_channel,
    connect,
)
from shared.contracts import SendItem, SendMessages
from shared.topology import Topology

from ..conftest import AMQP_URL

pytestmark = pytest.mark.integration


def command(message_id: int) -> SendMessages:
    return SendMessages(messages=[SendItem(message_id=message_id, mailing_id=1, client_id=1)])


async def parked(channel: aio_pika.abc.AbstractChannel, topology: Topology, count: int) -> list[str]:
    queue = await channel.get_queue(topology.parking_queue)
    reasons: list[str] = []
    for _ in range(200):
        message = await queue.get(fail=False)
        if message is not None:
            await message.ack()
            reasons.append(str(message.headers.get("x-parked-reason")))
            if len(reasons) == count:
                return reasons
        else:
            await asyncio.sleep(0.02)
    pytest.fail(f"only {len(reasons)} of {count} deliveries reached the parking lot")


async def test_the_consumer_acks_parks_and_requeues_by_the_handlers_outcome(topology: Topology) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)
        seen: list[tuple[int, int]] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery[SendMessages]) -> None:
            message_id = delivery.body.messages[0].message_id
            seen.append((message_id, delivery.delivery_count))
            if message_id == 2:
                raise Reject("message 2 can never be processed")
            if message_id == 3 and delivery.delivery_count == 0:
                raise RuntimeError("a passing failure")
            if message_id == 3:
                done.set()

        queue = await channel.get_queue(topology.send_queue)
        consumer = Consumer(
            queue,
            SendMessages,
            handler,
            parking=ParkingLot(Publisher(work), topology.parking_key),
            patience=Patience(requeue_pause=0.01),
        )
        await consumer.start()
        publisher = Publisher(work)
        for message_id in (1, 2, 3):
            await publisher.publish(command(message_id), topology.send_key)
        await work.publish(aio_pika.Message(b"not json"), topology.send_key)
        await asyncio.wait_for(done.wait(), 10)
        reasons = await parked(channel, topology, 2)
        await consumer.stop()

    assert "message 2 can never be processed" in reasons
    assert any(r.startswith("unreadable body") for r in reasons)
    # Message 3 failed once, went back to the queue and was handled on its second delivery.
    assert [(m, n) for m, n in seen if m == 3] == [(3, 0), (3, 1)]
    assert [m for m, _ in seen].count(1) == 1


async def test_stopping_a_consumer_does_not_wait_for_a_broker_that_is_away(topology: Topology) -> None:
    target = urlsplit(AMQP_URL)
    proxy = FreezingProxy(target.port or 5672)
    await proxy.start()
    proxied = AMQP_URL.replace(f"{target.hostname}:{target.port or 5672}", f"127.0.0.1:{proxy.port}")
    connection = await connect(proxied)
    try:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)

        async def handler(delivery: Delivery[SendMessages]) -> None:
            return None

        queue = await channel.get_queue(topology.send_queue)
        parking = ParkingLot(Publisher(work), topology.parking_key)
        consumer = Consumer(queue, SendMessages, handler, parking=parking)
        await consumer.start()
        await proxy.stop()  # the broker is gone; the robust connection waits to reconnect, without end
        deadline = asyncio.get_running_loop().time() + 30
        while connection.connected.is_set():
            assert asyncio.get_running_loop().time() < deadline, "the connection never saw the broker go"
            await asyncio.sleep(0.05)
        # A guard against a hang, not a timing: the consumer gives its cancel CANCEL_TIMEOUT_SECONDS.
        await asyncio.wait_for(consumer.stop(), CANCEL_TIMEOUT_SECONDS + 10)
    finally:
        await asyncio.wait_for(connection.close(), 10)
