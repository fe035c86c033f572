"""`python -m bench.probe_stub`: the stand-in's own CPU a send request, under keep-alive load.

The stand-in runs as `bench.sender` runs it (its own process, logging at WARNING). Every connection sends
one valid send request at a time and reads its answer (raw sockets, so the client's cost stays small);
the CPU is the stand-in's `utime + stime` from /proc over the requests, divided by their number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import uvloop

from services.probe_stub.token import make_token

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SECRET = "local-probe-secret"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def stand_in() -> Iterator[tuple[int, int]]:
    """The stand-in as `bench.sender` runs it, on a free port; yields its port and process id."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    env = {**os.environ, "MAILING_PROBE_PORT": str(port), "MAILING_PROBE_LOG_LEVEL": "WARNING"}
    stub = subprocess.Popen([sys.executable, "-m", "services.probe_stub"], env=env, cwd=ROOT)
    try:
        yield port, stub.pid
    finally:
        stub.terminate()
        stub.wait(timeout=10)


async def wait_listening(port: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        else:
            writer.close()
            return


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def send_request(host: str, token: str, msg_id: int) -> bytes:
    body = json.dumps({"id": msg_id, "phone": 79_001_234_567, "text": "hello"}).encode()
    head = (
        f"POST /v1/send/{msg_id} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def connection(host: str, port: int, token: str, msg_ids: range) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    accepted = 0
    try:
        for msg_id in msg_ids:
            writer.write(send_request(host, token, msg_id))
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            accepted += head.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
    return accepted


async def put_latency(host: str, port: int, latency_ms: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"latency_ms": latency_ms}).encode()
    writer.write(
        f"PUT /_stub/faults HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n".encode()
        + body
    )
    answer = await reader.read()
    writer.close()
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"PUT /_stub/faults answered {answer[:200]!r}")


async def run_round(
    host: str, port: int, pid: int, token: str, connections: int, requests: int, first_id: int
) -> tuple[float, float]:
    """Requests a second and CPU microseconds a request."""
    per = requests // connections
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    accepted = await asyncio.gather(
        *(
            connection(host, port, token, range(first_id + i * per, first_id + (i + 1) * per))
            for i in range(connections)
        )
    )
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    done = per * connections
    if sum(accepted) != done:
        raise RuntimeError(f"{done - sum(accepted)} requests were not accepted")
    return done / elapsed, cpu / done * 1e6


async def main_async(port: int, pid: int, args: argparse.Namespace) -> None:
    await wait_listening(port, within=10)
    host = HOST
    token = make_token(SECRET)
    print("| stand-in latency | connections | requests a round | requests/s | stand-in CPU a request |")
    print("|---|---|---|---|---|")
    first_id = 1
    for latency_ms in args.latency_ms:
        await put_latency(host, port, latency_ms)
        rates, costs = [], []
        for _ in range(args.rounds):
            rate, cost = await run_round(host, port, pid, token, args.connections, args.requests, first_id)
            first_id += args.requests
            rates.append(rate)
            costs.append(cost)
        print(
            f"| {latency_ms:g} ms | {args.connections} | {args.requests:,} | {statistics.median(rates):,.0f} "
            f"| {statistics.median(costs):.1f} µs (rounds: {', '.join(f'{c:.1f}' for c in costs)}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--requests", type=int, default=60_000, help="send requests a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0])
    args = parser.parse_args()
    with stand_in() as (port, pid):
        uvloop.run(main_async(port, pid, args))


if __name__ == "__main__":
    main()
