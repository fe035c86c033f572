from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from services.scheduler.app import build_scheduler
from shared.broker import Publisher, confirm_channel, connect
from shared.contracts import MailingChanged
from shared.domain.statuses import MailingEventType
from shared.topology import Topology, exchanges

from ..conftest import AMQP_URL, TEST_RETRY_DELAYS
from .test_scheduler_helpers import add_client, add_mailing, scheduler_settings, status_counts

pytestmark = pytest.mark.integration


async def test_mailing_event_starts_delivery_without_waiting_for_the_tick(
    database_url: str, topology: Topology
) -> None:
    settings = scheduler_settings(
        database_url,
        amqp_url=AMQP_URL,
        amqp_namespace=topology.namespace,
        retry_delays_seconds=TEST_RETRY_DELAYS,
        metrics_host="127.0.0.1",
        metrics_port=0,
        tick_seconds=300,
    )
    engine = create_async_engine(database_url)
    start = datetime.now(UTC) + timedelta(minutes=1)
    await add_client(engine, "Europe/Moscow")
    mailing = await add_mailing(engine, start, start + timedelta(hours=1))
    current = [start - timedelta(seconds=30)]
    ticked = asyncio.Event()

    def clock() -> datetime:
        ticked.set()
        return current[0]

    scheduler = build_scheduler(settings, clock=clock)
    await scheduler.start()
    connection = await connect(AMQP_URL)
    try:
        # The first tick runs before the start; the next one is minutes away, so only the event can start it.
        await asyncio.wait_for(ticked.wait(), timeout=10)
        current[0] = start + timedelta(seconds=1)
        events, _ = await exchanges(await confirm_channel(connection), topology)
        event = MailingChanged(
            event_id=1, type=MailingEventType.UPDATED, mailing_id=mailing, occurred_at=current[0]
        )
        await Publisher(events).publish(event, event.routing_key)
        deadline = time.monotonic() + 10
        while (await status_counts(engine)).get("queued", 0) != 1:
            assert time.monotonic() < deadline, "the event did not start the mailing"
            await asyncio.sleep(0.05)
    finally:
        await asyncio.wait_for(scheduler.stop(), timeout=15)
        await connection.close()
        await engine.dispose()
