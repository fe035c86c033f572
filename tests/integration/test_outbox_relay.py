"""The outbox relay over real PostgreSQL and RabbitMQ: every mailing event reaches the scheduler's queue
once and in order per mailing, also when the broker goes away and comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from bench.chaos import FreezingProxy
from services.api.app import build_api
from services.api.settings import ApiSettings
from shared.broker import connect
from shared.contracts import MailingChanged, decode
from shared.topology import Topology

from ..conftest import AMQP_URL
from .conftest import ADMIN_HEADERS
from .test_api_mailings import MAILINGS, mailing_body, outbox

pytestmark = pytest.mark.integration


@asynccontextmanager
async def running_api(settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = build_api(settings).app
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", headers=ADMIN_HEADERS
        ) as client,
    ):
        yield client


def relaying(api_settings: ApiSettings, amqp_url: str) -> ApiSettings:
    return api_settings.model_copy(
        update={"relay_enabled": True, "amqp_url": amqp_url, "relay_poll_seconds": 0.1}
    )


async def consume_events(
    topology: Topology, done: Callable[[list[MailingChanged]], bool], wait_at_most: float = 30.0
) -> list[MailingChanged]:
    """Every event in the scheduler's queue until `done` holds, then whatever else arrives in a moment."""
    events: list[MailingChanged] = []
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.service_queue("scheduler"))
        deadline = time.monotonic() + wait_at_most
        settle_until: float | None = None
        while settle_until is None or time.monotonic() < settle_until:
            message = await queue.get(fail=False)
            if message is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"only {len(events)} events arrived: {events}")
                await asyncio.sleep(0.05)
            else:
                await message.ack()
                events.append(decode(MailingChanged, message.body))
            if settle_until is None and done(events):
                settle_until = time.monotonic() + 1.0
    return events


def by_mailing(events: list[MailingChanged]) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for e in events:
        grouped.setdefault(e.mailing_id, []).append(e.type)
    return grouped


def assert_each_once(events: list[MailingChanged]) -> None:
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids)), f"duplicates among {ids}"


async def test_every_mailing_change_reaches_the_scheduler_once_and_in_order(
    api_settings: ApiSettings, topology: Topology
) -> None:
    async with running_api(relaying(api_settings, AMQP_URL)) as api:
        first = (await api.post(MAILINGS, json=mailing_body())).json()["id"]
        second = (await api.post(MAILINGS, json=mailing_body())).json()["id"]
        for action in ("pause", "resume", "pause", "cancel"):
            assert (await api.post(f"{MAILINGS}/{first}/{action}")).status_code == 200
        assert (await api.patch(f"{MAILINGS}/{second}", json={"text": "new"})).status_code == 200
        assert (await api.delete(f"{MAILINGS}/{second}")).status_code == 204
        events = await consume_events(topology, lambda got: len(got) >= 8)
        assert (await api.get("/readyz")).json()["checks"]["rabbitmq"] is True
    assert_each_once(events)
    assert by_mailing(events) == {
        first: ["created", "paused", "resumed", "paused", "cancelled"],
        second: ["created", "updated", "deleted"],
    }
    assert [e.routing_key for e in events if e.mailing_id == second] == [
        "mailing.created",
        "mailing.updated",
        "mailing.deleted",
    ]
    assert await outbox(api_settings) == []


async def test_events_written_while_the_broker_is_unreachable_arrive_once_when_it_returns(
    api_settings: ApiSettings, topology: Topology
) -> None:
    target = urlsplit(AMQP_URL)
    proxy = FreezingProxy(target.port or 5672, target.hostname or "127.0.0.1")
    await proxy.start()
    proxied_url = AMQP_URL.replace(f"{target.hostname}:{target.port or 5672}", f"127.0.0.1:{proxy.port}")
    try:
        async with running_api(relaying(api_settings, proxied_url)) as api:
            before = (await api.post(MAILINGS, json=mailing_body())).json()["id"]
            await consume_events(topology, lambda got: len(got) >= 1)

            await proxy.stop()
            during = []
            for _ in range(5):
                started = time.monotonic()
                response = await api.post(MAILINGS, json=mailing_body())
                assert response.status_code == 201
                assert time.monotonic() - started < 2.0
                during.append(response.json()["id"])
            assert (await api.post(f"{MAILINGS}/{before}/pause")).status_code == 200
            readiness = await api.get("/readyz")  # still in service: its writes wait in the outbox
            assert (readiness.status_code, readiness.json()["checks"]["rabbitmq"]) == (200, False)
            assert len(await outbox(api_settings)) == 6

            await proxy.start()
            events = await consume_events(topology, lambda got: len(got) >= 6)
    finally:
        await proxy.stop()
    assert_each_once(events)
    assert by_mailing(events) == {before: ["paused"], **{m: ["created"] for m in during}}
    assert await outbox(api_settings) == []


async def test_with_rabbitmq_unreachable_the_api_keeps_accepting_mailings(api_settings: ApiSettings) -> None:
    closed = FreezingProxy(1)
    await closed.start()
    port = closed.port
    await closed.stop()
    async with running_api(relaying(api_settings, f"amqp://guest:guest@127.0.0.1:{port}/")) as api:
        for _ in range(3):
            started = time.monotonic()
            assert (await api.post(MAILINGS, json=mailing_body())).status_code == 201
            assert time.monotonic() - started < 2.0
        assert (await api.get(MAILINGS)).json()["total"] == 3
        readiness = await api.get("/readyz")
        assert readiness.status_code == 200, "a broker outage must not take the API out of service"
        assert readiness.json()["checks"] == {"database": True, "rabbitmq": False}
        # The relay's failed passes still count what waits (MailingOutboxBacklogGrowing reads it).
        deadline = time.monotonic() + 30
        while "mailing_api_outbox_backlog 3.0" not in (await api.get("/metrics")).text:
            assert time.monotonic() < deadline, "the outbox backlog gauge never showed the waiting events"
            await asyncio.sleep(0.1)
    assert [key for key, _ in await outbox(api_settings)] == ["mailing.created"] * 3
