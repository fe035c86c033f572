"""`python -m bench.sender`: sender throughput against the stand-in, next to the ceilings of the same run.

Ceilings: a bare loop of the same HTTP client (`services.sender.http`) against the same stand-in, and a
bare consume + ack of the same AMQP messages. The sender runs in this process (logging at WARNING, so
the per-call log line costs nothing); the stand-in runs as its own process.

`python -m bench.sender --round BASE LATENCY_MS IN_FLIGHT MESSAGES` runs one sender round against a
stand-in already running at BASE, logging as a service does (INFO, readable lines, on stderr), and prints
its rate: `bench.e2e` runs it with stderr a pipe it drains, for a figure of the sender as `make run` runs
it beside the ceiling's (`logged_sender_round`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import psycopg
import uvloop
from prometheus_client import CollectorRegistry
from psycopg import sql

from bench.chaos import free_port
from bench.report import rewrite_section
from services.probe_stub.token import make_token
from services.sender.bootstrap import ProviderFactory, build_sender
from services.sender.metrics import SenderMetrics
from services.sender.provider import ProbeClient, make_client
from services.sender.settings import SenderSettings
from shared.broker import Publisher, confirm_channel, connect
from shared.contracts import SendItem, SendMessages
from shared.domain.statuses import MailingStatus, MessageStatus
from shared.logging import configure_logging
from shared.migrate import upgrade
from shared.service import settle_heap
from shared.topology import Topology, declare, delete

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("MAILING_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("MAILING_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# As the scheduler sends them by default (MAILING_SCHEDULER_MESSAGES_PER_EVENT).
PER_EVENT = 500
# RabbitMQ's usual sweet spot for a consumer of one message per delivery.
AMQP_CEILING_PREFETCH = 300
# Each case is measured this many times, ceilings and sender in turn; the table gives the medians.
ROUNDS = 9
SECRET = "local-probe-secret"
# How often the end of a run is looked for; small against the seconds a run takes.
POLL_SECONDS = 0.01


@dataclass
class Row:
    """One case, measured ROUNDS times in turn (ceilings, then sender), so drift hits both alike."""

    latency_ms: int
    in_flight: int
    messages: int
    http: list[float] = field(default_factory=list)
    amqp: list[float] = field(default_factory=list)
    senders: list[float] = field(default_factory=list)

    @property
    def http_ceiling(self) -> float:
        return statistics.median(self.http)

    @property
    def amqp_ceiling(self) -> float:
        return statistics.median(self.amqp)

    @property
    def sender(self) -> float:
        return statistics.median(self.senders)

    def ratios(self) -> list[float]:
        """Each round's sender against that round's own lower ceiling."""
        return [s / min(h, a) for h, a, s in zip(self.http, self.amqp, self.senders, strict=True)]

    @property
    def target(self) -> tuple[str, bool]:
        """The goal as text, and whether it is met.

        At 0 ms the goal is checked round by round: each round's sender against that round's own lower
        ceiling, and the median of those ratios. The rounds are interleaved so that the host's drift
        (up to 2x between runs here) hits a round's three figures alike; the ratio of the medians would
        pair a sender and a ceiling measured minutes apart. Both are printed."""
        if self.latency_ms == 0:
            ratio = statistics.median(self.ratios())
            of_medians = self.sender / min(self.http_ceiling, self.amqp_ceiling)
            text = f"70% of the lower ceiling: median of the rounds {ratio:.0%}"
            return f"{text} (ratio of the medians {of_medians:.0%})", ratio >= 0.7
        goal = 0.9 * self.in_flight / (self.latency_ms / 1000)
        return f"90% of {self.in_flight}/{self.latency_ms / 1000:g} s = {goal:,.0f}/s", self.sender >= goal

    def rounds(self) -> str:
        """Each round's sender against that round's own lower ceiling (or the fixed goal)."""
        if self.latency_ms == 0:
            return "; ".join(
                f"{sender:,.0f}/s = {ratio:.0%} of {min(http, amqp):,.0f}/s"
                f" (HTTP {http:,.0f}, AMQP {amqp:,.0f})"
                for http, amqp, sender, ratio in zip(
                    self.http, self.amqp, self.senders, self.ratios(), strict=True
                )
            )
        return "; ".join(f"{sender:,.0f}/s" for sender in self.senders)


async def stub_faults(base: str, **faults: float) -> None:
    async with aiohttp.ClientSession() as http, http.put(f"{base}/_stub/faults", json=faults) as r:
        r.raise_for_status()
    async with aiohttp.ClientSession() as http, http.post(f"{base}/_stub/reset") as r:
        r.raise_for_status()
    async with aiohttp.ClientSession() as http, http.put(f"{base}/_stub/faults", json=faults) as r:
        r.raise_for_status()


async def http_ceiling(base: str, token: str, total: int, in_flight: int) -> float:
    client = make_client(base, token, 5.0, in_flight)
    next_id = iter(range(10**9, 10**9 + total))

    async def worker() -> None:
        for msg_id in next_id:
            body = f'{{"id": {msg_id}, "phone": 79000000000, "text": "bench"}}'.encode()
            await client.post(f"/v1/send/{msg_id}", body)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return total / (time.perf_counter() - started)
    finally:
        await client.close()


def command(ids: range, mailing_id: int) -> SendMessages:
    return SendMessages(messages=[SendItem(message_id=i, mailing_id=mailing_id, client_id=i) for i in ids])


async def publish_commands(topology: Topology, first: int, total: int, mailing_id: int) -> None:
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)
        chunks = [range(i, min(i + PER_EVENT, first + total)) for i in range(first, first + total, PER_EVENT)]
        await Publisher(work).publish_many((command(ids, mailing_id), topology.send_key) for ids in chunks)


async def amqp_ceiling(topology: Topology, total: int, prefetch: int) -> float:
    """Consume + ack of one AMQP message per SMS: what bounds a sender that does not batch."""
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)
        for first in range(1, total + 1, 1000):
            ids = range(first, min(first + 1000, total + 1))
            await Publisher(work).publish_many((command(range(i, i + 1), 1), topology.send_key) for i in ids)
    events = total
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(topology.send_queue)
        done = asyncio.Event()
        seen = 0
        started = time.perf_counter()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            SendMessages.model_validate_json(message.body)
            await message.ack()
            seen += 1
            if seen == events:
                done.set()

        await queue.consume(on_message)
        await done.wait()
        return total / (time.perf_counter() - started)


def fresh_database() -> tuple[str, str]:
    name = f"mailing_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = PG_ADMIN.rsplit("/", 1)[0]
    upgrade(f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}")
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def seed(dsn: str, total: int) -> tuple[int, int]:
    """One running mailing and `total` queued messages to as many clients; returns (mailing, first id)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        mailing = conn.execute(
            "INSERT INTO mailings (text, start_at, end_at, status)"
            " VALUES ('bench', now() - interval '1 minute', now() + interval '1 day',"
            f" {MailingStatus.RUNNING.sql}) RETURNING id"
        ).fetchone()
        assert mailing is not None
        conn.execute(
            "INSERT INTO clients (phone, operator_code, timezone)"
            " SELECT (79000000000 + n)::text, '900', 'Europe/Moscow' FROM generate_series(1, %s) AS n",
            (total,),
        )
        conn.execute(
            "INSERT INTO messages (mailing_id, client_id, status, not_before, queued_at)"
            f" SELECT %s, id, {MessageStatus.QUEUED.sql}, now(), now() FROM clients ORDER BY id",
            (mailing[0],),
        )
        first = conn.execute("SELECT min(id) FROM messages").fetchone()
        assert first is not None
        # Settle the bulk load first, as a table in service would be: otherwise autovacuum, the hint
        # bits of 60,000 new rows and a checkpoint land in the middle of the measurement.
        conn.execute("VACUUM ANALYZE clients, mailings, messages")
        conn.execute("CHECKPOINT")
        return int(mailing[0]), int(first[0])


def sent_so_far(metrics: SenderMetrics) -> float:
    """The sender's own count of committed `sent` rows (this one metric only: cheap to read often)."""
    for family in metrics.outcomes.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("status") == MessageStatus.SENT:
                return sample.value
    return 0.0


async def sender_rate(
    base: str,
    token: str,
    total: int,
    in_flight: int,
    namespace: str,
    make_provider: ProviderFactory = ProbeClient,
    cpu_per_message: list[float] | None = None,
) -> float:
    """Messages a second; `cpu_per_message` gets this process's CPU seconds a message over the same span
    (the sender's own: the stand-in runs as its own process)."""
    name, dsn = fresh_database()
    try:
        mailing, first = seed(dsn, total)
        topology = Topology(namespace)
        await publish_commands(topology, first, total, mailing)
        settings = SenderSettings(
            _env_file=None,
            database_url=dsn.replace("postgresql://", "postgresql+psycopg://", 1),
            amqp_url=AMQP_URL,
            amqp_namespace=namespace,
            probe_base_url=base,
            probe_token=token,
            max_in_flight=in_flight,
        )
        app = build_sender(
            settings, registry=CollectorRegistry(), serve_ops=False, make_provider=make_provider
        )
        await app.start()
        settle_heap()  # as `serve` does once a service's process has started it
        # Throughput, not start-up: the clock starts once the sender consumes. The end is read from
        # the sender's own count of committed `sent` rows, so measuring puts no load on PostgreSQL.
        started, cpu = time.perf_counter(), time.process_time()
        try:
            while sent_so_far(app.metrics) < total:  # noqa: ASYNC110 - a count, not an event
                await asyncio.sleep(POLL_SECONDS)
            rate = total / (time.perf_counter() - started)
            if cpu_per_message is not None:
                cpu_per_message.append((time.process_time() - cpu) / total)
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    f"SELECT count(*) FROM messages WHERE status = {MessageStatus.SENT.sql}"
                ).fetchone()
            if row is None or row[0] != total:
                raise RuntimeError(f"the sender counted {total} sent, the database holds {row}")
            return rate
        finally:
            await app.stop()
    finally:
        drop_database(name)


@contextlib.asynccontextmanager
async def private_topology(prefix: str = "bench") -> AsyncIterator[Topology]:
    """Every exchange and queue of a namespace of its own, deleted again at the end."""
    topology = Topology(f"{prefix}-{uuid.uuid4().hex[:8]}")
    connection = await connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await declare(channel, topology)
        try:
            yield topology
        finally:
            await delete(channel, topology)


async def sender_round(base: str, token: str, latency_ms: int, in_flight: int, total: int) -> float:
    """One sender figure as `bench.sender` measures it, in a namespace of its own (`bench.e2e` pairs it
    with its own rounds)."""
    async with private_topology() as topology:
        await stub_faults(base, latency_ms=latency_ms)
        return await sender_rate(base, token, total, in_flight, topology.namespace)


async def run_case(base: str, token: str, latency_ms: int, in_flight: int, total: int) -> Row:
    row = Row(latency_ms, in_flight, total)
    async with private_topology() as topology:
        for _ in range(ROUNDS):
            await stub_faults(base, latency_ms=latency_ms)
            row.http.append(await http_ceiling(base, token, total, in_flight))
            row.amqp.append(await amqp_ceiling(topology, total, prefetch=AMQP_CEILING_PREFETCH))
            await stub_faults(base, latency_ms=latency_ms)
            row.senders.append(await sender_rate(base, token, total, in_flight, topology.namespace))
    return row


def table(rows: list[Row]) -> str:
    lines = [
        "| provider latency | in flight | messages a run | HTTP client ceiling | AMQP consume ceiling "
        "| sender | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        what, met = r.target
        lines.append(
            f"| {r.latency_ms} ms | {r.in_flight} | {r.messages:,} | {r.http_ceiling:,.0f}/s "
            f"| {r.amqp_ceiling:,.0f}/s | **{r.sender:,.0f}/s** | {what} | {'yes' if met else 'NO'} |"
        )
    lines.append("")
    lines += [f"- {r.latency_ms} ms, round by round: {r.rounds()}" for r in rows]
    return "\n".join(lines)


def write_section(markdown: str) -> None:
    section = (
        "Command: `make bench` (runs `uv run --frozen python -m bench.sender`). One sender process (uvloop, "
        f"one HTTP client, logging at WARNING) consumes `SendMessages` of {PER_EVENT} messages each (the "
        "scheduler's default) against the stand-in in its own process. The ceilings are measured in the same "
        "run: a bare loop of the same HTTP client (`services.sender.http`, same settings) at the same "
        "in-flight count against the same stand-in, and a bare consume + ack of the same number of AMQP "
        f"messages as there are SMS, one body per message (prefetch {AMQP_CEILING_PREFETCH}): what a sender "
        "without batching is bound by. The sender's figure covers claim, call, batched status write and ack, "
        "from the moment it consumes (its start-up excluded) to the last committed `sent` row (the sender's "
        "own count; the database is checked once at the end). The seeded tables are vacuumed and "
        f"checkpointed before each sender run. Each case runs {ROUNDS} rounds of HTTP ceiling, AMQP ceiling, "
        "sender in turn, so that the machine's drift (this host varies by +-15% from one second to the "
        "next) hits all three alike; the table gives the medians of each, and the 0 ms target is checked on "
        "the median of the rounds' own ratios (each round's sender against that round's lower ceiling).\n\n"
        f"Last run ({time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, stand-in, PostgreSQL and RabbitMQ on the same machine):\n\n{markdown}\n\n"
    )
    rewrite_section("Sender", section)


async def wait_healthy(url: str, within: float = 30.0) -> None:
    """Until `url` answers 200 (a service's /healthz), at most `within` seconds."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {within} s")


@contextlib.contextmanager
def stand_in() -> Iterator[str]:
    """The stand-in as `bench.sender` runs it: its own process on a free port, logging at WARNING;
    yields its base URL (wait for it with `wait_healthy`)."""
    port = free_port()
    env = {**os.environ, "MAILING_PROBE_PORT": str(port), "MAILING_PROBE_LOG_LEVEL": "WARNING"}
    stub = subprocess.Popen([sys.executable, "-m", "services.probe_stub"], env=env, cwd=ROOT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stub.terminate()
        stub.wait(timeout=10)


async def logged_sender_round(base: str, latency_ms: int, in_flight: int, total: int) -> float:
    """`sender_round` in a child process logging at INFO, its stderr a pipe drained here: the sender's
    figure with its per-call line written, as a service writes it."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.sender",
        "--round",
        base,
        str(latency_ms),
        str(in_flight),
        str(total),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    logged, lines, tail = child.stderr, 0, b""

    async def drain() -> None:
        nonlocal lines, tail
        while block := await logged.read(1 << 16):
            lines += block.count(b"\n")
            tail = (tail + block)[-4096:]

    try:
        draining = asyncio.create_task(drain())
        out = await child.stdout.read()
        await draining
        code = await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if code != 0:
        said = tail.decode(errors="replace")
        raise RuntimeError(f"the logged sender round failed (exit {code}): {out!r}\n{said}")
    if lines < total:
        raise RuntimeError(f"the logged sender round wrote {lines} lines for {total} messages")
    return float(out)


async def round_main(base: str, latency_ms: int, in_flight: int, total: int) -> None:
    configure_logging("sender", level="INFO")
    print(await sender_round(base, make_token(SECRET), latency_ms, in_flight, total))


async def main_async(base: str) -> int:
    configure_logging("bench", level="WARNING")
    await wait_healthy(f"{base}/healthz", within=10)
    token = make_token(SECRET)
    rows = [
        await run_case(base, token, latency_ms=0, in_flight=100, total=30_000),
        await run_case(base, token, latency_ms=50, in_flight=100, total=15_000),
    ]
    markdown = table(rows)
    print(markdown)
    write_section(markdown)
    return 0 if all(r.target[1] for r in rows) else 1


def main() -> None:
    if sys.argv[1:2] == ["--round"]:
        base, latency_ms, in_flight, total = sys.argv[2:6]
        uvloop.run(round_main(base, int(latency_ms), int(in_flight), int(total)))
        return
    with stand_in() as base:
        code = uvloop.run(main_async(base))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
