"""The logging set-up: what the hot paths ask before building a record, the shape and safety of the lines,
and batched writes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import threading
from datetime import datetime

import pytest
from loguru import logger

from shared.logging import BatchedStream, _human_format, batched_lines, configure_logging, info_enabled

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("level", "enabled"), [("WARNING", False), ("error", False), ("INFO", True), ("DEBUG", True)]
)
def test_info_is_enabled_exactly_when_the_configured_level_takes_it(level: str, enabled: bool) -> None:
    configure_logging("test", level=level)
    try:
        assert info_enabled() is enabled
    finally:
        configure_logging("test")
    assert info_enabled()


def test_json_lines_are_flat_objects_with_the_bound_fields_and_the_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("sender", json=True)
    try:
        logger.bind(mailing_id=42, message_id=7).info('said "hi"\nto {}', "them")
        try:
            raise ValueError("no such thing")
        except ValueError:
            logger.bind(client_id=3).exception("failed")
        logger.debug("not logged at INFO")
    finally:
        configure_logging("test")

    lines = capsys.readouterr().err.splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == 'said "hi"\nto them'
    assert (first["service"], first["level"], first["mailing_id"], first["message_id"]) == (
        "sender",
        "INFO",
        42,
        7,
    )
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert "exception" not in first
    assert (second["level"], second["client_id"], second["message"]) == ("ERROR", 3, "failed")
    assert "ValueError: no such thing" in second["exception"]
    # As the greps in docs/operations.md expect them.
    assert '"mailing_id": 42,' in lines[0]


def test_plain_text_lines_escape_control_characters_so_no_line_can_be_forged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("api")
    try:
        forged = "x\n2026-11-30 00:00:00.000 | INFO    | api | admin key created\r\x1b[2K\u2028"
        logger.bind(tag=forged).info("tag was {}", forged)
    finally:
        configure_logging("test")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "\x1b" not in lines[0] and "\r" not in lines[0] and "\u2028" not in lines[0]
    assert "tag was x\\n2026-11-30" in lines[0] and "\\r\\x1b[2K\\u2028" in lines[0]
    assert "tag=x\\n2026" in lines[0]


@pytest.mark.parametrize("json_lines", [False, True], ids=["plain", "json"])
def test_phone_numbers_are_masked_to_their_last_four_digits_everywhere_in_a_line(
    capsys: pytest.CaptureFixture[str], json_lines: bool
) -> None:
    configure_logging("api", json=json_lines)
    try:
        logger.bind(phone="79001234567").info(
            "client 5 created: {}", {"phone": "79001234567", "id": 12345678}
        )
        try:
            raise ValueError("Key (phone)=(+79007654321) already exists")
        except ValueError:
            logger.exception("failed for 89001112233")
    finally:
        configure_logging("test")
    err = capsys.readouterr().err
    for phone in ("9001234567", "9007654321", "9001112233"):
        assert phone not in err
    assert "*******4567" in err and "*******4321" in err and "*******2233" in err
    assert "12345678" in err  # ids are not phones


def test_plain_text_lines_list_the_bound_fields_after_the_message_as_they_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("sender")
    try:
        logger.bind(mailing_id=42, message_id=7).info("sent")
        logger.info("sent", mailing_id=42, message_id=8)
        logger.info("nothing bound")
        logger.bind(note="{braces} and <red>no markup</red>").info("odd {}", "value")
    finally:
        configure_logging("test")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4
    assert lines[0].endswith("| INFO    | sender | sent | mailing_id=42 message_id=7")
    assert lines[1].endswith("| INFO    | sender | sent | mailing_id=42 message_id=8")
    assert lines[2].endswith("| INFO    | sender | nothing bound")
    assert lines[3].endswith("| sender | odd value | note={braces} and <red>no markup</red>")


def test_plain_text_lines_of_different_ids_share_one_template() -> None:
    # loguru prepares a template's markup once and reuses it for the next record of the same template.
    first = {"extra": {"service": "scheduler", "message_id": 1}}
    second = {"extra": {"service": "scheduler", "message_id": 2, "client_id": 3}}
    assert _human_format(first) is _human_format(second)


def test_a_plain_text_traceback_follows_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("api")
    try:
        try:
            raise ValueError("no such thing")
        except ValueError:
            logger.bind(client_id=3).exception("failed")
    finally:
        configure_logging("test")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("| ERROR   | api | failed | client_id=3")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: no such thing"


def test_plain_text_lines_show_bound_values_as_they_are_not_as_markup_or_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The bound values are substituted into the line, never parsed: braces and loguru's colour markup
    come out as written (the format itself depends on the bound keys only)."""
    configure_logging("api")
    try:
        for value in ("{message}", "</red><b>{0}", "plain"):
            logger.bind(tag=value, client_id=5).info("saved")
        logger.bind(**{"odd key": "<x>"}).info("odd")
    finally:
        configure_logging("test")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" | ", 4)[4] for line in lines] == [
        "tag={message} client_id=5",
        "tag=</red><b>{0} client_id=5",
        "tag=plain client_id=5",
        "odd key=<x>",
    ]


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def isatty(self) -> bool:
        return False


async def _written(stream: CountingStream) -> None:
    async with asyncio.timeout(5):
        while not stream.getvalue():  # noqa: ASYNC110 the stream has no way to say it was written
            await asyncio.sleep(0.001)


def test_lines_logged_on_an_event_loop_go_out_together_within_the_window_in_the_order_logged() -> None:
    stream = CountingStream()
    batched = BatchedStream(stream)

    async def scenario() -> None:
        batched.write("one\n")
        await asyncio.sleep(0)  # a turn of the loop later: still inside the window
        batched.write("two\n")
        assert stream.getvalue() == ""
        await _written(stream)
        assert (stream.getvalue(), stream.writes) == ("one\ntwo\n", 1)
        batched.write("three\n")
        # A worker thread's line goes out at once, after what waited on the loop.
        await asyncio.to_thread(batched.write, "from a thread\n")
        batched.write("four\n")
        batched.drain()

    asyncio.run(scenario())
    assert stream.getvalue() == "one\ntwo\nthree\nfrom a thread\nfour\n"
    batched.write("outside any loop\n")
    assert stream.getvalue().endswith("four\noutside any loop\n")


def test_a_loop_writes_at_once_when_the_window_holds_enough_lines() -> None:
    stream = CountingStream()
    batched = BatchedStream(stream)

    async def scenario() -> None:
        for i in range(BatchedStream.HELD_LINES):
            batched.write(f"{i}\n")
        assert stream.writes == 1
        assert stream.getvalue().splitlines() == [str(i) for i in range(BatchedStream.HELD_LINES)]

    asyncio.run(scenario())


def test_what_waits_is_written_when_the_sink_is_removed(capsys: pytest.CaptureFixture[str]) -> None:
    async def log_and_stop() -> None:
        logger.info("logged last", message_id=5)
        configure_logging("test")  # removes the sink: nothing may be lost

    configure_logging("scheduler")
    asyncio.run(log_and_stop())
    assert capsys.readouterr().err.rstrip().endswith("| scheduler | logged last | message_id=5")


@pytest.mark.parametrize("json_lines", [False, True], ids=["plain", "json"])
def test_a_service_logging_on_its_event_loop_loses_no_line(
    capsys: pytest.CaptureFixture[str], json_lines: bool
) -> None:
    async def service() -> None:
        for i in range(3):
            logger.info("message handed to the sender", message_id=i)
            await asyncio.sleep(0)
        logger.info("stopped")

    configure_logging("scheduler", json=json_lines)
    try:
        asyncio.run(service())
    finally:
        configure_logging("test")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and "stopped" in lines[-1]
    assert all("message handed to the sender" in line for line in lines[:3])


@pytest.mark.parametrize("json_lines", [False, True], ids=["plain", "json"])
def test_a_batch_of_lines_goes_out_in_few_writes_each_line_as_it_would_alone(
    monkeypatch: pytest.MonkeyPatch, json_lines: bool
) -> None:
    def lines(batched: bool) -> tuple[list[str], int]:
        stream = CountingStream()
        monkeypatch.setattr(sys, "stderr", stream)
        configure_logging("api", json=json_lines)
        try:
            with batched_lines() if batched else contextlib.nullcontext():
                for i in range(1200):
                    logger.bind(client_id=i).info("client {} created", i)
        finally:
            configure_logging("test")
        text = stream.getvalue().splitlines()
        # The time differs from run to run: compare what follows it.
        return [line.split("INFO", 1)[1] for line in text], stream.writes

    alone, writes_alone = lines(batched=False)
    batched, writes_batched = lines(batched=True)
    assert batched == alone and len(alone) == 1200
    assert writes_alone == 1200
    assert writes_batched == 3  # 500 + 500 + the 200 left when the batch ends


def test_lines_of_other_threads_go_out_at_once_during_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = CountingStream()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("api")
    try:
        with batched_lines():
            logger.info("batched")
            other = threading.Thread(target=lambda: logger.info("other thread"))
            other.start()
            other.join()
            assert "other thread" in stream.getvalue() and "batched" not in stream.getvalue()
        assert stream.getvalue().index("other thread") < stream.getvalue().index("batched")
    finally:
        configure_logging("test")
