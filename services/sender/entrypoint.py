from __future__ import annotations

import asyncio

import uvloop

from services.sender.bootstrap import start_sender
from services.sender.settings import SenderSettings
from shared.logging import configure_logging
from shared.ops import stop_on_signals


async def serve(settings: SenderSettings) -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        app = await start_sender(settings)
        await stop.wait()
        await app.stop()


def main() -> None:
    settings = SenderSettings()
    configure_logging("sender", json=settings.log_json, level=settings.log_level)
    uvloop.run(serve(settings))
