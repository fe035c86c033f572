"""How bench.e2e counts the relayed lines of each service and keeps the last ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.e2e import TAIL_LINES, Relay, count_lines
from scripts import procfile


def test_lines_are_counted_by_the_service_in_their_prefix() -> None:
    block = (
        b"14:11:03 api       | 2026-12-01 14:11:03.857 | INFO    | api | mailing created\n"
        b"14:11:03 sender    | 2026-12-01 14:11:03.900 | INFO    | sender | probe POST /v1/send/1 -> 200\n"
        b"14:11:03 sender.1  | a line from honcho's first process of the entry\n"
        b"14:11:04 system    | stopping every process\n"
        b"a line without the runner's prefix | even with a bar\n"
    )

    assert count_lines(block) == {"api": 1, "sender": 2, "system": 1, "?": 1}


async def test_lines_split_between_reads_are_counted_once_and_kept_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procfile, "READ_BYTES", 7)  # every line comes in several reads
    relay = Relay("procfile", {}, tmp_path)
    lines = [f"14:11:0{i % 10} sender    | line {i}" for i in range(TAIL_LINES + 5)]
    lines.append("14:11:09 api       | the last line, without its newline")
    stream = asyncio.StreamReader()
    stream.feed_data("\n".join(lines).encode())
    stream.feed_eof()

    await relay.read_from(stream)

    assert relay.lines == {"sender": TAIL_LINES + 5, "api": 1}
    assert list(relay.tail) == lines[-TAIL_LINES:]
