"""The one shape every service is wired in.

`build_<service>(settings, **overrides)` returns an object that has connected to nothing yet; `start()`
connects, declares and begins work, returning once the service is running; `stop()` ends it gracefully
(stop taking work, finish or give back what is under way, release connections). `serve` runs one until
SIGTERM or SIGINT. The overrides are what tests and benchmarks replace (a clock, a mailer, a provider,
a metrics registry, whether the ops server listens); production passes none.
"""

from __future__ import annotations

import asyncio
import gc
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Protocol

from aio_pika.abc import AbstractExchange, AbstractQueue, AbstractRobustConnection
from loguru import logger
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker import confirm_channel, connect, consumed_queue
from shared.ops import BrokerSlot, serve_service_ops, stop_on_signals
from shared.topology import Topology, declare, exchanges

# The collector's young-generation threshold once a service runs (Python's default is 700).
GC_YOUNG_THRESHOLD = 50_000


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(service: Service) -> None:
    """Start the service, run it until SIGTERM or SIGINT, then stop it gracefully."""
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await service.start()
        settle_heap()
        try:
            await stop.wait()
        finally:
            await service.stop()


def settle_heap() -> None:
    """Once a service has started, everything built so far (modules, settings, pools, connections) lives as
    long as the process: after one full collection (start-up's garbage is not kept for good), the
    collector stops walking it at every full collection (`gc.freeze`), and its young generation runs
    less often under a load that allocates thousands of objects a second (docs/benchmarks.md, "2026-12-01
    (eighth session): garbage collection in every service")."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class StackedService:
    """A service whose `_start` pushes the closing of everything it opens onto an exit stack, in order:
    a start that fails closes what it had opened, and `stop` closes all of it in reverse."""

    name = "service"

    def __init__(self) -> None:
        self._running = AsyncExitStack()

    async def start(self) -> None:
        try:
            await self._start(self._running)
        except BaseException:
            await self._running.aclose()
            raise

    async def _start(self, running: AsyncExitStack) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        await self._running.aclose()
        logger.info("{} stopped", self.name)


@dataclass(frozen=True)
class BrokerLink:
    """A background service's RabbitMQ: its connection, the two exchanges, and the queue it consumes."""

    connection: AbstractRobustConnection
    events: AbstractExchange
    work: AbstractExchange
    queue: AbstractQueue


async def link_broker(
    running: AsyncExitStack,
    amqp_url: str,
    topology: Topology,
    queue: str,
    prefetch: int,
    slot: BrokerSlot,
) -> BrokerLink:
    """Connect (closed by `running`; waits while the broker is down), declare the topology on a
    confirmed channel whose exchanges the service publishes to, and open `queue` for consuming on a
    channel of its own with `prefetch`; then put the connection in `slot` (what the ops server's
    readiness looks at)."""
    connection = await connect(amqp_url)
    running.push_async_callback(connection.close)
    channel = await confirm_channel(connection)
    await declare(channel, topology)
    events, work = await exchanges(channel, topology)
    consume_channel = await connection.channel()
    await consume_channel.set_qos(prefetch_count=prefetch)
    link = BrokerLink(connection, events, work, await consumed_queue(consume_channel, queue))
    slot.connection = connection
    return link


class LinkedServiceSettings(Protocol):
    """What `link_service` reads of a background service's settings."""

    amqp_url: str
    metrics_host: str
    metrics_port: int

    def topology(self) -> Topology: ...


async def link_service(
    running: AsyncExitStack,
    settings: LinkedServiceSettings,
    registry: CollectorRegistry,
    engine: AsyncEngine,
    queue: str,
    prefetch: int,
    *,
    serve_ops: bool,
) -> BrokerLink:
    """A background service's start: its ops server (when `serve_ops`) first, alive at once and ready once
    the broker is linked, then `link_broker`, which waits while RabbitMQ is down."""
    broker = await serve_service_ops(
        running, serve_ops, settings.metrics_host, settings.metrics_port, registry, engine
    )
    return await link_broker(running, settings.amqp_url, settings.topology(), queue, prefetch, broker)
