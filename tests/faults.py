"""Private servers for fault tests: stopped, started and restarted at will without disturbing the
PostgreSQL and RabbitMQ every other test shares. The servers themselves are bench.chaos's, which the soak
and the restart tests use too; this adds what only pytest knows: skipping where they cannot run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from bench.chaos import PostgresUnavailable, PrivatePostgres


@asynccontextmanager
async def private_postgres(*databases: str) -> AsyncIterator[PrivatePostgres]:
    """A new cluster, started, with each of `databases` created and migrated; stopped and removed when the
    block ends. The test is skipped on a machine without PostgreSQL server binaries."""
    try:
        cluster = PrivatePostgres()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        await cluster.start()
        for name in databases:
            await cluster.create_database(name)
        yield cluster
    finally:
        await cluster.stop()
