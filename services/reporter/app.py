"""Wiring of the real adapters (PostgreSQL, RabbitMQ, SMTP, the ops server) and the daily loop."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from loguru import logger
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from services.reporter.mailer import Mailer, SmtpMailer
from services.reporter.metrics import ReporterMetrics
from services.reporter.service import Reporter
from services.reporter.settings import ReporterSettings
from shared.broker import Consumer, confirm_channel, connect, consumed_queue, service_consumer
from shared.clock import Clock, utc_now
from shared.contracts import MessagesFinalized
from shared.db import make_engine
from shared.ops import release, start_service_ops, stop_on_signals
from shared.topology import declare, exchanges


async def run_loop(reporter: Reporter, tick_seconds: float, stop: asyncio.Event) -> None:
    """Tick at once (a day missed while down goes out on start), then every `tick_seconds`."""
    while not stop.is_set():
        try:
            await reporter.tick(stop)
        except Exception:
            logger.exception("reporter tick failed; trying again on the next one")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick_seconds)


@dataclass
class ReporterApp:
    reporter: Reporter
    metrics: ReporterMetrics
    engine: AsyncEngine
    connection: AbstractRobustConnection
    consumer: Consumer[MessagesFinalized]
    ops: web.AppRunner | None
    loop: asyncio.Task[None]
    stopping: asyncio.Event

    async def stop(self) -> None:
        self.stopping.set()
        await self.consumer.stop()
        await self.loop
        await release(self.connection, self.engine, self.ops)
        logger.info("reporter stopped")


async def start_reporter(
    settings: ReporterSettings,
    *,
    clock: Clock = utc_now,
    mailer: Mailer | None = None,
    registry: CollectorRegistry | None = None,
    serve_ops: bool = True,
) -> ReporterApp:
    metrics = ReporterMetrics(registry if registry is not None else CollectorRegistry())
    topology = settings.topology()
    engine = make_engine(settings, pool_size=2)
    connection = await connect(settings.amqp_url)
    channel = await confirm_channel(connection)
    await declare(channel, topology)
    _, work = await exchanges(channel, topology)
    reporter = Reporter(engine, mailer or SmtpMailer(settings), settings, metrics, clock=clock)
    consume_channel = await connection.channel()
    await consume_channel.set_qos(prefetch_count=settings.prefetch)
    queue = await consumed_queue(consume_channel, topology.service_queue("reporter"))
    consumer = service_consumer(queue, MessagesFinalized, reporter.on_finalized, work=work, topology=topology)
    ops = None
    if serve_ops:
        ops = await start_service_ops(
            settings.metrics_host, settings.metrics_port, metrics.registry, engine, connection
        )
    await consumer.start()
    stopping = asyncio.Event()
    loop = asyncio.create_task(run_loop(reporter, settings.tick_seconds, stopping))
    logger.info(
        "reporter running: reports at {} {} to {} via {}:{}, tick {}s, metrics on {}:{}",
        settings.send_at.isoformat(timespec="minutes"),
        settings.timezone,
        ", ".join(settings.mail_to),
        settings.smtp_host,
        settings.smtp_port,
        settings.tick_seconds,
        settings.metrics_host,
        settings.metrics_port,
    )
    return ReporterApp(reporter, metrics, engine, connection, consumer, ops, loop, stopping)


async def serve(settings: ReporterSettings) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        app = await start_reporter(settings)
        await stop.wait()
        await app.stop()
