import logging
import sys

import uvloop
from aiohttp import web
from loguru import logger

from services.probe_stub.app import build_app
from services.probe_stub.settings import ProbeStubSettings


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(level: str) -> None:
    logger.remove()
    logger.add(sys.stderr, level=level.upper())
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)


def main() -> None:
    settings = ProbeStubSettings()
    configure_logging(settings.log_level)
    app = build_app(settings)
    logger.bind(host=settings.host, port=settings.port).info(
        "probe stub listening on http://{}:{}", settings.host, settings.port
    )
    # run_app turns SIGINT/SIGTERM into a graceful stop; hanging "timeout" requests are woken on shutdown.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        shutdown_timeout=5.0,
        loop=uvloop.new_event_loop(),
    )
    logger.info("probe stub stopped")
