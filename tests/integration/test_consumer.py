from __future__ import annotations

import asyncio

import aio_pika
import pytest

from shared.broker import (
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
