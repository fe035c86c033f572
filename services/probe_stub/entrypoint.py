import uvloop
from aiohttp import web
from loguru import logger

from services.probe_stub.app import build_app
from services.probe_stub.settings import ProbeStubSettings
from shared.logging import configure_logging


def main() -> None:
    settings = ProbeStubSettings()
    configure_logging("probe_stub", json=settings.log_json, level=settings.log_level)
    app = build_app(settings)
    logger.bind(host=settings.host, port=settings.port).info(
        "probe stub listening on http://{}:{}", settings.host, settings.port
    )
    # run_app turns SIGINT/SIGTERM into a graceful stop; hanging "timeout" requests are woken on shutdown.
    # handler_cancellation stops the sleeps of requests whose client has already given up.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=5.0,
        handler_cancellation=True,
        loop=uvloop.new_event_loop(),
    )
    logger.info("probe stub stopped")
