"""The one shape every service is wired in.

`build_<service>(settings, **overrides)` returns an object that has connected to nothing yet; `start()`
connects, declares and begins work, returning once the service is running; `stop()` ends it gracefully
(stop taking work, finish or give back what is under way, release connections). `serve` runs one until
SIGTERM or SIGINT. The overrides are what tests and benchmarks replace (a clock, a mailer, a provider,
a metrics registry, whether the ops server listens); production passes none.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from shared.ops import stop_on_signals


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def serve(service: Service) -> None:
    """Start the service, run it until SIGTERM or SIGINT, then stop it gracefully."""
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await service.start()
        try:
            await stop.wait()
        finally:
            await service.stop()
