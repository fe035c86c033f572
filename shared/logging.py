from __future__ import annotations

import inspect
import logging
import sys
import traceback
from json import dumps
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message


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


class _Levels:
    """What `configure_logging` set up; until it runs, loguru's own default sink takes everything."""

    info = True


def info_enabled() -> bool:
    """Whether the configured sink takes INFO records: a hot path may then skip building a record nobody
    writes. Decided when logging is configured, from loguru's public level table."""
    return _Levels.info


def _human_format(record: Any) -> str:
    extra = " ".join(f"{k}={v}" for k, v in record["extra"].items() if k != "service")
    suffix = f" | {extra}" if extra else ""
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
        "<cyan>{extra[service]}</cyan> | {message}"
        + suffix.replace("{", "{{").replace("}", "}}")
        + "\n{exception}"
    )


class JsonLines:
    """A sink of one flat JSON object a line: the bound fields (`service`, `mailing_id`, `message_id`,
    ...), then `time`, `level`, `message`, and `exception` (the traceback) when there is one.

    loguru's own `serialize=True` writes its whole record nested under "record" (file, function, line,
    process, thread, elapsed, ...), at about twice the cost a line (docs/benchmarks.md); the sender
    writes a line for every call to the sending API at INFO."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, message: Message) -> None:
        record = message.record
        line: dict[str, Any] = {
            **record["extra"],
            "time": record["time"].isoformat(),
            "level": record["level"].name,
            "message": record["message"],
        }
        error = record["exception"]
        if error is not None:
            line["exception"] = "".join(traceback.format_exception(error.type, error.value, error.traceback))
        self.stream.write(dumps(line, default=str) + "\n")


def configure_logging(service: str, *, json: bool = False, level: str = "INFO") -> None:
    """Configure loguru once per process: JSON lines in production, readable lines for people."""
    logger.remove()
    logger.configure(extra={"service": service})
    _Levels.info = logger.level(level.upper()).no <= logger.level("INFO").no
    if json:
        logger.add(
            JsonLines(sys.stderr), level=level.upper(), format="{message}", backtrace=False, diagnose=False
        )
    else:
        logger.add(sys.stderr, level=level.upper(), format=_human_format, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aio_pika", "aiormq", "alembic"):
        std = logging.getLogger(name)
        std.handlers = [InterceptHandler()]
        std.propagate = False
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
