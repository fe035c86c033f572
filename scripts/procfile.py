"""`python -m scripts.procfile [-f Procfile] [name ...]`: what `make run` starts the services with.

Every entry of the Procfile (or the named ones) runs as its own process (`/bin/sh -c <command>`, in a
session of its own), and their output is relayed to ours, each line behind the time and the entry's
name as honcho writes it (`21:50:01 scheduler | ...`, the prefix coloured on a terminal). When one entry
ends, or on SIGINT or SIGTERM, every other one gets SIGTERM, and SIGKILL if it is still there
`KILL_AFTER_SECONDS` later; the exit code is the first ending's (130 or 143 for a signal). The services
read `.env` themselves.

Why not honcho: it hands every line from a reader process per entry, through a multiprocessing queue
(pickled, one pipe write and one read a line), to a printer that writes and flushes each line alone;
with a log line for each message in the scheduler and another in the sender, that relay cost more CPU
a message than the sender's own work (docs/benchmarks.md, "End to end"). Here one read takes every
complete line waiting in a pipe, and they go out prefixed in one write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import uvloop

KILL_AFTER_SECONDS = 5.0
READ_BYTES = 1 << 16
# After a read that did not fill its buffer, the next waits this long, so that lines gather: a read and
# its write cost a few system calls whatever they carry. Too short to notice on a terminal; a pipe that
# fills faster (a burst) is read again at once.
GATHER_SECONDS = 0.02
# A line longer than this goes out in pieces rather than waiting whole in memory.
LONGEST_LINE = 1 << 20
# honcho's colours, in its order.
COLOURS = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)
SYSTEM = "system"
SIGNAL_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True)
class Entry:
    name: str
    command: str


def parse_procfile(text: str) -> list[Entry]:
    """`name: command` lines; blank lines and `#` comments are skipped."""
    entries: list[Entry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        if not colon or not name.strip() or not command.strip():
            raise ValueError(f"line {number} is not `name: command`: {raw!r}")
        if any(e.name == name.strip() for e in entries):
            raise ValueError(f"line {number}: {name.strip()!r} is named twice")
        entries.append(Entry(name.strip(), command.strip()))
    return entries


class Output:
    """Prefixes lines and writes each batch of them with one write; a closed output is dropped quietly
    (the processes keep running, as they would with their output going nowhere)."""

    def __init__(self, stream: BinaryIO, names: Sequence[str], colour: bool) -> None:
        self.stream = stream
        self.width = max(len(n) for n in [*names, SYSTEM])
        self.colour = colour
        self.colours = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)}
        self.closed = False

    def prefix(self, name: str) -> bytes:
        text = f"{time.strftime('%H:%M:%S')} {name.ljust(self.width)} | "
        code = self.colours.get(name)
        if self.colour and code is not None:
            text = f"\033[0m\033[{code}m{text}\033[0m"
        return text.encode()

    def lines(self, name: str, data: bytes) -> None:
        """`data`: one or more lines, the last one's newline optional."""
        if self.closed or not data:
            return
        prefix = self.prefix(name)
        body = data[:-1] if data.endswith(b"\n") else data
        try:
            self.stream.write(prefix + body.replace(b"\n", b"\n" + prefix) + b"\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.closed = True

    def system(self, text: str) -> None:
        self.lines(SYSTEM, text.encode())


async def line_blocks(stream: asyncio.StreamReader, gather_seconds: float = 0.0) -> AsyncIterator[bytes]:
    """Every complete line waiting in the pipe, a block at a time; a partial line waits for its end (one
    longer than `LONGEST_LINE` comes in pieces), and what is left without a newline comes last. With
    `gather_seconds`, lines gather that long between reads unless the pipe keeps the reads full."""
    rest = b""
    while chunk := await stream.read(READ_BYTES):
        data = rest + chunk if rest else chunk
        cut = data.rfind(b"\n") + 1
        if not cut and len(data) < LONGEST_LINE:
            rest = data
            continue
        cut = cut or len(data)
        rest = data[cut:]
        yield data[:cut]
        if gather_seconds and len(chunk) < READ_BYTES:
            await asyncio.sleep(gather_seconds)
    if rest:
        yield rest


async def relay(name: str, stream: asyncio.StreamReader, out: Output) -> None:
    """Every complete line waiting in the pipe, in one write, gathered for `GATHER_SECONDS` between
    reads unless the pipe keeps the reads full."""
    async for block in line_blocks(stream, GATHER_SECONDS):
        out.lines(name, block)


def ended_with(code: int | None) -> str:
    """An entry's exit code, and the signal that ended it: the shell's own (a negative code) or its
    command's, which the shell gives as 128 + the signal's number."""
    text = f"rc={code}"
    if code is None:
        return text
    number = -code if code < 0 else code - 128
    if number > 0:
        with contextlib.suppress(ValueError):
            return f"{text}: {signal.Signals(number).name}"
    return text


class Runner:
    def __init__(self, entries: Sequence[Entry], out: Output, cwd: Path | None = None) -> None:
        self.entries = entries
        self.out = out
        self.cwd = cwd
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.relays: list[asyncio.Task[None]] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[int] = loop.create_future()

        def on_signal(code: int) -> None:
            if not stop.done():
                stop.set_result(code)

        for signum, signal_code in SIGNAL_CODES.items():
            loop.add_signal_handler(signum, on_signal, signal_code)
        try:
            for entry in self.entries:
                await self._start(entry)
            ends: dict[asyncio.Future[int], str] = {
                asyncio.ensure_future(p.wait()): name for name, p in self.processes.items()
            }
            done, _ = await asyncio.wait([stop, *ends], return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                code = stop.result()
            else:
                ended = next(iter(done))
                code = ended.result()
                self.out.system(f"{ends[ended]} stopped ({ended_with(code)})")
            for end in ends:
                end.cancel()
        finally:
            try:
                # Still handled meanwhile: a second signal changes nothing (Ctrl-C reaches `uv run` too,
                # which passes it on), and an entry slow to stop is killed after KILL_AFTER_SECONDS.
                await self._stop_all()
            finally:
                for signum in SIGNAL_CODES:
                    loop.remove_signal_handler(signum)
        return code

    async def _start(self, entry: Entry) -> None:
        # The shell (dash does not exec its last command) traps SIGTERM so as not to die of the SIGTERM
        # sent to the entry's group: it waits for its command and ends with the command's own code. Killed
        # at once, it reported -15 for an entry that stopped cleanly, and an entry slow to stop outlived
        # it, so that it was never sent SIGKILL and the runner waited on its output for good. A caught
        # signal is set back to its default in the command, which gets the SIGTERM as before.
        process = await asyncio.create_subprocess_shell(
            f"trap : TERM; {entry.command}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            cwd=self.cwd,
            limit=LONGEST_LINE,
        )
        assert process.stdout is not None  # noqa: S101 narrows a type for mypy: stdout is a pipe
        self.processes[entry.name] = process
        self.relays.append(asyncio.create_task(relay(entry.name, process.stdout, self.out)))
        self.out.system(f"{entry.name} started (pid={process.pid})")

    def _signal_all(self, signum: signal.Signals) -> None:
        for name, process in self.processes.items():
            if process.returncode is None:
                if signum != signal.SIGTERM:
                    self.out.system(f"sending {signum.name} to {name} (pid {process.pid})")
                # The entry's own session: its shell and whatever that started.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signum)

    async def _stop_all(self) -> None:
        self.out.system("stopping every process")
        self._signal_all(signal.SIGTERM)
        waits = [p.wait() for p in self.processes.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), KILL_AFTER_SECONDS)
        except TimeoutError:
            self._signal_all(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in self.processes.values()))
        await asyncio.gather(*self.relays, return_exceptions=True)
        for name, process in self.processes.items():
            self.out.system(f"{name} stopped ({ended_with(process.returncode)})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.procfile", description=__doc__.split("\n")[0])
    parser.add_argument("-f", "--procfile", type=Path, default=Path("Procfile"))
    parser.add_argument("names", nargs="*", help="entries to run (default: all)")
    args = parser.parse_args(argv)
    entries = parse_procfile(args.procfile.read_text())
    if args.names:
        unknown = set(args.names) - {e.name for e in entries}
        if unknown:
            parser.error(f"not in {args.procfile}: {', '.join(sorted(unknown))}")
        entries = [e for e in entries if e.name in args.names]
    out = Output(sys.stdout.buffer, [e.name for e in entries], colour=sys.stdout.isatty())
    return uvloop.run(Runner(entries, out).run())


if __name__ == "__main__":
    raise SystemExit(main())
