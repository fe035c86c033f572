from __future__ import annotations

import inspect
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
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


# A phone (7 or 8 and ten digits, maybe +7) anywhere in a line, not inside a longer number: logs are
# searched by ids; a phone keeps its last four digits so a person can still tell two apart.
_PHONE = re.compile(r"(?<![0-9])(?:\+7|7|8)[0-9]{6}([0-9]{4})(?![0-9])")
# What could end a plain-text line early or repaint it: C0 and C1 controls (newline, carriage return, the
# escape of ANSI sequences), the Unicode line separators and the bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TRACEBACK = "_traceback"


def mask_phones(text: str) -> str:
    return _PHONE.sub(lambda m: "*******" + m.group(1), text)


def escape_controls(text: str) -> str:
    """One line stays one line: a control character is written as its escape (\\n, \\x1b, \\u2028)."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), m.group().encode("unicode_escape").decode()), text)


def _scrub(value: Any, *, plain: bool) -> Any:
    if not isinstance(value, str):
        return value
    value = mask_phones(value)
    return escape_controls(value) if plain else value


def _patcher(plain: bool) -> Any:
    """Runs on every record before any sink: phones masked in the message and the bound fields, and for
    plain-text lines, control characters escaped. A traceback is kept as masked text (its lines are its
    own; they come from our code, not from a caller)."""

    def patch(record: Any) -> None:
        record["message"] = _scrub(record["message"], plain=plain)
        extra = record["extra"]
        for key, value in extra.items():
            if isinstance(value, str):
                extra[key] = _scrub(value, plain=plain)
        error = record["exception"]
        if plain and error is not None:
            text = "".join(traceback.format_exception(error.type, error.value, error.traceback))
            extra[_TRACEBACK] = mask_phones(text)

    return patch


def _extra_field(key: str, value: Any) -> str:
    # By name: the format then depends on the bound keys only, not on their values, so loguru parses it
    # once per set of keys (it caches a few dozen formats) instead of once per line; the values are
    # substituted, never read as markup. A key that cannot be a field name goes in as text.
    if key.isidentifier():
        return f"{key}={{extra[{key}]}}"
    text = f"{key}={value}".replace("{", "{{").replace("}", "}}")
    return text.replace("<", "\\<")


def _human_format(record: Any) -> str:
    extra = " ".join(
        _extra_field(k, v) for k, v in record["extra"].items() if k not in ("service", _TRACEBACK)
    )
    suffix = f" | {extra}" if extra else ""
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
        "<cyan>{extra[service]}</cyan> | {message}"
        + suffix
        + ("\n{extra[" + _TRACEBACK + "]}" if _TRACEBACK in record["extra"] else "\n")
    )


class JsonLines:
    """A sink of one flat JSON object a line: the bound fields (`service`, `mailing_id`, `message_id`,
    ...), then `time`, `level`, `message`, and `exception` (the traceback) when there is one.

    loguru's own `serialize=True` writes its whole record nested under "record" (file, function, line,
    process, thread, elapsed, ...), at about twice the cost a line (docs/benchmarks.md); the sender
    writes a line for every call to the sending API at INFO."""

    def __init__(self, stream: TextIO | LineWriter) -> None:
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
            text = "".join(traceback.format_exception(error.type, error.value, error.traceback))
            line["exception"] = mask_phones(text)
        self.stream.write(dumps(line, default=str) + "\n")


class LineWriter:
    """The stream the one sink writes to: each line goes out (written and flushed) as it comes, except in
    a thread inside `batched_lines()`, whose lines gather and go out together, up to `BATCH_LINES` a
    write. Through a pipe (honcho, a container runtime) every write wakes the reader on the other end;
    thousands of lines in one burst (a CSV import's line per client) then cost two processes a
    wake-up each, where one write of a few hundred lines costs them one."""

    BATCH_LINES = 500

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._local = threading.local()
        self._lock = threading.Lock()

    def isatty(self) -> bool:
        # loguru colours the lines for a terminal only: it asks the stream.
        return self.stream.isatty()

    def write(self, text: str) -> None:
        pending: list[str] | None = getattr(self._local, "pending", None)
        if pending is None:
            with self._lock:
                self.stream.write(text)
                self.stream.flush()
            return
        pending.append(text)
        if len(pending) >= self.BATCH_LINES:
            self._write_pending(pending)

    def flush(self) -> None:
        # loguru flushes after every line; a batch is flushed when it is written.
        if getattr(self._local, "pending", None) is None:
            with self._lock:
                self.stream.flush()

    def _write_pending(self, pending: list[str]) -> None:
        with self._lock:
            self.stream.write("".join(pending))
            self.stream.flush()
        pending.clear()

    @contextmanager
    def batched(self) -> Iterator[None]:
        if getattr(self._local, "pending", None) is not None:
            yield  # already batching in this thread
            return
        pending: list[str] = []
        self._local.pending = pending
        try:
            yield
        finally:
            self._local.pending = None
            if pending:
                self._write_pending(pending)


class _Output:
    writer: LineWriter | None = None


@contextmanager
def batched_lines() -> Iterator[None]:
    """The lines this thread logs inside go out a few hundred at a time (each line the same as alone):
    for a burst of lines such as a big import's line per client. Lines of other threads meanwhile go out
    at once, so they can come before the end of a batch that was logged earlier; each keeps its own time.
    What is pending when the process is killed is lost: at most `LineWriter.BATCH_LINES` lines."""
    if _Output.writer is None:
        yield
        return
    with _Output.writer.batched():
        yield


def configure_logging(service: str, *, json: bool = False, level: str = "INFO") -> None:
    """Configure loguru once per process: JSON lines in production, readable lines for people."""
    logger.remove()
    logger.configure(extra={"service": service}, patcher=_patcher(plain=not json))
    _Levels.info = logger.level(level.upper()).no <= logger.level("INFO").no
    writer = _Output.writer = LineWriter(sys.stderr)
    if json:
        logger.add(
            JsonLines(writer), level=level.upper(), format="{message}", backtrace=False, diagnose=False
        )
    else:
        logger.add(writer, level=level.upper(), format=_human_format, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aio_pika", "aiormq", "alembic"):
        std = logging.getLogger(name)
        std.handlers = [InterceptHandler()]
        std.propagate = False
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
