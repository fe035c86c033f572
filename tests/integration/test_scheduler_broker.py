from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.publisher import AmqpSchedulerPublisher
from services.scheduler.scheduler import Scheduler
from shared.broker import Publisher, confirm_channel, connect
from shared.topology import Topology, exchanges

from ..conftest import AMQP_URL, TEST_RETRY_DELAYS
from .test_scheduler_helpers import (
    add_mailing,
    copy_clients,
    drain_send_queue,
    scheduler_settings,
    status_counts,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ZONES = ("Europe/Moscow", "Asia/Vladivostok", "Europe/Kaliningrad", "Asia/Yekaterinburg")


async def test_two_schedulers_dispatch_every_message_once(database_url: str, topology: Topology) -> None:
    await copy_clients(database_url, 20_000, ZONES)
    engine = create_async_engine(database_url, pool_size=10)
    now = datetime.now(UTC)
    settings = scheduler_settings(database_url, dispatch_batch=700, messages_per_event=100, max_outstanding=0)
    connections = [await connect(AMQP_URL), await connect(AMQP_URL)]
    try:
        mailing = await add_mailing(engine, now - timedelta(minutes=1), now + timedelta(hours=1))
        schedulers = []
        for connection in connections:
            events, work = await exchanges(await confirm_channel(connection), topology)
            publisher = AmqpSchedulerPublisher(Publisher(work), Publisher(events), topology)
            metrics = SchedulerMetrics(CollectorRegistry())
            schedulers.append(Scheduler(engine, publisher, settings, metrics))
        await asyncio.gather(*(s.tick(now) for s in schedulers), *(s.tick(now) for s in schedulers))
        ids = await drain_send_queue(AMQP_URL, topology.send_queue)
        assert len(ids) == 20_000
        assert len(set(ids)) == 20_000
        assert await status_counts(engine) == {"queued": 20_000}
        async with engine.connect() as conn:
            status = await conn.scalar(text("SELECT status FROM mailings WHERE id = :id"), {"id": mailing})
        assert status == "running"
    finally:
        for connection in connections:
            await connection.close()
        await engine.dispose()


async def seed_running_mailing(database_url: str, clients: int) -> None:
    """`clients` clients and a mailing to all of them that started a minute ago."""
    await copy_clients(database_url, clients, ZONES)
    engine = create_async_engine(database_url)
    now = datetime.now(UTC)
    await add_mailing(engine, now - timedelta(minutes=1), now + timedelta(hours=1))
    await engine.dispose()


def _start_scheduler(
    database_url: str, namespace: str, log: Path | None = None, log_level: str = "WARNING"
) -> subprocess.Popen[bytes]:
    """A scheduler process as `make run` starts it; its log lines go to `log` when given."""
    env = {
        **os.environ,
        "MAILING_DATABASE_URL": database_url,
        "MAILING_AMQP_URL": AMQP_URL,
        "MAILING_AMQP_NAMESPACE": namespace,
        "MAILING_RETRY_DELAYS_SECONDS": str(list(TEST_RETRY_DELAYS)),
        "MAILING_SCHEDULER_METRICS_PORT": "0",
        "MAILING_SCHEDULER_METRICS_HOST": "127.0.0.1",
        "MAILING_SCHEDULER_DISPATCH_BATCH": "1000",
        "MAILING_SCHEDULER_MESSAGES_PER_EVENT": "250",
        "MAILING_SCHEDULER_MAX_OUTSTANDING": "0",
        "MAILING_SCHEDULER_TICK_SECONDS": "0.5",
        "MAILING_LOG_LEVEL": log_level,
    }
    stderr = log.open("ab") if log is not None else None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "services.scheduler"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    finally:
        if stderr is not None:
            stderr.close()


async def _wait_until_running(process: subprocess.Popen[bytes], log: Path, deadline_seconds: float) -> None:
    """Until the scheduler says it runs: its signal handlers are in place and it reads the database."""
    deadline = time.monotonic() + deadline_seconds
    while "scheduler running" not in (lines := await asyncio.to_thread(log.read_text)):
        assert process.poll() is None, f"the scheduler exited with {process.returncode}: {lines}"
        assert time.monotonic() < deadline, f"the scheduler did not start: {lines}"
        await asyncio.sleep(0.05)


async def _wait_for(
    engine_url: str, condition: Callable[[dict[str, int]], bool], deadline_seconds: float
) -> dict[str, int]:
    engine = create_async_engine(engine_url)
    try:
        deadline = time.monotonic() + deadline_seconds
        while True:
            counts = await status_counts(engine)
            if condition(counts):
                return counts
            assert time.monotonic() < deadline, f"timed out waiting: {counts}"
            await asyncio.sleep(0.02)
    finally:
        await engine.dispose()


@pytest.mark.timeout(120)
async def test_a_killed_scheduler_loses_nothing_and_leaves_at_most_one_batch_to_the_sweep(
    database_url: str, topology: Topology
) -> None:
    total = 100_000
    await seed_running_mailing(database_url, total)

    first = _start_scheduler(database_url, topology.namespace)
    try:
        await _wait_for(database_url, lambda c: c.get("queued", 0) >= 20_000, 30)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    counts = await _wait_for(database_url, lambda c: True, 1)
    assert counts.get("queued", 0) < total, "killed too late to prove anything"

    second = _start_scheduler(database_url, topology.namespace)
    try:
        await _wait_for(database_url, lambda c: c.get("queued", 0) == total, 60)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0

    # Every message is queued in the database (waited for above). A dispatch publishes after its commit,
    # so a kill between the two leaves that one batch queued with no delivery yet: the recovery sweep
    # publishes it once a sender consumes. Nothing is published twice.
    ids = await drain_send_queue(AMQP_URL, topology.send_queue)
    assert len(ids) == len(set(ids))
    assert total - 1000 <= len(ids) <= total


@pytest.mark.timeout(120)
async def test_two_scheduler_processes_dispatch_every_message_once(
    database_url: str, topology: Topology, tmp_path: Path
) -> None:
    total = 20_000
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    processes = [_start_scheduler(database_url, topology.namespace, log, "INFO") for log in logs]
    try:
        # Both run before the mailing exists, so that both take part, and a SIGTERM finds their handlers.
        for process, log in zip(processes, logs, strict=True):
            await _wait_until_running(process, log, 60)
        await seed_running_mailing(database_url, total)
        await _wait_for(database_url, lambda c: c.get("queued", 0) == total, 60)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert [process.wait(timeout=20) for process in processes] == [0, 0]

    ids = await drain_send_queue(AMQP_URL, topology.send_queue)
    assert len(ids) == total
    assert len(set(ids)) == total


async def test_the_scheduler_sees_how_many_senders_consume_the_send_queue(topology: Topology) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        events, work = await exchanges(await confirm_channel(connection), topology)
        publisher = AmqpSchedulerPublisher(Publisher(work), Publisher(events), topology, connection)
        status = await publisher.send_queue_status()
        assert status is not None and status.consumers == 0
        channel = await connection.channel()
        queue = await channel.get_queue(topology.send_queue)

        async def ignore(message: object) -> None:
            return None

        tag = await queue.consume(ignore)
        status = await publisher.send_queue_status()
        assert status is not None and status.consumers == 1
        await queue.cancel(tag)
