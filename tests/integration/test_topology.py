from __future__ import annotations

import asyncio

import aio_pika
import pytest

from shared.broker import Publisher, confirm_channel, connect, queue_depths
from shared.contracts import SendItem, SendMessages, decode
from shared.topology import Topology, declare

from ..conftest import AMQP_URL

pytestmark = pytest.mark.integration


async def test_declaring_the_topology_twice_is_harmless(topology: Topology) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queues = await declare(channel, topology)
        assert set(queues) == set(topology.all_queues)


async def test_a_message_in_a_retry_tier_returns_to_the_send_queue_after_its_delay(
    topology: Topology,
) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)
        command = SendMessages(messages=[SendItem(message_id=1, mailing_id=2, client_id=3)])
        await Publisher(work).publish(command, topology.retry_key(0))
        send = await channel.get_queue(topology.send_queue)
        for _ in range(100):
            message = await send.get(fail=False)
            if message is not None:
                await message.ack()
                assert decode(SendMessages, message.body) == command
                deaths = message.headers["x-death"]
                assert isinstance(deaths, list) and isinstance(deaths[0], dict)
                assert deaths[0]["reason"] == "expired"
                return
            await asyncio.sleep(0.05)
        pytest.fail("the retried message never came back to the send queue")


async def test_an_unroutable_publish_is_an_error_not_a_silent_loss(topology: Topology) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)
        command = SendMessages(messages=[SendItem(message_id=1, mailing_id=2, client_id=3)])
        with pytest.raises(aio_pika.exceptions.PublishError):
            await Publisher(work).publish(command, "no-such-route")
        assert (await queue_depths(channel, [topology.send_queue]))[topology.send_queue] == 0


async def test_an_event_nobody_subscribes_to_yet_may_be_published_without_mandatory(
    topology: Topology,
) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await confirm_channel(connection)
        events = await channel.get_exchange(topology.events_exchange)
        command = SendMessages(messages=[SendItem(message_id=1, mailing_id=2, client_id=3)])
        await Publisher(events).publish_many([(command, "message.unheard")], mandatory=False)
        with pytest.raises(aio_pika.exceptions.PublishError):
            await Publisher(events).publish_many([(command, "message.unheard")])
