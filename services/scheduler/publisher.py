"""The scheduler's outgoing port: send commands and finalized events, each confirmed before returning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.broker import Publisher
from shared.contracts import MessagesFinalized, SendMessages
from shared.topology import Topology


class SchedulerPublisher(Protocol):
    async def send(self, commands: Sequence[SendMessages]) -> None: ...

    async def finalized(self, events: Sequence[MessagesFinalized]) -> None: ...


class AmqpSchedulerPublisher:
    def __init__(self, work: Publisher, events: Publisher, topology: Topology) -> None:
        self.work = work
        self.events = events
        self.topology = topology

    async def send(self, commands: Sequence[SendMessages]) -> None:
        await self.work.publish_many((command, self.topology.send_key) for command in commands)

    async def finalized(self, events: Sequence[MessagesFinalized]) -> None:
        await self.events.publish_many(((event, event.routing_key) for event in events), mandatory=False)
