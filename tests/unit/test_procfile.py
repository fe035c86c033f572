"""`scripts.procfile`, the runner `make run` starts the services with."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.procfile import Entry, Output, parse_procfile, relay

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PREFIX = re.compile(r"^\d\d:\d\d:\d\d (\S+)\s* \| (.*)$")


def test_a_procfile_is_name_and_command_lines() -> None:
    text = "# the services\napi: python -m services.api\n\n  smtp:python -m aiosmtpd -n -l 127.0.0.1:1025\n"
    assert parse_procfile(text) == [
        Entry("api", "python -m services.api"),
        Entry("smtp", "python -m aiosmtpd -n -l 127.0.0.1:1025"),
    ]
    for bad in ("api python", "api:", ": python", "a: x\na: y"):
        with pytest.raises(ValueError, match="line"):
            parse_procfile(bad)


def test_the_repositorys_procfile_parses() -> None:
    names = [e.name for e in parse_procfile((ROOT / "Procfile").read_text())]
    assert {"api", "scheduler", "sender", "reporter", "probe"} <= set(names)


def test_each_line_gets_the_time_and_the_name_and_colour_only_on_a_terminal() -> None:
    stream = io.BytesIO()
    out = Output(stream, ["api", "scheduler"], colour=False)
    out.lines("api", b"one\ntwo\n")
    out.lines("scheduler", b"three")
    lines = stream.getvalue().decode().splitlines()
    assert [PREFIX.match(line).groups() for line in lines] == [  # type: ignore[union-attr]
        ("api", "one"),
        ("api", "two"),
        ("scheduler", "three"),
    ]
    assert lines[0].index("|") == lines[2].index("|")
    coloured = io.BytesIO()
    Output(coloured, ["api"], colour=True).lines("api", b"x\n")
    written = coloured.getvalue()
    assert written.startswith(b"\x1b[0m\x1b[36m") and written.endswith(b"| \x1b[0mx\n")


async def test_a_line_split_across_reads_goes_out_whole() -> None:
    stream = io.BytesIO()
    out = Output(stream, ["sender"], colour=False)
    reader = asyncio.StreamReader()
    for piece in (b"first li", b"ne\nsecond", b" line\nthird ", b"line\nno newline at the end"):
        reader.feed_data(piece)
        await asyncio.sleep(0)
    reader.feed_eof()
    await relay("sender", reader, out)
    got = [PREFIX.match(line).group(2) for line in stream.getvalue().decode().splitlines()]  # type: ignore[union-attr]
    assert got == ["first line", "second line", "third line", "no newline at the end"]


def test_when_one_entry_ends_the_others_are_stopped_and_its_code_is_the_runners(tmp_path: Path) -> None:
    python = sys.executable
    procfile = write_procfile(
        tmp_path,
        quick=f'{python} -c \'import sys; print("hello"); print("world", file=sys.stderr); sys.exit(3)\'',
        slow=f"{python} -c 'import time; print(\"waiting\", flush=True); time.sleep(600)'",
    )
    # A guard against a hang, not a timing: the slow entry is stopped as soon as the quick one ends.
    done = subprocess.run(
        [python, "-m", "scripts.procfile", "-f", str(procfile)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    lines = [PREFIX.match(line) for line in done.stdout.decode().splitlines()]
    pairs = [m.groups() for m in lines if m is not None]
    assert ("quick", "hello") in pairs and ("quick", "world") in pairs
    assert ("system", "quick stopped (rc=3)") in pairs
    assert ("system", "slow stopped (rc=143: SIGTERM)") in pairs  # the entry's own end, not its shell's


def write_procfile(folder: Path, **commands: str) -> Path:
    """A Procfile in `folder`: a line `name: command` for each entry."""
    procfile = folder / "Procfile"
    procfile.write_text("".join(f"{name}: {command}\n" for name, command in commands.items()))
    return procfile


def start_runner(procfile: Path) -> subprocess.Popen[bytes]:
    runner = subprocess.Popen(
        [sys.executable, "-m", "scripts.procfile", "-f", str(procfile)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert runner.stdout is not None
    return runner


def until(runner: subprocess.Popen[bytes], name: str, text: str) -> None:
    """Reads the runner's output up to the line `text` of entry `name`."""
    for line in runner.stdout:  # type: ignore[union-attr]
        match = PREFIX.match(line.decode())
        if match is not None and match.groups() == (name, text):
            return
    raise AssertionError(f"the runner ended before {name} printed {text!r}")


SLOW_TO_STOP = """
import pathlib, signal, sys, time

def stop(*_):
    print("stopping", flush=True)
    while not pathlib.Path(sys.argv[1]).exists():
        time.sleep(0.01)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("waiting", flush=True)
time.sleep(600)
"""


def test_a_second_interrupt_while_stopping_changes_nothing(tmp_path: Path) -> None:
    """Ctrl-C reaches `uv run` as well as the runner, and uv passes it on: the runner gets it twice. The
    second, while the entries stop, must not cut the stop short with a traceback."""
    python = sys.executable
    script, release = tmp_path / "slow.py", tmp_path / "release"
    script.write_text(SLOW_TO_STOP)
    procfile = write_procfile(tmp_path, slow=f"{python} {script} {release}")
    runner = start_runner(procfile)
    until(runner, "slow", "waiting")
    runner.send_signal(signal.SIGINT)
    until(runner, "slow", "stopping")
    runner.send_signal(signal.SIGINT)
    release.touch()
    out, err = runner.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    assert runner.returncode == 130
    assert "slow stopped (rc=0)" in out.decode()  # the entry's own code, not its shell's


def test_an_entry_that_ignores_the_stop_is_killed_and_the_runner_ends(tmp_path: Path) -> None:
    python = sys.executable
    procfile = write_procfile(
        tmp_path,
        stubborn=f"{python} -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f' print("waiting", flush=True); time.sleep(600)\'',
    )
    runner = start_runner(procfile)
    until(runner, "stubborn", "waiting")
    runner.send_signal(signal.SIGINT)
    # A guard against a hang, not a timing: the runner sends SIGKILL KILL_AFTER_SECONDS after SIGTERM.
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 130
    assert "sending SIGKILL to stubborn" in out.decode()
    assert "stubborn stopped (rc=-9: SIGKILL)" in out.decode()
