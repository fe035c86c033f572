"""The CSV import under `make run`'s conditions, and the API process's peak memory over a big import.

Part of `python -m bench.csv_import` (which compares the live rate with its own in-process rate for the
same file); `python -m bench.csv_import_live` runs the live measurement alone and prints it.

Live: honcho starts the API, scheduler, sender, reporter and stand-in from a Procfile, as `make run`
does (each its own process, development settings, plain-text logs at INFO through honcho's pipes; honcho's
own output goes to a file), in their own database, AMQP namespace and ports. 20,000 clients are imported
and a mailing to every client runs (stand-in latency 50 ms, sender paced at 200 sends/s) while the file
is posted over HTTP; every new client joins the running mailing. The process CPU time of each service
and of honcho over the import says where the time went.

Memory: the API alone as its own process (`python -m services.api` through `bench.service_process`,
logs at INFO through a pipe), files of growing size imported one after the other; the peak resident
memory (`VmHWM`, reset before each import) less the resident memory before it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import httpx
import psycopg

from bench.chaos import LOCALHOST, ROOT, Services, free_port, free_ports
from bench.csv_import import drop_database, load_average, make_csv, recreate_database, upload
from scripts.demo import to_every_client_now
from shared.settings import CommonSettings
from shared.topology import Topology, delete

KEY = "bench-admin-key-0123456789abcdefghijklmnopqrstuvwxyz"
MAILING_CLIENTS = 20_000
# How long after the answer the run waits for every client's message and every per-client line.
WAIT_AFTER = 180.0
LATENCY_MS = 50
SENDS_PER_SECOND = 200
# The services `make run` starts that take part (the SMTP sink and the sign-in stand-in stay idle).
KINDS = ("api", "scheduler", "sender", "reporter", "probe_stub")
PORT_SETTING = {
    "api": "MAILING_API_PORT",
    "scheduler": "MAILING_SCHEDULER_METRICS_PORT",
    "sender": "MAILING_SENDER_METRICS_PORT",
    "reporter": "MAILING_REPORTER_METRICS_PORT",
    "probe_stub": "MAILING_PROBE_PORT",
}


def _stat(pid: int) -> list[str]:
    # The fields after the command name (which may hold spaces): state is [0], ppid [1], utime [11].
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (its children's not included)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _leaf(pid: int) -> int:
    """The process a shell runs (itself when the shell exec'd it)."""
    if Path(f"/proc/{pid}/comm").read_text().strip() not in ("sh", "dash", "bash"):
        return pid
    children = _children(pid)
    return _leaf(children[0]) if len(children) == 1 else pid


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


@dataclass
class LiveRun:
    rows: int
    seconds: float
    counts: dict[str, int]
    cpu: dict[str, float]
    sent_during: int
    # Seconds after the answer until every client had its message / every per-client line was out; None:
    # not within WAIT_AFTER.
    joined_after: float | None
    logged_after: float | None
    load_before: str
    load_after: str
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


class LineCounter:
    """Counts the lines of a growing file that hold `needle`, reading only what was added since."""

    def __init__(self, path: Path, needle: bytes) -> None:
        self.path = path
        self.needle = needle
        self.offset = 0
        self.found = 0

    def count(self) -> int:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.found += data[:end].count(self.needle)
        self.offset += end
        return self.found


class Honcho:
    """`honcho start` of a Procfile written for the run, as `make run` starts it."""

    def __init__(self, workdir: Path, env: dict[str, str], ports: dict[str, int]) -> None:
        self.workdir = workdir
        self.env = env
        self.ports = ports
        self.log = workdir / "honcho.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        # `python -m bench.service_process` runs `services.<kind>` as `python -m` would, with the names off
        # the command line (see its docstring); the rest is `make run`'s Procfile.
        lines = [
            f"{kind}: CHAOS_SERVICE=services.{kind} {PORT_SETTING[kind]}={self.ports[kind]}"
            f" {sys.executable} -m bench.service_process"
            for kind in KINDS
        ]
        procfile = self.workdir / "Procfile"
        procfile.write_text("\n".join(lines) + "\n")
        empty_env = self.workdir / "empty.env"
        empty_env.write_text("")
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "honcho",
                "-e",
                str(empty_env),
                "-d",
                str(ROOT),
                "-f",
                str(procfile),
                "start",
                cwd=ROOT,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )

    def pids(self) -> dict[str, int]:
        """Each service's pid, from honcho's "system | api.1 started (pid=1234)" lines."""
        found: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if match := re.search(r"\| (\w+)\.1 started \(pid=(\d+)\)", line):
                found[match[1]] = int(match[2])
        return found

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        pids = self.pids()
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
        # Whatever honcho left behind (it started each service in a session of its own).
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _wait_healthy(base: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=3) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(base + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{base} not healthy within {within} s")


def _count(dsn: str, query: str, *params: object) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


async def live_import(body: bytes, rows: int, *, database: str = "mailing_bench_import_live") -> LiveRun:
    base = CommonSettings()
    database_url = recreate_database(base.database_url, database)
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    namespace = f"bench-import-{uuid.uuid4().hex[:8]}"
    ports = dict(zip(KINDS, free_ports(len(KINDS)), strict=True))
    api = f"http://{LOCALHOST}:{ports['api']}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-import-live-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILING_")}
    env.update(
        {
            "MAILING_DATABASE_URL": database_url,
            "MAILING_AMQP_URL": base.amqp_url,
            "MAILING_AMQP_NAMESPACE": namespace,
            "MAILING_BOOTSTRAP_API_KEY": KEY,
            "MAILING_LOCAL_STATE_DIR": str(workdir / "local"),
            "MAILING_LOG_LEVEL": "INFO",
            "MAILING_PROBE_BASE_URL": f"http://{LOCALHOST}:{ports['probe_stub']}",
            "MAILING_PROBE_LATENCY_MS": str(LATENCY_MS),
            "MAILING_SENDER_RATE_LIMIT_PER_SECOND": str(SENDS_PER_SECOND),
            "MAILING_REPORTER_SMTP_PORT": str(free_port()),
            "MAILING_API_HOST": LOCALHOST,
            "MAILING_SCHEDULER_METRICS_HOST": LOCALHOST,
            "MAILING_SENDER_METRICS_HOST": LOCALHOST,
            "MAILING_REPORTER_METRICS_HOST": LOCALHOST,
            "MAILING_PROBE_HOST": LOCALHOST,
        }
    )
    honcho = Honcho(workdir, env, ports)
    try:
        await honcho.start()
        for kind in KINDS:
            await _wait_healthy(f"http://{LOCALHOST}:{ports[kind]}")
        async with httpx.AsyncClient(
            base_url=api, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        ) as http:
            await upload(http, make_csv(MAILING_CLIENTS, seed=2))
            mailing = await http.post(
                "/api/v1/mailings", json=to_every_client_now("bench: the import under a running mailing")
            )
            mailing.raise_for_status()
            mailing_id = mailing.json()["id"]
            sent_query = "SELECT count(*) FROM messages WHERE mailing_id = %s AND status = 'sent'"
            deadline = time.monotonic() + 60
            while _count(dsn, sent_query, mailing_id) < 1000:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the mailing is not sending; see {honcho.log}")
                await asyncio.sleep(0.5)
            pids = honcho.pids()
            # honcho itself, and the process it runs for each service to read its output and queue it.
            assert honcho.process is not None
            pids["honcho"] = honcho.process.pid
            for number, reader in enumerate(_children(honcho.process.pid)):
                pids[f"honcho reader {number}"] = reader
            sent_before = _count(dsn, sent_query, mailing_id)
            # A Procfile line runs under a shell: its process is the shell's child.
            pids = {name: _leaf(pid) if name in KINDS else pid for name, pid in pids.items()}
            cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            load_before = load_average()
            seconds, counts = await upload(http, body)
            cpu = {name: _cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
            readers = [name for name in cpu if name.startswith("honcho reader")]
            cpu["honcho readers"] = sum(cpu.pop(name) for name in readers)
            load_after = load_average()
            sent_during = _count(dsn, sent_query, mailing_id) - sent_before
            # Every client must join the running mailing (its incremental expansion picks them up), and
            # every per-client line must come out of honcho (the API writes them after its answer).
            started = time.monotonic()
            clients = _count(dsn, "SELECT count(*) FROM clients WHERE deleted_at IS NULL")
            messages = "SELECT count(*) FROM messages WHERE mailing_id = %s"
            lines = LineCounter(honcho.log, b"by CSV import (line ")
            joined_after: float | None = None
            logged_after: float | None = None
            while time.monotonic() - started < WAIT_AFTER and (joined_after is None or logged_after is None):
                if joined_after is None and _count(dsn, messages, mailing_id) >= clients:
                    joined_after = time.monotonic() - started
                if logged_after is None and lines.count() >= MAILING_CLIENTS + rows:
                    logged_after = time.monotonic() - started
                await asyncio.sleep(0.5)
            await http.post(f"/api/v1/mailings/{mailing_id}/cancel")
        return LiveRun(
            rows, seconds, counts, cpu, sent_during, joined_after, logged_after, load_before, load_after
        )
    finally:
        await honcho.stop()
        await _delete_namespace(base.amqp_url, namespace)
        drop_database(database_url)
        shutil.rmtree(workdir, ignore_errors=True)


async def _delete_namespace(amqp_url: str, namespace: str) -> None:
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            await delete(await connection.channel(), Topology(namespace))


@dataclass
class MemoryRun:
    rows: int
    megabytes: float
    seconds: float
    rss_before_mib: float
    peak_mib: float

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.rss_before_mib


def _reset_peak(pid: int) -> int:
    """Resets the process's peak RSS (`VmHWM`) to its current RSS, which it returns (KiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmRSS")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


async def api_memory(
    sizes: tuple[int, ...], *, database: str = "mailing_bench_import_memory"
) -> list[MemoryRun]:
    """Peak RSS of the API process over imports of growing files, each into the same directory."""
    base = CommonSettings()
    database_url = recreate_database(base.database_url, database)
    logs = Path(tempfile.mkdtemp(prefix="bench-import-memory-"))
    namespace = f"bench-import-{uuid.uuid4().hex[:8]}"
    services = Services(
        logs,
        {
            "MAILING_DATABASE_URL": database_url,
            "MAILING_AMQP_URL": base.amqp_url,
            "MAILING_AMQP_NAMESPACE": namespace,
            "MAILING_BOOTSTRAP_API_KEY": KEY,
            "MAILING_LOCAL_STATE_DIR": str(logs / "local"),
            "MAILING_CSV_IMPORT_MAX_BYTES": str(256 * 1024 * 1024),
        },
    )
    services.supervise = False
    service = services.add("api", "api")
    runs: list[MemoryRun] = []
    try:
        await services.start("api")
        await services.wait_healthy("api")
        assert service.process is not None
        pid = service.process.pid
        async with httpx.AsyncClient(
            base_url=service.base, headers={"Authorization": f"Bearer {KEY}"}
        ) as http:
            # A small import first, so that what any import loads once (modules, caches) is in the baseline.
            await upload(http, make_csv(1000, seed=10))
            for seed, rows in enumerate(sizes, start=11):
                body = make_csv(rows, seed=seed)
                before = _reset_peak(pid)
                seconds, counts = await upload(http, body)
                peak = _status_kib(pid, "VmHWM")
                if counts["created"] + counts["updated"] != rows:
                    raise RuntimeError(f"{rows} rows imported as {counts}")
                runs.append(MemoryRun(rows, len(body) / 1e6, seconds, before / 1024, peak / 1024))
                run = runs[-1]
                print(
                    f"memory: {rows:,} rows ({run.megabytes:.1f} MB) in {seconds:.1f} s, API RSS"
                    f" {run.rss_before_mib:.0f} MiB before, peak {run.peak_mib:.0f} MiB"
                    f" ({run.growth_mib:+.0f})"
                )
        return runs
    finally:
        await services.stop_all()
        await _delete_namespace(base.amqp_url, namespace)
        shutil.rmtree(logs, ignore_errors=True)
        drop_database(database_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--memory", type=int, nargs="*", help="measure the API's peak RSS for these sizes")
    args = parser.parse_args()
    if args.memory:
        asyncio.run(api_memory(tuple(args.memory)))
        return
    run = asyncio.run(live_import(make_csv(args.rows), args.rows))
    print(
        f"live: {run.rows:,} rows in {run.seconds:.2f} s ({run.rate:,.0f} rows/s) {run.counts};"
        f" sent meanwhile {run.sent_during:,}; after the answer, every client had joined the mailing in"
        f" {run.joined_after} s, every per-client line was out in {run.logged_after} s;"
        f" load {run.load_before} -> {run.load_after}"
    )
    print("CPU seconds over the import: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(run.cpu.items())))


if __name__ == "__main__":
    main()
