"""Wiring of the real adapters (PostgreSQL, RabbitMQ, SMTP, the ops server) and the daily loop."""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

from loguru import logger
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from services.reporter.mailer import Mailer, SmtpMailer
from services.reporter.metrics import ReporterMetrics
from services.reporter.service import POOL_SIZE, Reporter
from services.reporter.settings import ReporterSettings
from shared.broker import service_consumer
from shared.clock import Clock, utc_now
from shared.contracts import MessagesFinalized
from shared.db import make_engine
from shared.service import StackedService, link_service


async def run_loop(reporter: Reporter, tick_seconds: float, stop: asyncio.Event) -> None:
    """Tick at once (a day missed while down goes out on start), then every `tick_seconds`."""
    while not stop.is_set():
        try:
            await reporter.tick(stop)
        except Exception:
            logger.exception("reporter tick failed; trying again on the next one")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick_seconds)


class ReporterService(StackedService):
    """The reporter process: records outcomes from its queue, sends each day's report from its loop."""

    name = "reporter"

    def __init__(self, settings: ReporterSettings, reporter: Reporter, *, serve_ops: bool) -> None:
        self.settings = settings
        self.reporter = reporter
        self.serve_ops = serve_ops
        super().__init__()

    @property
    def metrics(self) -> ReporterMetrics:
        return self.reporter.metrics

    @property
    def engine(self) -> AsyncEngine:
        return self.reporter.engine

    async def _start(self, running: AsyncExitStack) -> None:
        settings = self.settings
        topology = settings.topology()
        running.push_async_callback(self.engine.dispose)
        link = await link_service(
            running,
            settings,
            self.metrics.registry,
            self.engine,
            topology.service_queue("reporter"),
            settings.prefetch,
            serve_ops=self.serve_ops,
        )
        consumer = service_consumer(
            link.queue, MessagesFinalized, self.reporter.on_finalized, work=link.work, topology=topology
        )
        stop = asyncio.Event()
        loop = asyncio.create_task(run_loop(self.reporter, settings.tick_seconds, stop), name="reporter")

        async def end_loop() -> None:
            stop.set()
            await loop

        running.push_async_callback(end_loop)
        await consumer.start()
        running.push_async_callback(consumer.stop)
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


def build_reporter(
    settings: ReporterSettings,
    *,
    clock: Clock = utc_now,
    mailer: Mailer | None = None,
    registry: CollectorRegistry | None = None,
    serve_ops: bool = True,
) -> ReporterService:
    metrics = ReporterMetrics(registry if registry is not None else CollectorRegistry())
    # An engine opens no connection until it is used: building one here connects to nothing.
    engine = make_engine(settings, pool_size=POOL_SIZE)
    reporter = Reporter(engine, mailer or SmtpMailer(settings), settings, metrics, clock=clock)
    return ReporterService(settings, reporter, serve_ops=serve_ops)
