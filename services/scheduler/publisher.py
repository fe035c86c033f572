"""The scheduler's outgoing port: send commands and finalized events, each confirmed before returning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aio_pika.abc import AbstractRobustConnection

from shared.broker import Publisher, consumer_count
from shared.contracts import MessagesFinalized, SendMessages
from shared.topology import Topology


class SchedulerPublisher(Protocol):
    async def send(self, commands: Sequence[SendMessages]) -> None: ...

    async def finalized(self, events: Sequence[MessagesFinalized]) -> None: ...

    async def senders_listening(self) -> bool: ...


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

    async def senders_listening(self) -> bool:
        if self.connection is None:
            return True
        try:
            # A channel of its own each time: a robust channel answers a passive declare of a queue it
            # declared itself from its cache, with the consumer count of that moment.
            async with await self.connection.channel() as channel:
                return await consumer_count(channel, self.topology.send_queue) > 0
        except Exception:
            # Unknown: sweep anyway, a duplicate copy is harmless where a lost message is not.
            return True
