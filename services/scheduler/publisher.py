"""The scheduler's outgoing port: send commands and finalized events, each confirmed before returning."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from aio_pika.abc import AbstractRobustConnection
from loguru import logger

from shared.broker import QUEUE_STATUS_TIMEOUT_SECONDS, Publisher, QueueStatus, queue_status
from shared.contracts import MessagesFinalized, SendMessages
from shared.topology import Topology


class SchedulerPublisher(Protocol):
    async def send(self, commands: Sequence[SendMessages]) -> None: ...

    async def finalized(self, events: Sequence[MessagesFinalized]) -> None: ...

    async def send_queue_status(self) -> QueueStatus | None: ...


class AmqpSchedulerPublisher:
    def __init__(
        self,
        work: Publisher,
        events: Publisher,
        topology: Topology,
        connection: AbstractRobustConnection | None = None,
    ) -> None:
        self.work = work
        self.events = events
        self.topology = topology
        self.connection = connection

    async def send(self, commands: Sequence[SendMessages]) -> None:
        await self.work.publish_many((command, self.topology.send_key) for command in commands)

    async def finalized(self, events: Sequence[MessagesFinalized]) -> None:
        await self.events.publish_many(((event, event.routing_key) for event in events), mandatory=False)

    async def send_queue_status(self) -> QueueStatus | None:
        """The send queue's ready messages and consumers, or None when the broker cannot tell now."""
        if self.connection is None:
            return None
        try:
            async with asyncio.timeout(QUEUE_STATUS_TIMEOUT_SECONDS):
                channel = await self.connection.channel()
            async with channel:
                return await queue_status(channel, self.topology.send_queue)
        except Exception as exc:
            logger.warning("could not read the send queue's status: {!r}", exc)
            return None
