"""`python -m bench.probe_client [calls]`: the CPU the sender's HTTP client spends on one call.

`ProbeClient.send` in a loop of IN_FLIGHT callers against the stand-in (its own process, at 0 ms, as
`bench.sender` runs it); this process's CPU time (`time.process_time`, the stand-in's excluded) over the
calls. A warm-up round opens the connections first, so the figure is the keep-alive steady state.

`--sender [messages]` measures the whole sender instead, as `bench.sender` runs it (100 in flight, the
stand-in at 0 ms and at 50 ms, SENDER_ROUNDS rounds each): the sender process's CPU a message, from its
first consumed message to its last committed `sent`, and its rate.

`--instructions` runs the loop under `valgrind --tool=callgrind` for N and 2N calls (the stand-in outside
valgrind) and prints the difference per call: start-up cancels out, and instruction counts do not move
with the host's load the way CPU seconds do.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time

import uvloop

from bench.sender import SECRET, private_topology, sender_rate, stand_in, stub_faults, wait_healthy
from services.probe_stub.token import make_token
from services.sender.checks import Claim
from services.sender.provider import ProbeClient, make_client
from shared.logging import configure_logging

DEFAULT_CALLS = 20_000
DEFAULT_SENDER_MESSAGES = 20_000
SENDER_ROUNDS = 3
IN_FLIGHT = 100
WARM_UP_CALLS = 1_000
_COLLECTED = re.compile(r"Collected : (\d+)")
VALGRIND = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
BASE_ENV = "MAILING_BENCH_PROBE_BASE"


async def calls(base: str, total: int, in_flight: int = IN_FLIGHT) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of `total` calls after a warm-up; every call must succeed."""
    configure_logging("bench", level="WARNING")
    http = make_client(base, make_token(SECRET), 5.0, in_flight)
    try:
        client = ProbeClient(http)

        async def run(count: int) -> None:
            ids = iter(range(count))

            async def worker() -> None:
                for msg_id in ids:
                    result = await client.send(Claim(msg_id, 1, msg_id, 1, "79000000000", "UTC"), "bench")
                    if not result.ok:
                        raise RuntimeError(f"call {msg_id} failed: {result.reason}")

            await asyncio.gather(*(worker() for _ in range(in_flight)))

        await run(WARM_UP_CALLS)
        cpu, wall = time.process_time(), time.perf_counter()
        await run(total)
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await http.close()


def instructions(base: str, total: int) -> float:
    """Instructions a call: the difference of runs of `total` and twice as many, one after the other."""
    counts = []
    for n in (total, 2 * total):
        run = subprocess.run(
            [*VALGRIND, sys.executable, "-m", "bench.probe_client", str(n)],
            env={**os.environ, BASE_ENV: base},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        found = _COLLECTED.search(run.stderr)
        if run.returncode != 0 or found is None:
            raise RuntimeError(f"callgrind run failed ({run.returncode}):\n{run.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / total


async def sender_cpu(base: str, total: int) -> None:
    configure_logging("bench", level="WARNING")
    token = make_token(SECRET)
    for latency_ms in (0, 50):
        cpu: list[float] = []
        rates = []
        async with private_topology() as topology:
            for _ in range(SENDER_ROUNDS):
                await stub_faults(base, latency_ms=latency_ms)
                rates.append(
                    await sender_rate(base, token, total, IN_FLIGHT, topology.namespace, cpu_per_message=cpu)
                )
        rounds = ", ".join(f"{c * 1e6:.0f}" for c in cpu)
        print(
            f"sender, {latency_ms} ms, {IN_FLIGHT} in flight, {total:,} messages: "
            f"{statistics.median(cpu) * 1e6:.0f} µs CPU a message ({rounds}), "
            f"{statistics.median(rates):,.0f}/s"
        )


def measure(base: str, total: int) -> None:
    cpu, wall = uvloop.run(calls(base, total))
    print(
        f"ProbeClient.send, {IN_FLIGHT} in flight, {total:,} calls: {cpu / total * 1e6:.1f} µs CPU a call"
        f" ({total / wall:,.0f} calls/s)"
    )


def main() -> None:
    args = sys.argv[1:]
    counting = "--instructions" in args
    whole_sender = "--sender" in args
    numbers = [a for a in args if not a.startswith("--")]
    total = int(numbers[0]) if numbers else DEFAULT_SENDER_MESSAGES if whole_sender else DEFAULT_CALLS
    given = os.environ.get(BASE_ENV)
    if given is not None:
        measure(given, total)
        return
    with stand_in() as base:
        asyncio.run(wait_healthy(f"{base}/healthz", within=10))
        if whole_sender:
            uvloop.run(sender_cpu(base, total))
        elif counting:
            print(f"ProbeClient.send: {instructions(base, total):,.0f} instructions a call")
        else:
            measure(base, total)


if __name__ == "__main__":
    main()
