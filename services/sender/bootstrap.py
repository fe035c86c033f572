"""Wires the real adapters (PostgreSQL, RabbitMQ, the API's HTTP client, the ops server) into a sender."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from loguru import logger
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.sender.breaker import BreakerConfig, BreakerState, CircuitBreaker
from services.sender.bus import AmqpBus
from services.sender.http import HttpClient
from services.sender.metrics import SenderMetrics
from services.sender.pacing import Pacer
from services.sender.provider import AnswerHook, ProbeClient, Provider, make_client
from services.sender.ratelimit import PostgresTokenBucket, RateLimiter
from services.sender.service import Clocks, Guards, Sender, SenderParts
from services.sender.settings import SenderSettings
from services.sender.store import Store
from services.sender.writer import OutcomeWriter
from shared.broker import (
    Consumer,
    queue_depths,
    service_consumer,
)
from shared.clock import utc_now
from shared.contracts import SendMessages
from shared.db import make_engine
from shared.readiness import READINESS_TIMEOUT_SECONDS
from shared.service import StackedService, link_service

# The external API's client: ProbeClient over the shared HTTP client; benchmarks put an instant one in.
ProviderFactory = Callable[[HttpClient, AnswerHook], Provider]


@dataclass(frozen=True)
class HealthReport:
    """What the sender tells the admin dashboard of itself every few seconds (table sender_health)."""

    instance: str
    breaker: CircuitBreaker
    sender: Sender

    async def write(self, engine: AsyncEngine, retry_queued: int | None, parked_queued: int | None) -> None:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS * 2), engine.begin() as conn:
            await conn.execute(
                _HEALTH,
                {
                    "instance": self.instance,
                    "circuit": int(self.breaker.state),
                    "in_flight": self.sender.calls_in_flight,
                    # Looked at again here: a sender given no more work would otherwise stay fenced.
                    "fenced": self.sender.check_fence(),
                    "retry": retry_queued,
                    "parked": parked_queued,
                },
            )


_HEALTH = text(
    "INSERT INTO sender_health AS h (instance, circuit_state, calls_in_flight, fenced, retry_queued,"
    " parked_queued, reported_at) VALUES (:instance, :circuit, :in_flight, :fenced, :retry, :parked, now())"
    " ON CONFLICT (instance) DO UPDATE SET circuit_state = excluded.circuit_state,"
    " calls_in_flight = excluded.calls_in_flight, fenced = excluded.fenced,"
    " retry_queued = excluded.retry_queued, parked_queued = excluded.parked_queued, reported_at = now()"
)


async def _watch(
    connection: AbstractRobustConnection,
    engine: AsyncEngine,
    settings: SenderSettings,
    metrics: SenderMetrics,
    health: HealthReport,
) -> None:
    """Every few seconds: the retry tiers' and the parking lot's depths into the metrics, and the sender's
    state into sender_health. Neither may stop for an absent broker or database."""
    topology = settings.topology()
    retries = [topology.retry_queue(t) for t in range(len(topology.retry_delays))]
    channel: AbstractChannel | None = None
    while True:
        retry_queued = parked_queued = None
        try:
            if channel is None or channel.is_closed:
                async with asyncio.timeout(settings.queue_depth_interval_seconds):
                    channel = await connection.channel()
            depths = await queue_depths(channel, [*retries, topology.parking_queue])
            for name, depth in depths.items():
                metrics.retry_depth.labels(name).set(depth)
            retry_queued = sum(depths[name] for name in retries)
            parked_queued = depths[topology.parking_queue]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("could not read queue depths: {}", exc)
            channel = None
        try:
            await health.write(engine, retry_queued, parked_queued)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("could not record the sender's health: {!r}", exc)
        await asyncio.sleep(settings.queue_depth_interval_seconds)


def build_sender(
    settings: SenderSettings,
    *,
    registry: CollectorRegistry | None = None,
    serve_ops: bool = True,
    rng: random.Random | None = None,
    make_provider: ProviderFactory = ProbeClient,
) -> SenderService:
    """The sender, not yet connected; benchmarks put in an instant provider, tests a seeded jitter."""
    metrics = SenderMetrics(registry if registry is not None else CollectorRegistry())
    return SenderService(settings, metrics, serve_ops, rng, make_provider)


class SenderService(StackedService):
    """The sender process: consumes the send queue, calls the provider, writes and publishes outcomes.
    Stopped in order: stop consuming (calls in flight finish, what was not called is given back), the
    callers, the writer's last flush, then the provider's HTTP client, the database connections, RabbitMQ."""

    name = "sender"
    # Set by start().
    engine: AsyncEngine
    store: Store
    writer: OutcomeWriter
    sender: Sender

    def __init__(
        self,
        settings: SenderSettings,
        metrics: SenderMetrics,
        serve_ops: bool,
        rng: random.Random | None,
        make_provider: ProviderFactory,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.metrics = metrics
        self.serve_ops = serve_ops
        self.rng = rng
        self.make_provider = make_provider

    async def _start(self, running: AsyncExitStack) -> None:
        """Connect, declare the topology, and consume the send queue."""
        settings, metrics = self.settings, self.metrics
        topology = settings.topology()
        self.engine = make_engine(settings)
        running.push_async_callback(self.engine.dispose)
        link = await link_service(
            running,
            settings,
            metrics.registry,
            self.engine,
            topology.send_queue,
            settings.prefetch,
            serve_ops=self.serve_ops,
        )
        connection, events, work, send_queue = link.connection, link.events, link.work, link.queue

        clocks = Clocks(now=utc_now, monotonic=time.monotonic)
        self.store = Store(self.engine, settings, topology.send_queue)
        running.push_async_callback(self.store.close)
        self.writer = OutcomeWriter(
            self.store,
            AmqpBus(work, events, topology),
            metrics,
            now=clocks.now,
            monotonic=clocks.monotonic,
            interval=settings.flush_interval_ms / 1000,
            max_rows=settings.flush_max_rows,
        )
        breaker = self._breaker(clocks)
        pacer = Pacer(settings.max_in_flight, clocks.monotonic)
        client = make_client(
            settings.probe_base_url,
            settings.probe_token,
            settings.request_timeout_seconds,
            settings.max_in_flight,
        )
        running.push_async_callback(client.close)

        def on_answer(label: str, duration: float) -> None:
            metrics.calls.record(label, duration)
            pacer.observe(duration)

        provider = self.make_provider(client, on_answer)
        parts = SenderParts(self.store, provider, self.writer, metrics)
        guards = Guards(breaker, pacer, self._limiter())
        self.sender = sender = Sender(settings, parts, guards, clocks, self.rng)
        # Read when scraped, not kept up to date on every call.
        metrics.in_flight.set_function(lambda: sender.calls_in_flight)
        metrics.pacing_interval.set_function(lambda: pacer.interval)
        self.writer.start()
        running.push_async_callback(self.writer.close)
        # Callers before the writer's last flush, so every outcome they produce reaches it.
        running.push_async_callback(sender.close, settings.request_timeout_seconds)
        consumer = service_consumer(send_queue, SendMessages, sender.handle, work=work, topology=topology)
        await consumer.start()
        running.push_async_callback(self._stop_consuming, consumer)
        health = HealthReport(f"{socket.gethostname()}:{os.getpid()}", breaker, sender)
        watch = asyncio.create_task(_watch(connection, self.engine, settings, metrics, health))
        running.push_async_callback(_cancel, watch)
        logger.bind(namespace=settings.amqp_namespace, max_in_flight=settings.max_in_flight).info(
            "sender consuming {}", topology.send_queue
        )

    async def _stop_consuming(self, consumer: Consumer[SendMessages]) -> None:
        """Messages not yet called go back; the deliveries under way get the shutdown timeout to finish."""
        logger.info("sender stopping")
        self.sender.stop()
        await consumer.stop(drain_timeout=self.settings.shutdown_timeout_seconds)

    def _breaker(self, clocks: Clocks) -> CircuitBreaker:
        settings, metrics = self.settings, self.metrics

        def on_change(state: BreakerState) -> None:
            metrics.circuit_state.set(int(state))
            if state is BreakerState.OPEN:
                metrics.circuit_opened.inc()
            logger.warning("circuit breaker {}", state.name.lower().replace("_", "-"))

        config = BreakerConfig(
            window=settings.breaker_window,
            min_calls=settings.breaker_min_calls,
            failure_ratio=settings.breaker_failure_ratio,
            cooldown_seconds=settings.breaker_cooldown_seconds,
            probes=settings.breaker_probes,
        )
        return CircuitBreaker(config, clocks.monotonic, on_change)

    def _limiter(self) -> RateLimiter | None:
        """The rate limit shared by every sender through PostgreSQL, when one is set."""
        rate = self.settings.rate_limit_per_second
        if rate <= 0:
            return None
        bucket = PostgresTokenBucket(
            self.engine, self.settings.rate_limit_name, rate, capacity=max(1.0, rate)
        )
        return RateLimiter(bucket, rate, chunk=max(1, int(rate / 10)))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
