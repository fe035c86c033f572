"""Wiring of the real adapters and the periodic loop; the only place that knows them all."""

from __future__ import annotations

import asyncio

from loguru import logger
from prometheus_client import CollectorRegistry

from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.publisher import AmqpSchedulerPublisher
from services.scheduler.scheduler import Scheduler
from services.scheduler.settings import SchedulerSettings
from shared.broker import Delivery, Publisher, confirm_channel, connect, consumed_queue, service_consumer
from shared.clock import Clock, utc_now
from shared.contracts import MailingChanged
from shared.db import make_engine
from shared.ops import release, start_service_ops, stop_on_signals
from shared.topology import declare, exchanges


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


async def run(settings: SchedulerSettings, stop: asyncio.Event, *, clock: Clock = utc_now) -> None:
    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry)
    engine = make_engine(settings)
    connection = await connect(settings.amqp_url)
    try:
        topology = settings.topology()
        channel = await confirm_channel(connection)
        await declare(channel, topology)
        events, work = await exchanges(channel, topology)
        publisher = AmqpSchedulerPublisher(Publisher(work), Publisher(events), topology, connection)
        scheduler = Scheduler(engine, publisher, settings, metrics, clock=clock)
        wake = asyncio.Event()

        async def on_event(delivery: Delivery[MailingChanged]) -> None:
            await scheduler.on_mailing_changed(delivery)
            wake.set()

        consumer_channel = await connection.channel()
        await consumer_channel.set_qos(prefetch_count=16)
        queue = await consumed_queue(consumer_channel, topology.service_queue("scheduler"))
        consumer = service_consumer(queue, MailingChanged, on_event, work=work, topology=topology)
        ops = await start_service_ops(
            settings.metrics_host, settings.metrics_port, registry, engine, connection
        )
        await consumer.start()
        logger.info(
            "scheduler running: tick {}s, batch {}, {} per event, max outstanding {}, metrics on {}:{}",
            settings.tick_seconds,
            settings.dispatch_batch,
            settings.messages_per_event,
            settings.max_outstanding or "unlimited",
            settings.metrics_host,
            settings.metrics_port,
        )
        try:
            await run_loop(scheduler, settings.tick_seconds, wake, stop)
        finally:
            await consumer.stop()
            await ops.cleanup()
    finally:
        await release(connection, engine)
        logger.info("scheduler stopped")


async def serve(settings: SchedulerSettings) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await run(settings, stop)
