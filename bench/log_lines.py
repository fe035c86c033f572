"""`python -m bench.log_lines`: the CPU one per-message line costs in the service, through loguru and
through `shared.logging.HotLine`.

Each case runs in a child process configured as a service is (`configure_logging`, INFO), whose stderr
is a pipe that this process drains: 50,000 lines on an event loop (uvloop), 500 a loop turn, as the
scheduler hands a batch to the sender; the figure is the child's CPU for the loop (process time, the
writes into the pipe included) divided by the lines. The two lines are the scheduler's hand-over and the
sender's call to the API, with the fields they carry (the services' own `HotLine`s).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
import time

import uvloop
from loguru import logger

from services.scheduler.scheduler import HANDED
from services.sender.provider import CALLED
from shared.logging import configure_logging

LINES = 50_000
A_TURN = 500
CASES = [
    (line, way, fmt)
    for line in ("scheduler", "sender")
    for way in ("loguru", "hot")
    for fmt in ("plain", "json")
]


async def log(line: str, way: str, lines: int) -> None:
    handed, called = HANDED, CALLED
    for start in range(0, lines, A_TURN):
        for i in range(start, start + A_TURN):
            if line == "scheduler":
                if way == "hot":
                    handed.info(mailing_id=12, message_id=100_000 + i, client_id=i)
                else:
                    logger.info(HANDED.template, mailing_id=12, message_id=100_000 + i, client_id=i)
            elif way == "hot":
                called.info(
                    100_000 + i,
                    200,
                    "ok",
                    message_id=100_000 + i,
                    mailing_id=12,
                    client_id=i,
                    attempt=1,
                    status_code=200,
                    duration_ms=3.2,
                )
            else:
                logger.info(
                    CALLED.template,
                    100_000 + i,
                    200,
                    "ok",
                    message_id=100_000 + i,
                    mailing_id=12,
                    client_id=i,
                    attempt=1,
                    status_code=200,
                    duration_ms=3.2,
                )
        await asyncio.sleep(0)


def child(line: str, way: str, fmt: str, lines: int) -> None:
    configure_logging(line, json=fmt == "json")
    uvloop.run(log(line, way, 1_000))  # warm up
    started = time.process_time()
    uvloop.run(log(line, way, lines))
    used = time.process_time() - started
    print(f"{used / lines * 1e6:.2f}")


def run_case(line: str, way: str, fmt: str, lines: int) -> float:
    command = [sys.executable, "-m", "bench.log_lines", "--child", line, way, fmt, "--lines", str(lines)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stderr is not None and process.stdout is not None
    logged = process.stderr

    def drain() -> None:
        while logged.read(1 << 16):
            pass

    drained = threading.Thread(target=drain)
    drained.start()
    out = process.stdout.read()
    process.wait()
    drained.join()
    return float(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("LINE", "WAY", "FORMAT"))
    parser.add_argument("--lines", type=int, default=LINES)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        line, way, fmt = args.child
        child(line, way, fmt, args.lines)
        return
    print("| line | format | loguru, µs a line | HotLine, µs a line |")
    print("|---|---|---:|---:|")
    for line in ("scheduler", "sender"):
        for fmt in ("plain", "json"):
            figures = {
                way: sorted(run_case(line, way, fmt, args.lines) for _ in range(args.rounds))
                for way in ("loguru", "hot")
            }
            shown = {way: f"{f[0]:.1f}-{f[-1]:.1f}" for way, f in figures.items()}
            print(f"| {line} | {fmt} | {shown['loguru']} | {shown['hot']} |", flush=True)


if __name__ == "__main__":
    main()
