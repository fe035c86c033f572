"""Wiring of the real adapters and the periodic loop; the only place that knows them all."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from loguru import logger
from prometheus_client import CollectorRegistry

from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.publisher import AmqpSchedulerPublisher
from services.scheduler.scheduler import Scheduler
from services.scheduler.settings import SchedulerSettings
from shared.broker import Delivery, Publisher, service_consumer
from shared.clock import Clock, utc_now
from shared.contracts import MailingChanged
from shared.db import make_engine
from shared.service import StackedService, link_service


async def run_loop(
    scheduler: Scheduler, tick_seconds: float, wake: asyncio.Event, stop: asyncio.Event
) -> None:
    """Tick every `tick_seconds`, or sooner when an event woke us, until asked to stop."""
    while not stop.is_set():
        wake.clear()
        try:
            await scheduler.tick(should_stop=stop.is_set)
        except Exception:
            logger.exception("scheduler tick failed; trying again on the next one")
        waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=tick_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


# Mailing events held at once: each only wakes the loop.
EVENTS_PREFETCH = 16


class SchedulerService(StackedService):
    """The scheduler process: the tick loop, woken early by mailing events, and its ops server."""

    name = "scheduler"

    def __init__(
        self, settings: SchedulerSettings, *, clock: Clock, metrics: SchedulerMetrics, serve_ops: bool
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.serve_ops = serve_ops
        super().__init__()

    async def _start(self, running: AsyncExitStack) -> None:
        settings = self.settings
        topology = settings.topology()
        engine = make_engine(settings)
        running.push_async_callback(engine.dispose)
        link = await link_service(
            running,
            settings,
            self.metrics.registry,
            engine,
            topology.service_queue("scheduler"),
            EVENTS_PREFETCH,
            serve_ops=self.serve_ops,
        )
        connection, events, work = link.connection, link.events, link.work
        publisher = AmqpSchedulerPublisher(Publisher(work), Publisher(events), topology, connection)
        scheduler = Scheduler(engine, publisher, settings, self.metrics, clock=self.clock)
        wake = asyncio.Event()

        async def on_event(delivery: Delivery[MailingChanged]) -> None:
            await scheduler.on_mailing_changed(delivery)
            wake.set()

        consumer = service_consumer(link.queue, MailingChanged, on_event, work=work, topology=topology)
        await consumer.start()
        running.push_async_callback(consumer.stop)
        stop = asyncio.Event()
        loop = asyncio.create_task(run_loop(scheduler, settings.tick_seconds, wake, stop), name="scheduler")

        async def end_loop() -> None:
            # The tick under way stops after its current batch; what is left waits for the next start.
            stop.set()
            await loop

        running.push_async_callback(end_loop)
        logger.info(
            "scheduler running: tick {}s, batch {}, {} per event, max outstanding {}, metrics on {}:{}",
            settings.tick_seconds,
            settings.dispatch_batch,
            settings.messages_per_event,
            settings.max_outstanding or "unlimited",
            settings.metrics_host,
            settings.metrics_port,
        )


def build_scheduler(
    settings: SchedulerSettings,
    *,
    clock: Clock = utc_now,
    registry: CollectorRegistry | None = None,
    serve_ops: bool = True,
) -> SchedulerService:
    metrics = SchedulerMetrics(registry if registry is not None else CollectorRegistry())
    return SchedulerService(settings, clock=clock, metrics=metrics, serve_ops=serve_ops)
