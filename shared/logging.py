from __future__ import annotations

import asyncio
import inspect
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from json import JSONEncoder
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
_SUFFIX = "_suffix"
# Bound fields that are not listed after a plain-text line's message.
_NOT_FIELDS = frozenset(("service", _TRACEBACK, _SUFFIX))


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


_HUMAN = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "<cyan>{extra[service]}</cyan> | {message}{extra[" + _SUFFIX + "]}"
)
_HUMAN_LINE = _HUMAN + "\n"
_HUMAN_TRACEBACK = _HUMAN + "\n{extra[" + _TRACEBACK + "]}"


def _fields_suffix(extra: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={v}" for k, v in extra.items() if k not in _NOT_FIELDS)
    return f" | {fields}" if fields else ""


def _human_format(record: Any) -> str:
    """One of two fixed templates, the bound fields going in as a value (` | key=value ...`).

    loguru parses a template's colour markup once and keeps the result for the next record with the
    same template (64 of them): a template that held the fields themselves would be new, and parsed
    again, for every line that carries a message id. As a value, a field is not markup either."""
    extra = record["extra"]
    extra[_SUFFIX] = _fields_suffix(extra)
    return _HUMAN_TRACEBACK if _TRACEBACK in extra else _HUMAN_LINE


class _HeldLines(threading.local):
    """What a thread holds inside `BatchedStream.held()`, None outside: a class default, so that a thread
    that never held any reads None without the exception a missing attribute costs (1.2 µs a line)."""

    lines: list[str | _HotCall] | None = None


class BatchedStream:
    """Lines logged on an event loop's thread go out together, in one write, `WINDOW_SECONDS` after the
    first of them (or at once when `HELD_LINES` wait); anywhere else (start-up, shutdown, a worker
    thread) a line goes out at once, after whatever was waiting, so the order stays the order of logging.

    A stream written and flushed a line at a time costs a system call a line (the scheduler logs every
    message it hands to the sender, the sender every call; docs/benchmarks.md, "End to end"). Writing
    at the end of each turn of the loop was not enough once the calls' answers came spread out (a
    provider taking 50 ms): a turn then held a line or two. What waits is flushed when loguru removes
    the sink (at exit, or when logging is configured again); a process killed outright loses at most
    the window's lines.

    A `HotLine` call waits as itself (`_HotCall`) and is made into its line when its batch goes out,
    with the batch's other lines: a sender makes its per-call lines for a tenth less CPU that way than
    one at a time among its other work (docs/benchmarks.md, "End to end")."""

    # A thread inside `batched_lines()`, or an event loop within the window, writes this many lines at
    # most in one write.
    HELD_LINES = 500
    WINDOW_SECONDS = 0.02

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.pending: list[str | _HotCall] = []
        self.lock = threading.Lock()
        self.flush_on: asyncio.AbstractEventLoop | None = None
        self._held = _HeldLines()

    def write(self, line: str | _HotCall) -> None:
        held = self._held.lines
        if held is not None:
            held.append(line)
            if len(held) >= self.HELD_LINES:
                self._write_held(held)
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:
            if loop is None:
                self.pending.append(line)
                self._write_pending()
                return
            self.pending.append(line)
            if len(self.pending) >= self.HELD_LINES:
                self._write_pending()
            elif self.flush_on is not loop:
                self.flush_on = loop
                loop.call_later(self.WINDOW_SECONDS, self.drain)

    def drain(self) -> None:
        """Write what waits. Not named `flush`: loguru would call that after every line."""
        with self.lock:
            self.flush_on = None
            self._write_pending()

    def _write_pending(self) -> None:
        if self.pending:
            text = "".join(map(str, self.pending))
            self.pending.clear()
            try:
                self.stream.write(text)
                self.stream.flush()
            except ValueError:
                # The stream was closed under us (at exit, after a test's capture): nowhere to write.
                if not self.stream.closed:
                    raise

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._held.lines is not None:
            yield  # already holding in this thread
            return
        lines: list[str | _HotCall] = []
        self._held.lines = lines
        try:
            yield
        finally:
            self._held.lines = None
            self._write_held(lines)

    def _write_held(self, lines: list[str | _HotCall]) -> None:
        with self.lock:
            self.pending.extend(lines)
            self._write_pending()
        lines.clear()

    def stop(self) -> None:
        """Called by loguru when the sink is removed."""
        self.drain()

    def isatty(self) -> bool:
        """So that loguru colours the lines exactly when the stream is a terminal."""
        return self.stream.isatty()


def _json_line(
    extra: dict[str, Any], time: str, level: str, message: str, exception: str | None = None
) -> str:
    line: dict[str, Any] = {**extra, "time": time, "level": level, "message": message}
    if exception is not None:
        line["exception"] = exception
    return _JSON.encode(line) + "\n"


# `json.dumps(line, default=str)` builds this encoder again for every line.
_JSON = JSONEncoder(default=str)


def _json_value(value: Any) -> str:
    """A value as `_JSON` writes it inside an object; the common ones without its machinery."""
    kind = type(value)
    if kind is int:
        return str(value)
    if value is None:
        return "null"
    if kind is float and value - value == 0:  # finite: nan and infinities have names of their own
        return repr(value)
    encoded: str = _JSON.encode(value)
    return encoded


class JsonLines:
    """A sink of one flat JSON object a line: the bound fields (`service`, `mailing_id`, `message_id`,
    ...), then `time`, `level`, `message`, and `exception` (the traceback) when there is one.

    loguru's own `serialize=True` writes its whole record nested under "record" (file, function, line,
    process, thread, elapsed, ...), at about twice the cost a line (docs/benchmarks.md); the sender
    writes a line for every call to the sending API at INFO."""

    def __init__(self, stream: TextIO | BatchedStream) -> None:
        self.stream = stream

    def write(self, message: Message) -> None:
        record = message.record
        error = record["exception"]
        text = None
        if error is not None:
            text = mask_phones("".join(traceback.format_exception(error.type, error.value, error.traceback)))
        self.stream.write(
            _json_line(
                record["extra"], record["time"].isoformat(), record["level"].name, record["message"], text
            )
        )

    def stop(self) -> None:
        """Called by loguru when the sink is removed."""
        if isinstance(self.stream, BatchedStream):
            self.stream.stop()


class _Output:
    stream: BatchedStream | None = None


@contextmanager
def batched_lines() -> Iterator[None]:
    """The lines this thread logs inside go out a few hundred at a time (each line the same as alone):
    for a burst of lines off the event loop, such as a big import's line per client. Lines of other
    threads meanwhile go out as usual, so they can come before the end of a batch logged earlier; each
    keeps its own time. What is held when the process is killed is lost: at most `HELD_LINES` lines."""
    if _Output.stream is None:
        yield
        return
    with _Output.stream.held():
        yield


@dataclass(frozen=True)
class _OnlySink:
    """The one sink `configure_logging` left, as a `HotLine` writes into it."""

    stream: BatchedStream
    json: bool
    service: str  # as the patcher leaves it
    plain_head: str  # " | INFO    | <service> | "
    json_head: str  # '{"service": "<service>"'
    # `repr(logger)` right after: loguru lists its sinks there (id, level, name), so any sink added
    # or removed since, by anyone, makes it differ.
    sinks: str


class _Hot:
    sink: _OnlySink | None = None


class _LocalZone:
    # The second (of `time.time()`) and the offset then in force, replaced together.
    current: tuple[int, timezone] = (-1, UTC)


def _record_time(now: float | None = None) -> datetime:
    """What loguru puts in a record's time: the local wall clock with the offset then in force (its
    `aware_now`, `time.localtime`'s offset), here looked up once a second."""
    if now is None:
        now = time.time()
    second, tz = _LocalZone.current
    if int(now) != second:
        local = time.localtime(now)
        tz = timezone(timedelta(seconds=local.tm_gmtoff), local.tm_zone)
        _LocalZone.current = (int(now), tz)
    return datetime.fromtimestamp(now, tz)


# Ten digits in a row: every phone has them.
_TEN_DIGITS = re.compile("[0-9]{10}")


def _scrub_fast(value: str, plain: bool) -> str:
    """`_scrub`, for less when there is nothing to change (a control character is not printable)."""
    if (plain and not value.isprintable()) or _TEN_DIGITS.search(value):
        scrubbed: str = _scrub(value, plain=plain)
        return scrubbed
    return value


class HotLine:
    """A line logged for every message (the scheduler's hand-over, the sender's call to the API):
    `HotLine(template, *names).info(*args, **fields)` writes exactly what `logger.info(template, *args,
    **fields)` writes, for a fraction of its cost (docs/benchmarks.md, "Log lines without loguru's
    record"). loguru builds a whole record first (the caller's frame, process, thread, a lock); this
    formats the message, masks and escapes it and the string fields as the patcher does, and writes
    the line into the configured sink's stream in the sink's format. An `info` call waits in the
    stream's batch as it was made and becomes its line when the batch goes out (`_HotCall`).

    It does so only while the sink `configure_logging` added is loguru's only one, without colours
    (a terminal); whenever loguru's list of sinks has changed since (a test capturing lines, a second
    sink, none at all) the call goes through loguru itself, so every sink sees it. Not seen here: fields
    set by `logger.contextualize()`, and a patcher, extra fields or module switched off by hand after
    `configure_logging` (none of which the services use where a `HotLine` is)."""

    __slots__ = ("fixed", "json_keys", "names", "suffix", "template")

    def __init__(self, template: str, *names: str) -> None:
        """`names`: the fields every call passes, in its order (a call with others is written too, the
        listing of its fields built for it)."""
        self.template = template
        # A template without braces is its own message, whatever the arguments: (JSON, plain) as written.
        fixed = "{" not in template and "}" not in template
        self.fixed = (_scrub_fast(template, False), _scrub_fast(template, True)) if fixed else None
        self.names = names
        listed = " ".join(f"{name.replace('{', '{{').replace('}', '}}')}={{}}" for name in names)
        self.suffix = f" | {listed}" if names else ""
        # Each field's key as `JsonLines` writes it; unless a field would take the place of its own.
        own = not {"time", "level", "message"}.isdisjoint(names)
        self.json_keys = None if own else tuple(f", {_JSON.encode(name)}: " for name in names)

    def info(self, *args: Any, **fields: Any) -> None:
        sink = _fast_sink(fields)
        if sink is None:
            _caller.info(self.template, *args, **fields)
        elif _Levels.info:
            sink.stream.write(_HotCall(self, sink, time.time(), args, fields))

    def info_each(self, rows: Iterable[Sequence[Any]]) -> None:
        """`info(**dict(zip(names, row)))` for each row (the values of `names`, in order), the lines
        written together and with one time: for lines logged at one instant, such as those of the
        messages of a batch handed to the sender."""
        names = self.names
        sink = _fast_sink(names)
        if sink is None:
            for row in rows:
                _caller.info(self.template, **dict(zip(names, row, strict=True)))
        elif _Levels.info:
            at = _line_time(sink)
            rows = list(rows)
            form = self._row_form(sink, at)
            if (
                form is not None
                and all(len(row) == len(names) for row in rows)
                and {type(value) for row in rows for value in row} <= {int}
            ):
                lines = [form.format(*row) for row in rows]
            else:
                lines = [self._line(sink, at, (), dict(zip(names, row, strict=True))) for row in rows]
            sink.stream.write("".join(lines))

    def _row_form(self, sink: _OnlySink, at: str) -> str | None:
        """What `_line` writes at `at` for a row of ints, as a `str.format` of the row: a fixed message's
        lines differ only in their fields' values, and an int needs neither masking nor escaping
        (docs/benchmarks.md, "eighth session"). None where it would not be."""
        if self.fixed is None:
            return None
        if not sink.json:
            return _literal(f"{at}{sink.plain_head}{self.fixed[True]}") + self.suffix + "\n"
        if self.json_keys is None:
            return None
        tail = f', "time": "{at}", "level": "INFO", "message": {_JSON.encode(self.fixed[False])}}}\n'
        return (
            _literal(sink.json_head)
            + "".join(_literal(key) + "{}" for key in self.json_keys)
            + _literal(tail)
        )

    def _line(self, sink: _OnlySink, at: str, args: tuple[Any, ...], fields: dict[str, Any]) -> str:
        plain = not sink.json
        if self.fixed is not None:
            message = self.fixed[plain]
        else:
            message = self.template.format(*args, **fields) if args or fields else self.template
            message = _scrub_fast(message, plain)
        for key, value in fields.items():
            if isinstance(value, str):
                fields[key] = _scrub_fast(value, plain)
        if plain:
            if tuple(fields) == self.names:
                suffix = self.suffix.format(*fields.values())
            else:
                suffix = _fields_suffix(fields)
            return f"{at}{sink.plain_head}{message}{suffix}\n"
        if self.json_keys is not None and tuple(fields) == self.names:
            listed = "".join(map(str.__add__, self.json_keys, map(_json_value, fields.values())))
            return (
                f'{sink.json_head}{listed}, "time": "{at}", "level": "INFO", '
                f'"message": {_JSON.encode(message)}}}\n'
            )
        return _json_line({"service": sink.service, **fields}, at, "INFO", message)


class _HotCall:
    """A `HotLine.info` call, made into its line (`str()`) when the stream writes its batch: the time is
    the call's, the values are read then (the services pass ints and strings)."""

    __slots__ = ("args", "at", "fields", "hot", "sink")

    def __init__(
        self, hot: HotLine, sink: _OnlySink, at: float, args: tuple[Any, ...], fields: dict[str, Any]
    ) -> None:
        self.hot, self.sink, self.at, self.args, self.fields = hot, sink, at, args, fields

    def __str__(self) -> str:
        sink, at = self.sink, _line_time(self.sink, self.at)
        try:
            return self.hot._line(sink, at, self.args, self.fields)
        except Exception as exc:
            # Arguments that do not fit the template: said in the line's place, not lost with its batch.
            told = f"could not format {self.hot.template!r} with {self.args!r} {self.fields!r}: {exc!r}"
            told = _scrub(told, plain=not sink.json)
            if sink.json:
                return _json_line({"service": sink.service}, at, "INFO", told)
            return f"{at}{sink.plain_head}{told}\n"


def _literal(text: str) -> str:
    """`text` as it reads inside a `str.format` template."""
    return text.replace("{", "{{").replace("}", "}}")


def _fast_sink(names: Iterable[str]) -> _OnlySink | None:
    """The sink a `HotLine` writes into itself; None when the line must go through loguru: the sink
    `configure_logging` added is no longer loguru's only one, or a field would replace the service's
    name or pick loguru's other template."""
    sink = _Hot.sink
    if sink is None or repr(logger) != sink.sinks or not _NOT_FIELDS.isdisjoint(names):
        return None
    return sink


class _PlainTime:
    # The millisecond (of `time.time()`) and the time a plain line shows for it.
    current: tuple[int, str] = (-1, "")


def _line_time(sink: _OnlySink, now: float | None = None) -> str:
    """The time a line shows, as loguru writes it: in a JSON line, the record's time; in a plain line,
    the local wall clock to the millisecond, made once a millisecond (a line a message comes many to
    a millisecond)."""
    if now is None:
        now = time.time()
    if sink.json:
        return _record_time(now).isoformat()
    millisecond = int(now * 1000)
    if millisecond != _PlainTime.current[0]:
        shown = datetime.fromtimestamp(now).isoformat(" ", "milliseconds")
        _PlainTime.current = (millisecond, shown)
    return _PlainTime.current[1]


# The fallback's line is its caller's (module, function, line), as a direct `logger.info` would be.
_caller = logger.opt(depth=1)


def configure_logging(service: str, *, json: bool = False, level: str = "INFO") -> None:
    """Configure loguru once per process: JSON lines in production, readable lines for people."""
    _Hot.sink = None
    logger.remove()
    logger.configure(extra={"service": service}, patcher=_patcher(plain=not json))
    _Levels.info = logger.level(level.upper()).no <= logger.level("INFO").no
    stream = _Output.stream = BatchedStream(sys.stderr)
    # Decided here as loguru would decide it for this stream, so that a `HotLine` knows.
    try:
        colour = not json and stream.isatty()
    except (AttributeError, ValueError, OSError):
        colour = False
    if json:
        logger.add(
            JsonLines(stream), level=level.upper(), format="{message}", backtrace=False, diagnose=False
        )
    else:
        logger.add(
            stream,
            level=level.upper(),
            format=_human_format,
            colorize=colour,
            backtrace=False,
            diagnose=False,
        )
    if not colour:
        named = _scrub(service, plain=not json)
        _Hot.sink = _OnlySink(
            stream,
            json,
            named,
            f" | {'INFO': <7} | {named} | ",
            '{"service": ' + _JSON.encode(named),
            repr(logger),
        )
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aio_pika", "aiormq", "alembic"):
        std = logging.getLogger(name)
        std.handlers = [InterceptHandler()]
        std.propagate = False
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
