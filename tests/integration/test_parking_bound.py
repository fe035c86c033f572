from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aio_pika.abc import AbstractChannel

from shared.broker import (
    Consumer,
    Delivery,
    ParkingLot,
    Publisher,
    Reject,
    amqp_message,
    confirm_channel,
    connect,
)
from shared.contracts import SendItem, SendMessages
from shared.settings import CommonSettings
from shared.topology import PARKED_TTL_SECONDS, Topology

from ..conftest import AMQP_URL

pytestmark = pytest.mark.integration

TINY_TTL = 0.5


def command(message_id: int) -> SendMessages:
    return SendMessages(messages=[SendItem(message_id=message_id, mailing_id=1, client_id=1)])


async def parked_bodies(channel: AbstractChannel, topology: Topology) -> list[bytes]:
    """Everything left in the parking lot, taken out (a quorum queue's ready count is only refreshed
    with its metrics, so reading is the reliable way to see what expired)."""
    queue = await channel.get_queue(topology.parking_queue)
    bodies: list[bytes] = []
    while (message := await queue.get(fail=False)) is not None:
        await message.ack()
        bodies.append(message.body)
    return bodies


async def let_the_tiny_ttl_run_out() -> None:
    await asyncio.sleep(TINY_TTL * 2)


def test_a_parked_copy_lives_seven_days_unless_the_setting_says_otherwise() -> None:
    assert CommonSettings(_env_file=None).topology().parked_ttl_seconds == PARKED_TTL_SECONDS == 7 * 86400
    topology = CommonSettings(parking_ttl_seconds=60, _env_file=None).topology()
    assert topology.expiration(topology.parking_key) == 60
    assert topology.expiration(topology.send_key) is None
    assert topology.expiration(topology.retry_key(0)) is None


async def test_a_delivery_the_consumer_parks_leaves_the_parking_lot_when_its_ttl_runs_out(
    topology: Topology,
) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)
        handled = asyncio.Event()

        async def refuse(_: Delivery[SendMessages]) -> None:
            handled.set()
            raise Reject("can never be processed")

        consumer = Consumer(
            await channel.get_queue(topology.send_queue),
            SendMessages,
            refuse,
            parking=ParkingLot(Publisher(work), topology.parking_key, TINY_TTL),
        )
        await consumer.start()
        await Publisher(work).publish(command(1), topology.send_key)
        await asyncio.wait_for(handled.wait(), 10)
        await consumer.stop()
        kept = amqp_message(command(2).encode(), expiration=topology.expiration(topology.parking_key))
        await work.publish(kept, topology.parking_key)
        await let_the_tiny_ttl_run_out()
        left = await parked_bodies(channel, topology)

    assert left == [command(2).encode()]


async def test_a_copy_published_with_the_parking_keys_expiration_leaves_the_parking_lot(
    topology: Topology,
) -> None:
    bounded = dataclasses.replace(topology, parked_ttl_seconds=TINY_TTL)
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)
        for message_id in (3, 4):
            copy = amqp_message(
                command(message_id).encode(),
                headers={"x-parked-reason": "http 400"},
                expiration=bounded.expiration(bounded.parking_key),
            )
            await work.publish(copy, bounded.parking_key)
        await work.publish(amqp_message(command(5).encode()), bounded.send_key)
        await let_the_tiny_ttl_run_out()
        left = await parked_bodies(channel, topology)
        send = await (await channel.get_queue(topology.send_queue)).get(timeout=5)
        await send.ack()

    assert left == []
    assert send.body == command(5).encode()
    assert send.expiration is None


async def test_a_parked_copy_carries_the_default_ttl_and_stays_until_then(topology: Topology) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)
        copy = amqp_message(command(6).encode(), expiration=topology.expiration(topology.parking_key))
        await work.publish(copy, topology.parking_key)
        message = await (await channel.get_queue(topology.parking_queue)).get(timeout=5)
        await message.ack()

    assert message.body == command(6).encode()
    assert message.expiration == PARKED_TTL_SECONDS
