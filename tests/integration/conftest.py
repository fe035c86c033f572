"""Integration fixtures: an engine on the per-test database; for the API, settings, an in-process client and
a live server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.chaos import free_port
from services.api.app import build_api
from services.api.settings import ApiSettings
from services.sender.store import Store
from shared.db import make_engine
from shared.settings import CommonSettings
from shared.topology import Topology

from .test_sender_support import Db

ADMIN_KEY = "test-admin-key"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's database (a module may define its own `engine`, seeded)."""
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def store(settings: CommonSettings) -> AsyncIterator[Store]:
    """The sender's store on an engine of its own (made as the services make theirs), closed after."""
    engine = make_engine(settings)
    store = Store(engine, settings, settings.topology().send_queue)
    try:
        yield store
    finally:
        await store.close()
        await engine.dispose()


@pytest.fixture
def db(settings: CommonSettings) -> Db:
    """The test's database through psycopg, for seeding and reading back what the services wrote."""
    return Db(settings.psycopg_dsn)


@pytest.fixture
def api_settings(settings: CommonSettings) -> ApiSettings:
    return ApiSettings(
        **settings.model_dump(),
        bootstrap_api_key=SecretStr(ADMIN_KEY),
        relay_enabled=False,
        # Tests send many wrong keys on purpose; the slowdown has its own tests (test_api_hostile.py).
        auth_failures_before_delay=10_000,
        auth_failures_before_refusal=10_000,
        _env_file=None,
    )


@pytest.fixture
def api_app(api_settings: ApiSettings) -> FastAPI:
    return build_api(api_settings).app


@pytest.fixture
async def api(api_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the in-process app, its lifespan running, sending the bootstrap admin key."""
    async with (
        api_app.router.lifespan_context(api_app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=api_app), base_url="http://api", headers=ADMIN_HEADERS
        ) as client,
    ):
        yield client


@dataclass(frozen=True)
class LiveApi:
    base_url: str
    settings: ApiSettings
    port: int
    pid: int


@pytest.fixture
def live_api(api_settings: ApiSettings, topology: Topology, tmp_path: Path) -> Iterator[LiveApi]:
    """The real API (`python -m services.api`, outbox relay included) on a free port, until the test ends."""
    port = free_port()
    env = {
        **os.environ,
        "MAILING_DATABASE_URL": api_settings.database_url,
        "MAILING_AMQP_URL": api_settings.amqp_url,
        "MAILING_AMQP_NAMESPACE": api_settings.amqp_namespace,
        "MAILING_API_HOST": "127.0.0.1",
        "MAILING_API_PORT": str(port),
        "MAILING_BOOTSTRAP_API_KEY": ADMIN_KEY,
        "MAILING_LOCAL_STATE_DIR": str(tmp_path / "local"),
        "MAILING_RETRY_DELAYS_SECONDS": json.dumps(list(api_settings.retry_delays_seconds)),
        "MAILING_RELAY_ENABLED": "true",
        "MAILING_LOG_LEVEL": "WARNING",
    }
    base_url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "services.api"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the API exited with code {process.returncode} before it was ready")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API was not ready (/readyz) within 30 s")
            time.sleep(0.1)
        yield LiveApi(base_url, api_settings, port, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
