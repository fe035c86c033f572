from __future__ import annotations

import inspect
import logging
import sys
from typing import Any

from loguru import logger


class InterceptHandler(logging.Handler):
    """Routes standard-library log records (uvicorn, aio-pika, alembic) into loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


# loguru keeps the lowest level any sink takes on its core (private, there since loguru 0.4).
_CORE = getattr(logger, "_core", None)
_INFO = 20


def info_enabled() -> bool:
    """Whether any sink takes INFO records: a hot path may then skip building a record nobody writes.
    If loguru ever stops keeping that level where it does, the answer is yes."""
    return _CORE is None or bool(_CORE.min_level <= _INFO)


def _human_format(record: Any) -> str:
    extra = " ".join(f"{k}={v}" for k, v in record["extra"].items() if k != "service")
    suffix = f" | {extra}" if extra else ""
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
        "<cyan>{extra[service]}</cyan> | {message}"
        + suffix.replace("{", "{{").replace("}", "}}")
        + "\n{exception}"
    )


def configure_logging(service: str, *, json: bool = False, level: str = "INFO") -> None:
    """Configure loguru once per process: JSON lines in production, readable lines for people."""
    logger.remove()
    logger.configure(extra={"service": service})
    if json:
        logger.add(sys.stderr, level=level.upper(), serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level.upper(), format=_human_format, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aio_pika", "aiormq", "alembic"):
        std = logging.getLogger(name)
        std.handlers = [InterceptHandler()]
        std.propagate = False
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
