from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# A probe that hangs is as bad as a failed one: the orchestrator's own probe timeout is a few seconds.
READINESS_TIMEOUT_SECONDS = 2.0


async def database_ready(engine: AsyncEngine) -> bool:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def broker_ready(connection: AbstractRobustConnection | None) -> bool:
    # A robust connection that is reconnecting is not closed, only no longer connected.
    return connection is not None and not connection.is_closed and connection.connected.is_set()
