"""The operations endpoints every background service serves: /metrics, /healthz, /readyz."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.domain.statuses import Health
from shared.readiness import broker_ready, database_ready

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def build_ops_app(registry: CollectorRegistry, readiness: ReadinessCheck) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": Health.OK})

    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness()
        ready = all(checks.values())
        return web.json_response(
            {"status": Health.READY if ready else Health.NOT_READY, "checks": checks},
            status=200 if ready else 503,
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@dataclass
class BrokerSlot:
    """A service's RabbitMQ connection once it has one. Its ops server starts before it connects, which
    waits as long as the broker is down: alive (/healthz) at once, ready (/readyz) once connected, so a
    broker that is down at start-up fails no liveness probe (a restart loop would only add to the wait)."""

    connection: AbstractRobustConnection | None = None


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT set `stop` (a graceful stop) instead of killing the process."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)


async def serve_service_ops(
    running: AsyncExitStack,
    serve: bool,
    host: str,
    port: int,
    registry: CollectorRegistry,
    engine: AsyncEngine,
) -> BrokerSlot:
    """A background service's ops server (when `serve`), stopped by `running`, started before the service
    connects to RabbitMQ: ready while both PostgreSQL and RabbitMQ are. Returns the slot for
    `link_broker` to fill, which its readiness reads."""
    broker = BrokerSlot()
    if not serve:
        return broker

    async def readiness() -> dict[str, bool]:
        return {"database": await database_ready(engine), "rabbitmq": broker_ready(broker.connection)}

    runner = web.AppRunner(build_ops_app(registry, readiness), access_log=None)
    await runner.setup()
    running.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, host, port).start()
    return broker
