"""Fixtures shared by every test group: a migrated database per test, a random RabbitMQ namespace."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

from shared.domain.retry import RetryPolicy
from shared.migrate import upgrade
from shared.settings import CommonSettings
from shared.topology import Topology

PG_ADMIN_DSN = os.environ.get("MAILING_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("MAILING_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TEST_RETRY_DELAYS = (0.2, 0.5, 1.0)


def _sqlalchemy_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{database}"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(PG_ADMIN_DSN, autocommit=True)


def _drop(database: str) -> None:
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated once per test run; each test gets a copy of it."""
    name = f"mailing_tmpl_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    upgrade(_sqlalchemy_url(name))
    yield name
    _drop(name)


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    name = f"mailing_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    yield _sqlalchemy_url(name)
    _drop(name)


@pytest.fixture
def amqp_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(database_url: str, amqp_namespace: str) -> CommonSettings:
    return CommonSettings(
        database_url=database_url,
        amqp_url=AMQP_URL,
        amqp_namespace=amqp_namespace,
        retry_delays_seconds=TEST_RETRY_DELAYS,
        _env_file=None,
    )


@pytest.fixture
async def topology(amqp_namespace: str) -> AsyncIterator[Topology]:
    """The full topology declared under a random namespace, removed after the test."""
    from shared.broker import connect
    from shared.topology import declare, delete

    topo = Topology(amqp_namespace, retry_policy=RetryPolicy(delays=TEST_RETRY_DELAYS))
    connection = await connect(AMQP_URL, give_up_after=10)
    try:
        channel = await connection.channel()
        await declare(channel, topo)
        yield topo
        await delete(channel, topo)
    finally:
        await connection.close()
