"""Relays outbox rows to RabbitMQ with publisher confirms; a row is deleted only once it is confirmed."""

from __future__ import annotations

import asyncio
import contextlib

from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from loguru import logger
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.metrics import ApiMetrics
from services.api.settings import ApiSettings
from shared.broker import Publisher, confirm_channel, connect
from shared.db import unit_of_work
from shared.models import OutboxEvent
from shared.outbox import to_contract
from shared.topology import declare

# Only one relay publishes at a time, so events leave in id order even with several API processes.
RELAY_LOCK_KEY = 0x6D61696C  # "mail"
PUBLISH_TIMEOUT_SECONDS = 10.0


class OutboxRelay:
    def __init__(
        self, settings: ApiSettings, sessions: async_sessionmaker[AsyncSession], metrics: ApiMetrics
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self.connection: AbstractRobustConnection | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    def wake(self) -> None:
        """Called after a commit that wrote outbox rows, so they leave at once instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        pause = self.settings.relay_poll_seconds
        while not self._stop.is_set():
            try:
                exchange = await self._exchange()
                published = await self.relay_once(exchange)
                pause = self.settings.relay_poll_seconds
                if published:
                    continue
            except Exception as exc:
                self.metrics.outbox_failures.inc()
                logger.warning("outbox relay pass failed, will retry: {!r}", exc)
                await self._drop_connection()
                pause = min(pause * 2, 5.0)
            await self._sleep(pause)
        await self._drop_connection()

    async def relay_once(self, exchange: AbstractExchange) -> int:
        async with unit_of_work(self.sessions) as session:
            if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RELAY_LOCK_KEY}):
                return 0
            rows = (
                await session.execute(
                    select(OutboxEvent.id, OutboxEvent.routing_key, OutboxEvent.payload)
                    .order_by(OutboxEvent.id)
                    .limit(self.settings.relay_batch_size)
                )
            ).all()
            if not rows:
                self.metrics.outbox_backlog.set(0)
                return 0
            # One channel delivers in publish order, so per-mailing order survives the concurrent confirms.
            await asyncio.wait_for(
                Publisher(exchange).publish_many((to_contract(r.id, r.payload), r.routing_key) for r in rows),
                timeout=PUBLISH_TIMEOUT_SECONDS,
            )
            await session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_([r.id for r in rows])))
            backlog = await session.scalar(select(func.count()).select_from(OutboxEvent))
        self.metrics.outbox_published.inc(len(rows))
        self.metrics.outbox_backlog.set(backlog or 0)
        for r in rows:
            logger.bind(mailing_id=r.payload.get("mailing_id")).info(
                "relayed event {} ({})", r.id, r.routing_key
            )
        return len(rows)

    async def _exchange(self) -> AbstractExchange:
        if self.connection is None or self.connection.is_closed:
            self.connection = await connect(self.settings.amqp_url, give_up_after=5)
            self._channel = await confirm_channel(self.connection)
            await declare(self._channel, self.settings.topology())
            logger.info("outbox relay connected to RabbitMQ")
        return await self._channel.get_exchange(self.settings.topology().events_exchange, ensure=False)

    async def _drop_connection(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
            self.connection = None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()
