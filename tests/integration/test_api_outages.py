"""The API through outages: while PostgreSQL is down it answers 503 with Retry-After and comes back by
itself; while RabbitMQ or PostgreSQL is down the outbox relay backs off and carries on afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from loguru import logger
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from bench.chaos import PrivatePostgres
from services.api.app import build_api
from services.api.metrics import ApiMetrics
from services.api.relay import OutboxRelay
from services.api.settings import ApiSettings
from shared.topology import Topology
from tests.faults import private_postgres

from ..conftest import AMQP_URL
from .conftest import ADMIN_HEADERS, ADMIN_KEY
from .test_api_mailings import MAILINGS, mailing_body, outbox
from .test_outbox_relay import consume_events

pytestmark = pytest.mark.integration

CLIENTS = "/api/v1/clients"
CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1/"
POLL_SECONDS = 0.05
MAX_PAUSE_SECONDS = 0.4


@pytest.fixture
async def postgres() -> AsyncIterator[PrivatePostgres]:
    """A private cluster with the `mailing` database migrated, for tests that stop it."""
    async with private_postgres("mailing") as cluster:
        yield cluster


@pytest.fixture
def outage_settings(postgres: PrivatePostgres, amqp_namespace: str) -> ApiSettings:
    return ApiSettings(
        database_url=postgres.url("mailing"),
        amqp_url=AMQP_URL,
        amqp_namespace=amqp_namespace,
        bootstrap_api_key=SecretStr(ADMIN_KEY),
        relay_enabled=False,
        relay_poll_seconds=POLL_SECONDS,
        _env_file=None,
    )


@asynccontextmanager
async def serving(settings: ApiSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = build_api(settings).app
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", headers=ADMIN_HEADERS
        ) as client,
    ):
        yield app, client


@asynccontextmanager
async def relay_running(app: FastAPI, settings: ApiSettings) -> AsyncIterator[OutboxRelay]:
    relay = OutboxRelay(
        settings,
        app.state.sessions,
        ApiMetrics(CollectorRegistry()),
        max_pause=MAX_PAUSE_SECONDS,
        connect_timeout=1.0,
    )
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await task


async def until(condition: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def client_body(n: int) -> dict[str, str]:
    return {"phone": f"7900555{n:04d}", "timezone": "Europe/Moscow"}


async def test_while_the_database_is_down_writes_answer_503_with_retry_after_and_succeed_once_it_is_back(
    outage_settings: ApiSettings, postgres: PrivatePostgres
) -> None:
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        async with serving(outage_settings) as (_, api):
            assert (await api.post(CLIENTS, json=client_body(1))).status_code == 201

            await postgres.stop_server()
            answers = [await api.post(CLIENTS, json=client_body(2)) for _ in range(3)]
            readiness = await api.get("/readyz")

            await postgres.start_server()
            after = await api.post(CLIENTS, json=client_body(2))
            ready_again = await api.get("/readyz")
    finally:
        logger.remove(sink)
    for answer in answers:
        assert answer.status_code == 503
        assert 1 <= int(answer.headers["Retry-After"]) <= 30
        assert answer.json() == {
            "detail": "the database is unavailable, try again shortly",
            "request_id": answer.headers["X-Request-ID"],
        }
    assert readiness.status_code == 503
    assert readiness.json()["checks"]["database"] is False
    assert after.status_code == 201
    assert ready_again.json()["checks"]["database"] is True
    outage_warnings = [w for w in warnings if w.startswith("database unavailable")]
    assert len(outage_warnings) == 1, warnings


async def test_an_api_started_while_the_database_is_down_answers_503_and_works_once_it_is_up(
    outage_settings: ApiSettings, postgres: PrivatePostgres
) -> None:
    await postgres.stop_server()
    async with serving(outage_settings) as (_, api):
        alive = await api.get("/healthz")
        during = await api.post(CLIENTS, json=client_body(1))
        await postgres.start_server()
        answers: list[int] = []

        async def created() -> bool:
            # The bootstrap key is stored in the background once the database answers; until then 401.
            answers.append((await api.post(CLIENTS, json=client_body(1))).status_code)
            return answers[-1] == 201

        deadline = asyncio.get_running_loop().time() + 15
        while not await created():
            assert asyncio.get_running_loop().time() < deadline, answers
            await asyncio.sleep(0.05)
    assert alive.status_code == 200
    assert during.status_code == 503
    assert set(answers) <= {401, 201}


async def test_after_a_database_restart_the_first_request_is_answered_normally(
    outage_settings: ApiSettings, postgres: PrivatePostgres
) -> None:
    async with serving(outage_settings) as (_, api):
        assert (await api.post(CLIENTS, json=client_body(1))).status_code == 201
        await postgres.restart()
        response = await api.post(CLIENTS, json=client_body(2))
    assert response.status_code == 201


async def test_with_rabbitmq_unreachable_a_mailing_is_accepted_and_waits_in_the_outbox_for_a_relay(
    api_settings: ApiSettings, topology: Topology
) -> None:
    settings = api_settings.model_copy(update={"relay_poll_seconds": POLL_SECONDS})
    async with serving(settings) as (app, api):
        async with relay_running(app, settings.model_copy(update={"amqp_url": CLOSED_BROKER})) as cut_off:
            created = await api.post(MAILINGS, json=mailing_body())
            assert created.status_code == 201
            pauses: list[float] = []

            def backed_off_to_the_cap() -> bool:
                if not pauses or pauses[-1] != cut_off.pause:
                    pauses.append(cut_off.pause)
                return cut_off.failures >= 4

            await until(backed_off_to_the_cap, "the cut-off relay failed four passes")
            assert await outbox(settings) == [("mailing.created", created.json()["id"])]

        async with relay_running(app, settings) as relay:
            events = await consume_events(topology, lambda got: len(got) >= 1)
            await until(lambda: relay.pause == POLL_SECONDS, "the relay polls at its normal pace")
    assert pauses == [POLL_SECONDS, 2 * POLL_SECONDS, 4 * POLL_SECONDS, MAX_PAUSE_SECONDS], (
        "each failed pass doubles the pause, up to the cap"
    )
    assert [(e.type, e.mailing_id) for e in events] == [("created", created.json()["id"])]
    assert await outbox(settings) == []


async def test_the_relay_backs_off_while_the_database_is_down_keeps_the_broker_and_carries_on_after(
    outage_settings: ApiSettings, postgres: PrivatePostgres, topology: Topology
) -> None:
    async with serving(outage_settings) as (app, api), relay_running(app, outage_settings) as relay:
        await until(lambda: relay.connection is not None, "the relay holds a broker connection")
        broker_connection = relay.connection

        await postgres.stop_server()
        await until(lambda: relay.pause == MAX_PAUSE_SECONDS, "the relay's pause reaches its cap")
        failed_passes = relay.failures
        kept = relay.connection is broker_connection

        await postgres.start_server()
        created = await api.post(MAILINGS, json=mailing_body())
        events = await consume_events(topology, lambda got: len(got) >= 1)
        await until(lambda: relay.failures == 0, "the relay counts no failure")
    assert failed_passes >= 3
    assert kept, "a database outage does not cost the relay its broker connection"
    assert created.status_code == 201
    assert [(e.type, e.mailing_id) for e in events] == [("created", created.json()["id"])]
