"""A background service started while RabbitMQ is down: alive at once, ready once the broker comes."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp
import pytest

from bench.chaos import FreezingProxy, free_port
from services.scheduler.app import build_scheduler
from services.scheduler.settings import SchedulerSettings
from shared.topology import Topology

from ..conftest import AMQP_URL

pytestmark = pytest.mark.integration


async def _status(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(url) as answer:
            return answer.status
    except aiohttp.ClientConnectionError:
        return None


async def _until(http: aiohttp.ClientSession, url: str, status: int, deadline_seconds: float = 60) -> None:
    deadline = time.monotonic() + deadline_seconds
    while (got := await _status(http, url)) != status:
        assert time.monotonic() < deadline, f"{url} answered {got}, not {status}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_a_service_started_while_rabbitmq_is_down_is_alive_and_ready_once_it_comes(
    database_url: str, topology: Topology
) -> None:
    target = urlsplit(AMQP_URL)
    broker = FreezingProxy(target.port or 5672)
    await broker.start()
    await broker.stop()  # its port is closed: RabbitMQ is down
    port = free_port()
    settings = SchedulerSettings(
        _env_file=None,
        database_url=database_url,
        amqp_url=AMQP_URL.replace(f"{target.hostname}:{target.port or 5672}", f"127.0.0.1:{broker.port}"),
        amqp_namespace=topology.namespace,
        metrics_host="127.0.0.1",
        metrics_port=port,
    )
    service = build_scheduler(settings)
    starting = asyncio.create_task(service.start())
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            # Alive while it waits for the broker: a liveness probe does not restart it in a loop.
            await _until(http, f"http://127.0.0.1:{port}/healthz", 200)
            assert await _status(http, f"http://127.0.0.1:{port}/readyz") == 503
            assert not starting.done()
            await broker.start()
            await asyncio.wait_for(starting, 60)
            await _until(http, f"http://127.0.0.1:{port}/readyz", 200)
    finally:
        if not starting.done():
            starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await service.stop()
        await broker.stop()
