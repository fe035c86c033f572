"""Relays outbox rows to RabbitMQ with publisher confirms; a row is deleted only once it is confirmed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from loguru import logger
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.errors import database_unavailable
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
# Connecting, opening the channel and declaring the topology together; a broker that accepts TCP but
# never answers must not stall the relay (and shutdown) for long.
CONNECT_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 2.0
MAX_PAUSE_SECONDS = 5.0


class OutboxRelay:
    def __init__(
        self,
        settings: ApiSettings,
        sessions: async_sessionmaker[AsyncSession],
        metrics: ApiMetrics,
        *,
        max_pause: float = MAX_PAUSE_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.settings = settings
        self.max_pause = max_pause
        self.connect_timeout = connect_timeout
        self.sessions = sessions
        self.metrics = metrics
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._pause = settings.relay_poll_seconds
        self._failures = 0

    @property
    def connection(self) -> AbstractRobustConnection | None:
        """The broker connection while it is up; None while the broker is unreachable (for /readyz)."""
        if self._connection is None or not self._connection.connected.is_set():
            return None
        return self._connection

    @property
    def pause(self) -> float:
        """Seconds the relay waits before its next pass: the poll interval, growing while passes fail."""
        return self._pause

    @property
    def failures(self) -> int:
        """Passes failed in a row (0 while the relay works)."""
        return self._failures

    def wake(self) -> None:
        """Called after a commit that wrote outbox rows, so they leave at once instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                exchange = await self._exchange()
            except Exception as exc:
                # Connecting is the broker's part alone (a refused connection is a ConnectionError, which
                # could pass for the database's).
                await self._failed(exc, database=False)
                await self._sleep(self._pause)
                continue
            if exchange is None:
                break
            try:
                published = await self.relay_once(exchange)
                self._recovered()
                if published:
                    continue
            except Exception as exc:
                await self._failed(exc, database=database_unavailable(exc))
            await self._sleep(self._pause)
        await self._drop_connection()

    async def _failed(self, exc: Exception, *, database: bool) -> None:
        self.metrics.outbox_failures.inc()
        self._failures += 1
        self._pause = min(self._pause * 2, self.max_pause)
        # One warning an outage: a pass fails every few seconds until the broker or database is back.
        if self._failures == 1:
            logger.warning(
                "outbox relay pass failed ({}), retrying with growing pauses up to {} s: {!r}",
                "database" if database else "broker",
                self.max_pause,
                exc,
            )
        else:
            logger.debug("outbox relay pass {} failed: {!r}", self._failures, exc)
        if not database:
            # A database outage leaves the broker connection as good as it was.
            await self._drop_connection()
            # What waits grows while nothing leaves: the gauge (and its alert) must see it.
            with contextlib.suppress(Exception):
                async with unit_of_work(self.sessions) as session:
                    await self._count_backlog(session)

    def _recovered(self) -> None:
        if self._failures:
            logger.info("outbox relay works again after {} failed passes", self._failures)
        self._failures = 0
        self._pause = self.settings.relay_poll_seconds

    async def relay_once(self, exchange: AbstractExchange) -> int:
        async with unit_of_work(self.sessions) as session:
            if not await session.scalar(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RELAY_LOCK_KEY}
            ):
                # Another API process relays; this one's gauge still says what waits.
                await self._count_backlog(session)
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
            # A robust channel waits for a reconnect without end while the broker is gone: the timeout ends
            # the wait, the rows stay, and the next pass publishes them over a new connection.
            await Publisher(exchange).publish_many(
                ((to_contract(r.id, r.payload), r.routing_key) for r in rows), within=PUBLISH_TIMEOUT_SECONDS
            )
            await session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_([r.id for r in rows])))
            await self._count_backlog(session)
        self.metrics.outbox_published.inc(len(rows))
        for r in rows:
            logger.bind(mailing_id=r.payload.get("mailing_id")).info(
                "relayed event {} ({})", r.id, r.routing_key
            )
        return len(rows)

    async def _count_backlog(self, session: AsyncSession) -> None:
        waiting = await session.scalar(select(func.count()).select_from(OutboxEvent))
        self.metrics.outbox_backlog.set(waiting or 0)

    async def _exchange(self) -> AbstractExchange | None:
        """The events exchange over a live connection; None when the relay was stopped meanwhile."""
        if self._channel is None or self.connection is None or self._channel.is_closed:
            # The relay reconnects itself rather than wait on the robust connection's own reconnect,
            # which would hold a database transaction open for as long as the broker is away.
            await self._drop_connection()
            if not await self._until_stopped(self._connect()):
                return None
        assert self._channel is not None  # noqa: S101 narrows a type for mypy; the lines above establish it
        return await self._channel.get_exchange(self.settings.topology().events_exchange, ensure=False)

    async def _connect(self) -> None:
        async with asyncio.timeout(self.connect_timeout):
            connection = await connect(self.settings.amqp_url, give_up_after=self.connect_timeout / 2)
            try:
                channel = await confirm_channel(connection)
                await declare(channel, self.settings.topology())
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT_SECONDS)
                raise
        self._connection, self._channel = connection, channel
        logger.info("outbox relay connected to RabbitMQ")

    async def _until_stopped(self, work: Coroutine[None, None, None]) -> bool:
        """Runs `work` unless `stop()` comes first; True when the work completed."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return False
        task.result()
        return True

    async def _drop_connection(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT_SECONDS)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()
