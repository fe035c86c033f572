"""`python -m bench.e2e`: the speed users see, and what it costs the machine.

Every service runs as its own process, started the way `make run` starts them: `scripts.procfile` runs a
Procfile (api, scheduler, sender, reporter, probe stand-in), relays every line they log at INFO (readable
lines, the default) through one pipe, and this benchmark reads that pipe as a terminal would (`--relay
honcho` runs them under honcho instead, as `make run` did before). 100,000 clients are inserted
directly (not timed); one mailing to all of them is created through the API; the figure is the seconds
from that request to the last `sent` (`max(sent_at)`). Meanwhile the CPU time of every process is read
from /proc: each service, the relay, every process of the PostgreSQL cluster and RabbitMQ's `beam.smp`
(the machine's own servers, as `make run` uses them, each in a database and a namespace of its own), up
to the moment the reporter has recorded every outcome. `bench.sender`'s figure for the same latency and
in-flight count is measured in the same run, round by round, and again (for comparison, not a target)
with the sender logging at INFO through a pipe, as the end-to-end run's sender does.

`--profile DIR` also records each service and the relay with py-spy (`DIR/<case>/<name>.txt`, collapsed
stacks, one line a stack with its count) for the same window; the sampling costs CPU of its own, so those
rounds' figures are not recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psycopg
import uvloop

from bench import procstat
from bench.chaos import free_ports
from bench.report import ZONES, rewrite_section
from bench.sender import (
    AMQP_URL,
    PG_ADMIN,
    ROOT,
    SECRET,
    drop_database,
    fresh_database,
    logged_sender_round,
    sender_round,
    stand_in,
    wait_healthy,
)
from scripts.procfile import SYSTEM, line_blocks
from services.probe_stub.token import make_token
from services.sender.settings import SenderSettings
from shared.broker import connect
from shared.domain.statuses import MessageStatus
from shared.logging import configure_logging
from shared.topology import Topology, delete

API_KEY = "e2e-bench-bootstrap-key-0123456789abcdef"
CLIENTS = 100_000
# Messages of each `bench.sender` round (its own figure does not depend on the count past start-up).
SENDER_MESSAGES = 30_000
LATENCIES_MS = (0, 50)
ROUNDS = 2
# The processes `make run` starts that carry a mailing (the mail sink and the sign-in provider do not).
SERVICES = {
    "api": "services.api",
    "scheduler": "services.scheduler",
    "sender": "services.sender",
    "reporter": "services.reporter",
    "probe": "services.probe_stub",
}
PORT_SETTING = {
    "api": "MAILING_API_PORT",
    "scheduler": "MAILING_SCHEDULER_METRICS_PORT",
    "sender": "MAILING_SENDER_METRICS_PORT",
    "reporter": "MAILING_REPORTER_METRICS_PORT",
    "probe": "MAILING_PROBE_PORT",
}
# What the CPU table lists, in this order; "total" is their sum.
PARTS = (*SERVICES, "relay", "postgresql", "rabbitmq")
# What `make run` starts the services with (`python -m scripts.procfile`); honcho for comparison.
RELAY = "procfile"
POLL_SECONDS = 0.25
DEADLINE_SECONDS = 900.0
# A delivery slower than this (seconds) is reported as stalled.
STALL_SECONDS = 120.0


@dataclass
class Round:
    latency_ms: int
    clients: int
    seconds: float
    first_sent_after: float
    cpu: dict[str, float]
    # CPU of our own database's backends, the machine's busy time, and this process (reading the pipe).
    our_backends: dict[str, float]
    machine: float
    bench: float
    lines: Counter[str]
    load_before: str
    load_after: str
    sender: float = 0.0
    # `bench.sender` as a service logs: at INFO, its lines through a pipe (for comparison, not a target).
    sender_logged: float = 0.0

    @property
    def rate(self) -> float:
        return self.clients / self.seconds

    @property
    def total(self) -> float:
        return sum(self.cpu.values())

    def per_message_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.clients


@dataclass
class Case:
    latency_ms: int
    in_flight: int
    rounds: list[Round] = field(default_factory=list)

    def median(self, pick: str) -> float:
        values = {
            "rate": [r.rate for r in self.rounds],
            "seconds": [r.seconds for r in self.rounds],
            "sender": [r.sender for r in self.rounds],
            "sender_logged": [r.sender_logged for r in self.rounds],
            "total": [r.per_message_ms(r.total) for r in self.rounds],
            "machine": [r.per_message_ms(r.machine) for r in self.rounds],
        }[pick]
        return statistics.median(values)

    def part_ms(self, part: str) -> float:
        return statistics.median(r.per_message_ms(r.cpu[part]) for r in self.rounds)

    def ratios(self) -> list[float]:
        return [r.rate / r.sender for r in self.rounds]

    def logged_ratios(self) -> list[float]:
        return [r.rate / r.sender_logged for r in self.rounds]


def load_average() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


TAIL_LINES = 60
# A line as the runner relays it: "HH:MM:SS name | ..." (honcho names the first process of an entry
# "name.1"); the name is among the first bytes after the time.
NAME_STARTS, NAME_ENDS = 9, 40
NAMES = {*SERVICES, SYSTEM}


def count_lines(block: bytes) -> Counter[str]:
    """The complete lines of `block` by the service that wrote them; "?" for lines without one. A
    Counter of the bytes after the time, then a decode for each distinct one: a regular expression over
    the block cost five times as much."""
    labels = Counter(line[NAME_STARTS:NAME_ENDS].split(b" ", 1)[0] for line in block.split(b"\n")[:-1])
    counts: Counter[str] = Counter()
    for label, count in labels.items():
        name = label.decode(errors="replace").split(".")[0]
        counts[name if name in NAMES else "?"] += count
    return counts


class Relay:
    """The services of a Procfile under the runner `make run` uses (or honcho), whose output is read
    a block at a time.

    The services are started through `bench.service_process`, so that their names stay off the command
    line (a `pkill -f services.sender` of someone else's on this shared machine would stop them too)."""

    def __init__(self, kind: str, env: dict[str, str], folder: Path) -> None:
        self.kind = kind
        self.env = env
        self.folder = folder
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None
        self.lines: Counter[str] = Counter()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.pids: dict[str, int] = {}

    async def start(self) -> None:
        procfile = self.folder / "Procfile"
        procfile.write_text(
            "".join(
                f"{name}: CHAOS_SERVICE={module} exec {sys.executable} -m bench.service_process\n"
                for name, module in SERVICES.items()
            )
        )
        (self.folder / "env").write_text("")
        command = {
            "honcho": ["honcho", "start", "-f", str(procfile), "-e", str(self.folder / "env")],
            "procfile": ["scripts.procfile", "-f", str(procfile)],
        }[self.kind]
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *command,
            cwd=ROOT,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=1 << 20,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.reader = asyncio.create_task(self.read_from(self.process.stdout))

    async def read_from(self, stream: asyncio.StreamReader) -> None:
        """Reads the pipe a block at a time (`scripts.procfile.line_blocks`, as the runner reads its
        services), as a terminal or a log shipper does. A readline, a decode
        and a split a line in this process cost 0.6 s of CPU a round, on the machine being measured."""
        async for block in line_blocks(stream):
            self.take(block if block.endswith(b"\n") else block + b"\n")

    def take(self, block: bytes) -> None:
        """Counts the complete lines of `block` by service and keeps the last ones for error messages."""
        self.lines.update(count_lines(block))
        # The block ends with a newline: its last TAIL_LINES lines are between the last TAIL_LINES + 1.
        last = block.rsplit(b"\n", TAIL_LINES + 1)[-TAIL_LINES - 1 : -1]
        self.tail.extend(line.decode(errors="replace") for line in last)

    def find_services(self) -> None:
        """Each service's pid: the processes below the runner whose environment names the module."""
        assert self.process is not None
        stats = procstat.all_stats()
        modules = {module: name for name, module in SERVICES.items()}
        for pid in procstat.descendants(self.process.pid, stats):
            name = modules.get(procstat.environ(pid).get("CHAOS_SERVICE", ""))
            if name is not None and stats[pid].name.startswith("python"):
                self.pids[name] = pid
        missing = set(SERVICES) - set(self.pids)
        if missing:
            raise RuntimeError(f"not running: {sorted(missing)}; last lines:\n{self.log_tail()}")

    def relay_pids(self, stats: dict[int, procstat.Stat]) -> list[int]:
        """The runner and its own processes (honcho: a reader per service), not the services."""
        assert self.process is not None
        services = set(self.pids.values())
        below = [p for p in procstat.descendants(self.process.pid, stats) if p not in services]
        # A service's own children (none today) would be its cost, not the relay's.
        return [self.process.pid, *(p for p in below if not self._under_service(p, stats, services))]

    @staticmethod
    def _under_service(pid: int, stats: dict[int, procstat.Stat], services: set[int]) -> bool:
        while pid in stats and pid > 1:
            pid = stats[pid].ppid
            if pid in services:
                return True
        return False

    def _ours(self, name: str, pid: int) -> bool:
        env = procstat.environ(pid)
        return (
            env.get("CHAOS_SERVICE") == SERVICES[name]
            and env.get("MAILING_AMQP_NAMESPACE") == self.env["MAILING_AMQP_NAMESPACE"]
        )

    def log_tail(self) -> str:
        return "\n".join(self.tail)

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            # The runner passes SIGTERM on to every service and waits for them (SIGKILL after 5 s).
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 40)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        for name, pid in self.pids.items():  # none should be left; a pid in use again is not ours
            if self._ours(name, pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reader, 5)


class Meter:
    """CPU seconds of each part of the system, read from /proc."""

    def __init__(self, relay: Relay, dsn: str, database: str) -> None:
        self.relay = relay
        self.dsn = dsn
        self.database = database
        self.postmaster = procstat.listener_pid(urlsplit(PG_ADMIN).port or 5432)
        self.rabbit = procstat.listener_pid(urlsplit(AMQP_URL).port or 5672)

    def read(self) -> tuple[dict[str, float], dict[int, procstat.Stat], float, float]:
        stats = procstat.all_stats()
        parts = {name: procstat.own_seconds([pid], stats) for name, pid in self.relay.pids.items()}
        parts["relay"] = procstat.own_seconds(self.relay.relay_pids(stats), stats)
        parts["postgresql"] = procstat.tree_seconds(self.postmaster, stats)
        # RabbitMQ is beam.smp and the few helpers it starts (epmd is not its child).
        parts["rabbitmq"] = procstat.tree_seconds(self.rabbit, stats)
        return parts, stats, procstat.machine_busy_seconds(), time.process_time()

    def our_backends(
        self, before: dict[int, procstat.Stat], after: dict[int, procstat.Stat]
    ) -> dict[str, float]:
        """CPU of this run's database's backends (those still connected), by the service each works
        for (found by the client port of its connection)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, client_port FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            ).fetchall()
        owners = procstat.client_owners(urlsplit(PG_ADMIN).port or 5432, self.relay.pids.values())
        names = {pid: name for name, pid in self.relay.pids.items()}
        split: dict[str, float] = {}
        for pid, port in rows:
            if pid in after:
                used = after[pid].own - (before[pid].own if pid in before else 0.0)
                who = names.get(owners.get(port, 0), "other")
                split[who] = split.get(who, 0.0) + used
        return split


def seed_clients(dsn: str, clients: int) -> None:
    """`clients` live clients over the benchmarks' 30 timezones, settled as a table in service would be:
    written an hour before, not within the scheduler's margin for client changes (10 s), which would have
    every pass during the run look at all of them again as just changed."""
    zones = "ARRAY[" + ",".join(f"'{z}'" for z in ZONES) + "]"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO clients (phone, operator_code, timezone, created_at, updated_at)"
            f" SELECT (79000000000 + n)::text, '900', ({zones})[1 + n %% {len(ZONES)}],"
            " now() - interval '1 hour', now() - interval '1 hour'"
            " FROM generate_series(1, %s) AS n",
            (clients,),
        )
        conn.execute("VACUUM ANALYZE clients")
        conn.execute("CHECKPOINT")


def service_env(database_url: str, namespace: str, latency_ms: int, state: Path) -> dict[str, str]:
    """Default settings, as `make run` has them, but for this run's database, namespace and ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILING_")}
    *service_ports, smtp_port = free_ports(len(PORT_SETTING) + 1)
    ports = dict(zip(PORT_SETTING.values(), service_ports, strict=True))
    env.update({setting: str(port) for setting, port in ports.items()})
    env.update(
        {
            "MAILING_DATABASE_URL": database_url,
            "MAILING_AMQP_URL": AMQP_URL,
            "MAILING_AMQP_NAMESPACE": namespace,
            "MAILING_LOG_LEVEL": "INFO",
            "MAILING_BOOTSTRAP_API_KEY": API_KEY,
            "MAILING_LOCAL_STATE_DIR": str(state),
            "MAILING_API_HOST": "127.0.0.1",
            "MAILING_SCHEDULER_METRICS_HOST": "127.0.0.1",
            "MAILING_SENDER_METRICS_HOST": "127.0.0.1",
            "MAILING_REPORTER_METRICS_HOST": "127.0.0.1",
            "MAILING_PROBE_HOST": "127.0.0.1",
            "MAILING_PROBE_BASE_URL": f"http://127.0.0.1:{ports['MAILING_PROBE_PORT']}",
            "MAILING_PROBE_TOKEN": make_token(SECRET),
            "MAILING_PROBE_LATENCY_MS": str(latency_ms),
            # Nothing listens there: the reporter's start-up attempt at yesterday's report fails and waits.
            "MAILING_REPORTER_SMTP_PORT": str(smtp_port),
        }
    )
    return env


def health_urls(env: dict[str, str]) -> list[str]:
    return [f"http://127.0.0.1:{env[setting]}/healthz" for setting in PORT_SETTING.values()]


async def create_mailing(http: aiohttp.ClientSession, api: str) -> int:
    now = datetime.now(UTC)
    body = {
        "text": "bench.e2e: the speed users see",
        "start_at": (now - timedelta(minutes=1)).isoformat(),
        "end_at": (now + timedelta(days=1)).isoformat(),
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.post(f"{api}/api/v1/mailings", json=body, headers=headers) as response:
        if response.status != 201:
            raise RuntimeError(f"creating the mailing: {response.status} {await response.text()}")
        return int((await response.json())["id"])


async def wait_for(
    dsn: str, query: str, mailing_id: int, goal: int, within: float, relay: Relay, what: str
) -> None:
    """Until `query` (a count of the mailing's rows) reaches `goal`; cheap: it reads counter tables."""
    deadline = time.monotonic() + within
    last, moved = -1, time.monotonic()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            row = await (await conn.execute(query, (mailing_id,))).fetchone()
            count = int(row[0]) if row is not None and row[0] is not None else 0
            if count >= goal:
                return
            now = time.monotonic()
            if count != last:
                last, moved = count, now
            if now > deadline or now - moved > STALL_SECONDS:
                raise RuntimeError(f"{what}: {count} of {goal}; the relay's last lines:\n{relay.log_tail()}")
            await asyncio.sleep(POLL_SECONDS)


SENT_SO_FAR = (
    "SELECT sum(count) FROM mailing_status_counts WHERE mailing_id = %s"
    f" AND status = {MessageStatus.SENT.sql}"
)
RECORDED_SO_FAR = "SELECT sum(count) FROM report_outcome_minutes WHERE mailing_id = %s"


@contextlib.contextmanager
def profiling(folder: Path | None, targets: dict[str, int]) -> Iterator[None]:
    """py-spy recording each target process (collapsed stacks) while the block runs."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                *(["--subprocesses"] if name == "relay" else []),
                "--output",
                str(folder / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in targets.items()
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


@contextlib.asynccontextmanager
async def services_running(kind: str, env: dict[str, str]) -> AsyncIterator[Relay]:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as folder:
        relay = Relay(kind, env, Path(folder))
        try:
            await relay.start()
            for url in health_urls(env):
                try:
                    await wait_healthy(url, within=90)
                except RuntimeError as exc:
                    raise RuntimeError(f"{exc}; the relay's last lines:\n{relay.log_tail()}") from exc
            relay.find_services()
            yield relay
        finally:
            await relay.stop()


async def e2e_round(latency_ms: int, clients: int, relay_kind: str, profile: Path | None) -> Round:
    name, dsn = fresh_database()
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    try:
        seed_clients(dsn, clients)
        with tempfile.TemporaryDirectory(prefix="bench-e2e-state-") as state:
            url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
            env = service_env(url, namespace, latency_ms, Path(state))
            async with services_running(relay_kind, env) as relay, aiohttp.ClientSession() as http:
                meter = Meter(relay, dsn, name)
                api = f"http://127.0.0.1:{env['MAILING_API_PORT']}"
                await asyncio.sleep(2)  # start-up settles (the reporter's first tick, first scheduler tick)
                load_before = load_average()
                lines_before = Counter(relay.lines)
                targets = {**relay.pids, "relay": relay.process.pid if relay.process else 0}
                # The client's own set-up (its session's TLS context, its first request: 0.1-0.2 s of
                # CPU) and its connection to the api come before the clock starts.
                async with http.get(health_urls(env)[0]) as response:
                    response.raise_for_status()
                with profiling(profile, targets):
                    before, stats_before, machine_before, bench_before = meter.read()
                    started = time.time()
                    mailing_id = await create_mailing(http, api)
                    await wait_for(dsn, SENT_SO_FAR, mailing_id, clients, DEADLINE_SECONDS, relay, "sent")
                    await wait_for(dsn, RECORDED_SO_FAR, mailing_id, clients, 120, relay, "recorded")
                    await asyncio.sleep(1)  # the relay's pipe drains
                    after, stats_after, machine_after, bench_after = meter.read()
                load_after = load_average()
                our_backends = meter.our_backends(stats_before, stats_after)
                with psycopg.connect(dsn) as conn:
                    row = conn.execute(
                        "SELECT extract(epoch FROM max(sent_at)), extract(epoch FROM min(sent_at)),"
                        " count(*) FROM messages WHERE mailing_id = %s"
                        f" AND status = {MessageStatus.SENT.sql}",
                        (mailing_id,),
                    ).fetchone()
                assert row is not None
                if int(row[2]) != clients:
                    raise RuntimeError(f"{row[2]} messages sent of {clients}")
                return Round(
                    latency_ms=latency_ms,
                    clients=clients,
                    seconds=float(row[0]) - started,
                    first_sent_after=float(row[1]) - started,
                    cpu={part: after[part] - before[part] for part in PARTS},
                    our_backends=our_backends,
                    machine=machine_after - machine_before,
                    bench=bench_after - bench_before,
                    lines=Counter(relay.lines) - lines_before,
                    load_before=load_before,
                    load_after=load_after,
                )
    finally:
        drop_database(name)
        await delete_namespace(namespace)


async def delete_namespace(namespace: str) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await delete(channel, Topology(namespace))


def cpu_table(cases: list[Case]) -> str:
    head = "| part | " + " | ".join(f"{c.latency_ms} ms" for c in cases) + " |"
    lines = [head, "|---|" + "---:|" * len(cases)]
    labels = {
        "api": "api",
        "scheduler": "scheduler",
        "sender": "sender",
        "reporter": "reporter",
        "probe": "probe stand-in",
        "relay": "log relay",
        "postgresql": "PostgreSQL (every process of the cluster)",
        "rabbitmq": "RabbitMQ (beam.smp)",
    }
    for part in PARTS:
        lines.append(f"| {labels[part]} | " + " | ".join(f"{c.part_ms(part):.3f}" for c in cases) + " |")
    lines.append("| **total** | " + " | ".join(f"**{c.median('total'):.3f}**" for c in cases) + " |")
    lines.append(
        "| of PostgreSQL: this run's database's backends | "
        + " | ".join(
            f"{statistics.median(r.per_message_ms(sum(r.our_backends.values())) for r in c.rounds):.3f}"
            for c in cases
        )
        + " |"
    )
    for who in ("scheduler", "sender", "reporter", "api", "other"):
        label = "other connections (the benchmark's polling)" if who == "other" else f"working for the {who}"
        lines.append(
            f"| of those, {label} | "
            + " | ".join(
                f"{statistics.median(r.per_message_ms(r.our_backends.get(who, 0.0)) for r in c.rounds):.3f}"
                for c in cases
            )
            + " |"
        )
    lines.append(
        "| the whole machine (/proc/stat, every process, others' too) | "
        + " | ".join(f"{c.median('machine'):.3f}" for c in cases)
        + " |"
    )
    return "\n".join(lines)


def summary(cases: list[Case], clients: int) -> str:
    lines = [
        "| stand-in latency | sender in flight | clients | seconds to the last `sent` | messages/s "
        "| `bench.sender` (same latency, in flight) | rate against it | CPU a message, total "
        "| targets met | `bench.sender` logging at INFO | rate against that |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for c in cases:
        ratio = statistics.median(c.ratios())
        cpu = c.median("total")
        met = ratio >= 0.7 and cpu <= 0.3
        lines.append(
            f"| {c.latency_ms} ms | {c.in_flight} | {clients:,} | {c.median('seconds'):.1f} "
            f"| **{c.median('rate'):,.0f}/s** | {c.median('sender'):,.0f}/s | {ratio:.0%} "
            f"| **{cpu:.3f} ms** | {'yes' if met else 'NO'} | {c.median('sender_logged'):,.0f}/s "
            f"| {statistics.median(c.logged_ratios()):.0%} |"
        )
    return "\n".join(lines)


def rounds_text(cases: list[Case], first: int = 1) -> str:
    out = []
    for c in cases:
        for i, r in enumerate(c.rounds, first):
            lines = ", ".join(f"{name} {n / r.clients:.2f}" for name, n in sorted(r.lines.items()))
            out.append(
                f"- {c.latency_ms} ms, round {i}: {r.seconds:.1f} s ({r.rate:,.0f}/s; first `sent` after "
                f"{r.first_sent_after:.1f} s) against `bench.sender` {r.sender:,.0f}/s (at INFO "
                f"{r.sender_logged:,.0f}/s); CPU a message "
                f"{r.per_message_ms(r.total):.3f} ms; log lines a message: {lines}; load average "
                f"{r.load_before} before, {r.load_after} after"
            )
    return "\n".join(out)


def write_section(cases: list[Case], clients: int) -> None:
    body = (
        "Command: `make bench` (runs `uv run --frozen python -m bench.e2e`). Every service as its own "
        "process, started the way `make run` starts them: `scripts.procfile` runs the api, scheduler, "
        "sender, reporter and probe stand-in from a Procfile with default settings (logs at INFO, readable "
        "lines) and relays their output through one pipe, which the benchmark reads. The machine's "
        "PostgreSQL and RabbitMQ, "
        f"a database and a namespace of its own. {clients:,} clients over 30 timezones are inserted first "
        "(not timed); then one mailing to all of them, no window, is created through the API. Seconds: from "
        "that request to the last `sent` (`max(sent_at)`). CPU: `utime + stime` from /proc of each process "
        "from the request until the reporter has recorded every outcome, divided by the messages sent; "
        "PostgreSQL is every process of the cluster (the postmaster's reaped children included, and any "
        "other work on the cluster meanwhile: this machine is shared, so the backends of this run's "
        "database are also given, split by the service whose connection each serves, found by its client "
        "port; `other` is the benchmark's own polling), RabbitMQ its `beam.smp` (with the same caveat). "
        "`bench.sender` (its own stand-in, "
        "logging at WARNING, the sender in the benchmark's process) is measured for the same latency and "
        f"in-flight count between the rounds, {SENDER_MESSAGES:,} messages a round. Medians of "
        f"{len(cases[0].rounds)} rounds. Targets: the whole system's CPU a delivered message at most "
        "0.3 ms, and the end-to-end rate at least 70% of `bench.sender`'s. For comparison, not a target, "
        "the same `bench.sender` round is also run as a service logs (in a process of its own, at INFO, "
        "its per-call line through a pipe the benchmark drains), as the end-to-end run's sender "
        "does.\n\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({os.cpu_count()} cores, everything on the "
        "same machine).\n\n"
        f"{summary(cases, clients)}\n\n"
        "CPU a delivered message, ms (medians of the rounds):\n\n"
        f"{cpu_table(cases)}\n\n"
        f"{rounds_text(cases)}\n"
    )
    rewrite_section("End to end", body)


async def main_async(args: argparse.Namespace, base: str) -> int:
    await wait_healthy(f"{base}/healthz", within=10)
    token = make_token(SECRET)
    in_flight = int(SenderSettings.model_fields["max_in_flight"].default)
    cases = [Case(latency, in_flight) for latency in args.latency]
    for i in range(args.rounds):
        for case in cases:
            profile = None if args.profile is None else args.profile / f"{case.latency_ms}ms-round{i + 1}"
            result = await e2e_round(case.latency_ms, args.clients, args.relay, profile)
            result.sender = await sender_round(base, token, case.latency_ms, in_flight, SENDER_MESSAGES)
            result.sender_logged = await logged_sender_round(
                base, case.latency_ms, in_flight, SENDER_MESSAGES
            )
            case.rounds.append(result)
            print(rounds_text([Case(case.latency_ms, in_flight, [result])], first=i + 1), flush=True)
            print(cpu_table([Case(case.latency_ms, in_flight, [result])]), flush=True)
    print(summary(cases, args.clients))
    print(cpu_table(cases))
    if args.write and args.profile is None and args.relay == RELAY:
        write_section(cases, args.clients)
    met = all(statistics.median(c.ratios()) >= 0.7 and c.median("total") <= 0.3 for c in cases)
    return 0 if met else 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--latency", type=int, nargs="+", default=list(LATENCIES_MS))
    parser.add_argument(
        "--relay", choices=("procfile", "honcho"), default=RELAY, help=f"what runs the services ({RELAY})"
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy each process into this folder")
    parser.add_argument("--no-write", dest="write", action="store_false", help="leave docs/benchmarks.md")
    args = parser.parse_args()
    configure_logging("bench", level="WARNING")
    with stand_in() as base:
        code = uvloop.run(main_async(args, base))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
