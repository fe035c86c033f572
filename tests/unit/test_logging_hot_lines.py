"""`HotLine`: the same text as loguru's for the per-message lines, and loguru itself whenever anything but
the configured sink listens. Each comparison logs the same call both ways and compares the lines with
their times set aside (the times are checked on their own)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from loguru import logger

import shared.logging
from shared.logging import HotLine, configure_logging

if TYPE_CHECKING:
    from loguru import Record

pytestmark = pytest.mark.unit

HANDED = HotLine("message handed to the sender", "mailing_id", "message_id", "client_id")
CALLED = HotLine("probe POST /v1/send/{} -> {} ({})", "message_id")

# (template, args, fields): what the services log, and values the patcher has to change.
CASES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("message handed to the sender", (), {"mailing_id": 12, "message_id": 345, "client_id": 6}),
    (
        "probe POST /v1/send/{} -> {} ({})",
        (345, 200, "ok"),
        {
            "message_id": 345,
            "mailing_id": 12,
            "client_id": 6,
            "attempt": 1,
            "status_code": 200,
            "duration_ms": 12.3,
        },
    ),
    (
        "probe POST /v1/send/{} -> {} ({})",
        (79001234567, "no answer", "timeout: read\nover 5 s"),
        {"message_id": 79001234567, "status_code": None, "duration_ms": 5000.0, "ok": False},
    ),
    ("sent to {}", ("+79001234567",), {"phone": "89007654321", "note": "call 79001112233 <b>now</b>"}),
    ("{} and {note}", ("x\r\n\x1b[2Kforged\u2028",), {"note": "Привет ✓ \u202eevil\ttab"}),
    ("<red>{}</red> {{literal}}", ("</red><b>{0}",), {"tag": "<cyan>{message}</cyan>", "empty": ""}),
    ("no fields at all", (), {}),
    ("braces in {} names", ("field",), {"odd{key}": "v", "x}": 2, 'quote"d': "\\"}),
    (
        "other values",
        (),
        {
            "yes": True,
            "nan": float("nan"),
            "inf": float("-inf"),
            "list": [1, "a"],
            "when": datetime(2026, 1, 2),
        },
    ),
    ("fields named as the line's own", (), {"message": "mine", "level": 5, "time": None, "x": 1}),
    ("id {}", (1234567890,), {"big": 12345678901234, "minus": -7, "ratio": 0.5}),
    # A phone made across two values or a value and fixed digits, ten digits in a value or in the fixed
    # text, a control character, a format spec, a conversion, a name, more values than fields, a bool.
    ("id {} of {} ({})", (999_999_999, None, "ok"), {"attempt": 1, "note": "call 79001112233"}),
    ("id {} of {}", (-999_999_999, "fine"), {}),
    ("id {} ok", (1_000_000_000,), {"id": 1}),
    ("id {} ok", (79001234567,), {"id": 79001234567}),
    ("{}{}", (79001, 234567), {"a": 1}),
    ("call 7{} now", (9001234567,), {}),
    ("call {}1234567 now", (7900,), {}),
    ("tab {} here", ("a\tb",), {"x": 1}),
    ("spec {:>12} here", (79001234567,), {}),
    ("spec {:05} here", (12,), {}),
    ("conversion {!r} here", ("79001234567",), {}),
    ("named {x} here", (), {"x": 79001234567}),
    ("more {} than fields", (1, 2, 3), {"x": 1}),
    ("a float {}", (0.12345678901234,), {}),
    ("fixed 79001234567 digits {}", (1,), {}),
    ("fixed \x1b control {}", (1,), {}),
    ("True is not an int here: {}", (True,), {"b": False}),
]


class Stderr(io.StringIO):
    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Configure(Protocol):
    def __call__(
        self, service: str, *, json: bool = False, level: str = "INFO", tty: bool = False
    ) -> Stderr: ...


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """`configure_logging` with stderr replaced (in the test itself: pytest sets its own stderr again
    between a fixture and the test); logging as the other tests expect it afterwards."""

    def configure(service: str, *, json: bool = False, level: str = "INFO", tty: bool = False) -> Stderr:
        stream = Stderr(tty)
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging(service, json=json, level=level)
        return stream

    yield configure
    configure_logging("test")


def both_ways(template: str, args: tuple[Any, ...], fields: dict[str, Any], stream: io.StringIO) -> list[str]:
    """The line loguru writes, then the lines of a `HotLine` that names the fields, of one that names
    them in another order and of one that does not, for the same call (outside any event loop, so each
    goes out at once)."""
    start = len(stream.getvalue())
    logger.info(template, *args, **dict(fields))
    HotLine(template, *fields).info(*args, **dict(fields))
    HotLine(template, *reversed(fields)).info(*args, **dict(fields))
    HotLine(template).info(*args, **dict(fields))
    return stream.getvalue()[start:].splitlines(keepends=True)


PLAIN_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \| ")


def plain_time(line: str) -> tuple[datetime, str]:
    found = PLAIN_TIME.match(line)
    assert found is not None, line
    return datetime.fromisoformat(found[1]), line[found.end() :]


def assert_alike(lines: list[tuple[datetime, str]]) -> list[datetime]:
    """Loguru's line first, then the hot lines: the same text, the time no earlier and within a second.
    Returns the times."""
    assert len(lines) == 4
    (loguru_time, loguru_rest), *hot = lines
    for hot_time, hot_rest in hot:
        assert hot_rest == loguru_rest
        assert timedelta(0) <= hot_time - loguru_time < timedelta(seconds=1)
    return [time for time, _ in lines]


@pytest.mark.parametrize(("template", "args", "fields"), CASES)
def test_a_hot_line_writes_the_plain_text_loguru_writes(
    configure: Configure, template: str, args: tuple[Any, ...], fields: dict[str, Any]
) -> None:
    stderr = configure("scheduler")
    lines = both_ways(template, args, fields, stderr)
    assert_alike([plain_time(line) for line in lines])


def json_parts(line: str) -> tuple[datetime, str]:
    """The time, and the line's text with the time's value left out (keys and their order kept)."""
    value = json.loads(line)["time"]
    return datetime.fromisoformat(value), line.replace(json.dumps(value), '"<time>"', 1)


@pytest.mark.parametrize(("template", "args", "fields"), CASES)
def test_a_hot_line_writes_the_json_loguru_writes(
    configure: Configure, template: str, args: tuple[Any, ...], fields: dict[str, Any]
) -> None:
    stderr = configure("sender", json=True)
    lines = both_ways(template, args, fields, stderr)
    loguru_time, *hot_times = assert_alike([json_parts(line) for line in lines])
    for hot_time in hot_times:
        assert (hot_time.utcoffset(), hot_time.tzname()) == (loguru_time.utcoffset(), loguru_time.tzname())


def test_a_phone_shaped_message_id_is_masked_in_the_message_and_kept_as_a_number_in_its_field(
    configure: Configure,
) -> None:
    stderr = configure("sender", json=True)
    CALLED.info(79001234567, 200, "ok", message_id=79001234567)
    line = json.loads(stderr.getvalue())
    assert line["message"] == "probe POST /v1/send/*******4567 -> 200 (ok)"
    assert line["message_id"] == 79001234567


def test_the_times_are_loguru_s_local_time_in_both_formats() -> None:
    times: list[datetime] = []
    sink = logger.add(lambda m: times.append(m.record["time"]))
    try:
        logger.info("now")
    finally:
        logger.remove(sink)
    # loguru's own datetime type formats the readable template; the same instant at each millisecond edge.
    for microsecond in (0, 999, 1000, 123456, 999999):
        at = times[0].replace(microsecond=microsecond)
        assert at.replace(tzinfo=None).isoformat(" ", "milliseconds") == f"{at:YYYY-MM-DD HH:mm:ss.SSS}"
    ours = shared.logging._record_time()
    assert (ours.utcoffset(), ours.tzname()) == (times[0].utcoffset(), times[0].tzname())
    assert timedelta(0) <= ours - times[0] < timedelta(seconds=1)


@pytest.mark.parametrize("json_lines", [False, True], ids=["plain", "json"])
def test_a_hot_line_below_the_configured_level_is_not_written(configure: Configure, json_lines: bool) -> None:
    stderr = configure("scheduler", json=json_lines, level="WARNING")
    HANDED.info(message_id=1)
    logger.warning("written")
    assert stderr.getvalue().count("\n") == 1 and "written" in stderr.getvalue()


def test_any_sink_added_after_configuring_gets_the_hot_lines_too(configure: Configure) -> None:
    stderr = configure("scheduler")
    records: list[Record] = []
    sink = logger.add(lambda m: records.append(m.record), level="INFO")
    try:
        HANDED.info(mailing_id=1, message_id=2, client_id=3)
    finally:
        logger.remove(sink)
    HANDED.info(mailing_id=1, message_id=4, client_id=3)
    assert [(r["message"], r["extra"]["message_id"]) for r in records] == [
        ("message handed to the sender", 2)
    ]
    # As a direct `logger.info` would, the record names the line that called.
    assert records[0]["function"] == "test_any_sink_added_after_configuring_gets_the_hot_lines_too"
    assert stderr.getvalue().count("message handed to the sender") == 2


def test_a_sink_below_the_configured_level_still_gets_the_hot_lines(configure: Configure) -> None:
    stderr = configure("scheduler", level="WARNING")
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="DEBUG")
    try:
        HANDED.info(message_id=2)
    finally:
        logger.remove(sink)
    assert messages == ["message handed to the sender"] and stderr.getvalue() == ""


def test_lines_go_through_loguru_when_its_sinks_were_replaced(configure: Configure) -> None:
    stderr = configure("scheduler")
    logger.remove()
    captured = io.StringIO()
    logger.add(captured, format="{message} {extra[message_id]}")
    HANDED.info(message_id=7)
    assert captured.getvalue() == "message handed to the sender 7\n" and stderr.getvalue() == ""


def test_with_the_configured_sink_alone_loguru_builds_no_record(
    configure: Configure, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = configure("scheduler")
    called: list[str] = []
    monkeypatch.setattr(
        shared.logging, "_caller", type("Caller", (), {"info": lambda *a, **k: called.append("x")})
    )
    HANDED.info(message_id=7)
    assert called == [] and stderr.getvalue().endswith(
        "| scheduler | message handed to the sender | message_id=7\n"
    )


def test_a_terminal_gets_loguru_s_coloured_line(configure: Configure) -> None:
    lines = both_ways(*CASES[1], configure("scheduler", tty=True))
    assert len(lines) == 4 and all("\x1b[" in line for line in lines)
    assert [line.split(" | ", 1)[1] for line in lines] == [lines[0].split(" | ", 1)[1]] * 4


def test_loguru_lists_every_sink_in_its_repr() -> None:
    """What the fast path relies on to notice another sink: should a loguru release change this, hot
    lines would skip the sinks that tests add."""
    before = repr(logger)
    sink = logger.add(io.StringIO(), level="ERROR")
    try:
        assert repr(logger) != before
    finally:
        logger.remove(sink)
    assert repr(logger) == before


ROWS = [(12, 345, 6), (12, 346, 79001234567), (13, 347, 8)]
# Rows a batch cannot write as a format of ints: a string (a phone in it is masked, a control escaped),
# a bool (written True, not 1), a float.
OTHER_ROWS = [(12, 345, "+79001234567\n"), (12, True, 7), (13, 347, 2.5)]


@pytest.mark.parametrize("rows", [ROWS, OTHER_ROWS], ids=["ints", "others"])
@pytest.mark.parametrize("json_lines", [False, True], ids=["plain", "json"])
def test_a_batch_of_hot_lines_writes_what_a_line_each_writes_with_one_time(
    configure: Configure, json_lines: bool, rows: list[tuple[Any, ...]]
) -> None:
    stderr = configure("scheduler", json=json_lines)
    for row in rows:
        HANDED.info(**dict(zip(HANDED.names, row, strict=True)))
    one_by_one = stderr.getvalue().splitlines()
    HANDED.info_each(iter(rows))
    batched = stderr.getvalue().splitlines()[len(one_by_one) :]

    parts = json_parts if json_lines else plain_time
    times, texts = zip(*map(parts, batched), strict=True)
    assert list(texts) == [parts(line)[1] for line in one_by_one]
    assert len(set(times)) == 1 and times[0] >= parts(one_by_one[-1])[0]


def test_a_batch_goes_through_loguru_a_line_each_when_another_sink_listens(configure: Configure) -> None:
    stderr = configure("scheduler")
    records: list[Record] = []
    sink = logger.add(lambda m: records.append(m.record), level="INFO")
    try:
        HANDED.info_each(ROWS)
    finally:
        logger.remove(sink)
    assert [(r["message"], r["extra"]["message_id"]) for r in records] == [
        ("message handed to the sender", message_id) for _, message_id, _ in ROWS
    ]
    assert records[0]["function"] == "test_a_batch_goes_through_loguru_a_line_each_when_another_sink_listens"
    assert stderr.getvalue().count("message handed to the sender") == len(ROWS)


class FakeClock:
    """Stands in for the `time` module inside `shared.logging`: `time()` is what the test says."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def localtime(self, seconds: float) -> Any:
        return time.localtime(seconds)


@pytest.mark.parametrize("json_lines", [False, True], ids=["plain", "json"])
def test_a_line_logged_on_an_event_loop_is_made_when_its_batch_goes_out_with_the_time_of_its_call(
    configure: Configure, monkeypatch: pytest.MonkeyPatch, json_lines: bool
) -> None:
    stderr = configure("sender", json=json_lines)
    clock = FakeClock(time.time())
    monkeypatch.setattr(shared.logging, "time", clock)
    called_at = datetime.fromtimestamp(clock.now)

    async def call_then_later_write() -> None:
        CALLED.info(345, 200, "ok", message_id=345)
        assert stderr.getvalue() == ""  # waits for its batch
        clock.now += 5
        assert shared.logging._Output.stream is not None
        shared.logging._Output.stream.drain()

    asyncio.run(call_then_later_write())
    [line] = stderr.getvalue().splitlines()
    shown, rest = json_parts(line) if json_lines else plain_time(line)
    assert abs(shown.replace(tzinfo=None) - called_at) < timedelta(milliseconds=1)
    assert "probe POST /v1/send/345 -> 200 (ok)" in rest


def test_arguments_that_do_not_fit_the_template_are_told_in_their_line_and_the_batch_goes_out(
    configure: Configure,
) -> None:
    stderr = configure("sender")

    async def three_calls() -> None:
        CALLED.info(1, 200, "ok", message_id=1)
        CALLED.info(2, message_id=2)  # one argument short
        CALLED.info(3, 200, "ok", message_id=3)
        assert shared.logging._Output.stream is not None
        shared.logging._Output.stream.drain()

    asyncio.run(three_calls())
    first, told, last = stderr.getvalue().splitlines()
    assert first.endswith("probe POST /v1/send/1 -> 200 (ok) | message_id=1")
    template = "'probe POST /v1/send/{} -> {} ({})'"
    assert f"could not format {template} with (2,) {{'message_id': 2}}: IndexError" in told
    assert last.endswith("probe POST /v1/send/3 -> 200 (ok) | message_id=3")
