from __future__ import annotations

import asyncio
import signal

import uvloop

from services.sender.bootstrap import start_sender
from services.sender.settings import SenderSettings
from shared.logging import configure_logging


async def serve(settings: SenderSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await start_sender(settings)
    await stop.wait()
    await app.stop()


def main() -> None:
    settings = SenderSettings()
    configure_logging("sender", json=settings.log_json, level=settings.log_level)
    uvloop.run(serve(settings))
