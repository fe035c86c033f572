"""A token bucket in PostgreSQL shared by every sender process; each process takes tokens in chunks."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_ENSURE = text(
    """
    INSERT INTO sender_rate_buckets (name, tokens, refreshed_at) VALUES (:name, :capacity, clock_timestamp())
    ON CONFLICT (name) DO NOTHING
    """
)

# Refill by the time passed and take in one statement; the row lock serialises processes only for it.
_TAKE = text(
    """
    WITH cur AS (
        SELECT name, LEAST(CAST(:capacity AS float8), tokens + CAST(:rate AS float8)
                   * CAST(EXTRACT(EPOCH FROM clock_timestamp() - refreshed_at) AS float8)) AS available
        FROM sender_rate_buckets WHERE name = :name FOR UPDATE
    ), granted AS (
        SELECT name, available, LEAST(CAST(:want AS float8), FLOOR(GREATEST(available, 0))) AS n FROM cur
    )
    UPDATE sender_rate_buckets AS b SET tokens = g.available - g.n, refreshed_at = clock_timestamp()
    FROM granted AS g WHERE b.name = g.name
    RETURNING g.n
    """
)


class TokenSource(Protocol):
    async def take(self, want: int) -> int: ...


class PostgresTokenBucket:
    def __init__(self, engine: AsyncEngine, name: str, rate: float, capacity: float) -> None:
        self.engine = engine
        self.name = name
        self.rate = rate
        self.capacity = capacity

    async def take(self, want: int) -> int:
        params = {"name": self.name, "capacity": self.capacity, "rate": self.rate, "want": want}
        async with self.engine.begin() as conn:
            await conn.execute(_ENSURE, params)
            granted = (await conn.execute(_TAKE, params)).scalar_one()
        return int(granted)


class RateLimiter:
    """Hands out one token per call from a local stock refilled in chunks from the shared bucket."""

    def __init__(self, source: TokenSource, rate: float, chunk: int) -> None:
        self.source = source
        self.rate = rate
        self.chunk = max(1, chunk)
        self._stock = 0
        self._lock = asyncio.Lock()

    async def acquire(self, give_up_at: float | None = None) -> bool:
        """Take one token; False when none came before `give_up_at` (a `time.monotonic()` instant)."""
        while True:
            # Checked on every turn: a caller may have waited long for the lock.
            if give_up_at is not None and time.monotonic() >= give_up_at:
                return False
            if self._stock > 0:
                self._stock -= 1
                return True
            async with self._lock:
                if self._stock > 0:
                    continue
                got = await self.source.take(self.chunk)
                if got > 0:
                    self._stock += got
                    continue
                await asyncio.sleep(self.chunk / self.rate)
