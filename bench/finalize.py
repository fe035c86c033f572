"""`python -m bench.finalize`: ending mailings of 1,000,000 open messages, with the memory it takes.

The scheduler expires every open message of a mailing past its end and cancels those of a cancelled
mailing, a chunk a transaction; the API's cancel counts what it cancelled in SQL. Each stage reports its
time and how far the process's resident memory rose above where it began. Uses its own database
(`mailing_bench_finalize`) and a random RabbitMQ namespace, both removed at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.report import DOC, rewrite_section
from bench.scheduler import _drop, _recreate
from services.api.mailings_service import cancel_mailing
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.publisher import AmqpSchedulerPublisher
from services.scheduler.scheduler import Scheduler
from services.scheduler.settings import SchedulerSettings
from shared.broker import Publisher, confirm_channel, connect
from shared.db import make_engine, make_sessionmaker, unit_of_work
from shared.domain.statuses import OPEN_MESSAGE_STATUSES, MailingStatus, MessageStatus
from shared.logging import configure_logging
from shared.migrate import upgrade
from shared.topology import declare, delete, exchanges

MESSAGES = 1_000_000
OPEN_STATUSES = tuple(s.value for s in MessageStatus if s in OPEN_MESSAGE_STATUSES)


async def seed_clients(conn: AsyncConnection, count: int) -> None:
    await conn.execute(
        text(
            "INSERT INTO clients (phone, operator_code, tag, timezone)"
            " SELECT (79000000000 + g)::text, '900', '', 'UTC' FROM generate_series(1, :n) g"
        ),
        {"n": count},
    )


async def seed_open_mailing(conn: AsyncConnection, count: int, now: datetime, *, status: str) -> int:
    """A mailing that ran yesterday with `count` open messages (pending, queued and retrying in turn),
    already expanded, so the scheduler goes straight to ending them."""
    mailing_id = (
        await conn.execute(
            text(
                "INSERT INTO mailings (text, start_at, end_at, status, expanded_at, expansion_signature)"
                " VALUES ('bench', :s, :e, :status, :s, 'bench') RETURNING id"
            ),
            {"s": now - timedelta(days=1), "e": now - timedelta(minutes=1), "status": status},
        )
    ).scalar_one()
    await conn.execute(
        text(
            "INSERT INTO messages (mailing_id, client_id, status, not_before, queued_at, next_attempt_at,"
            " attempts)"
            " SELECT :m, c.id, s.status, :s,"
            f" CASE WHEN s.status <> {MessageStatus.PENDING.sql} THEN :s END,"
            f" CASE WHEN s.status = {MessageStatus.RETRYING.sql} THEN :s END,"
            f" CASE WHEN s.status = {MessageStatus.RETRYING.sql} THEN 1 ELSE 0 END"
            " FROM (SELECT id FROM clients ORDER BY id LIMIT :n) c"
            " CROSS JOIN LATERAL (SELECT (CAST(:statuses AS text[]))[1 + c.id % 3] AS status) s"
        ),
        {"m": mailing_id, "s": now - timedelta(days=1), "n": count, "statuses": list(OPEN_STATUSES)},
    )
    return int(mailing_id)


@dataclass
class MemoryWatch:
    """Peak resident memory of this process over a stage, above where the stage began (KiB). Linux
    resets the peak on request (`clear_refs`), so each stage is measured on its own."""

    start_kib: int = 0
    peak_kib: int = 0

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def begin(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")
        self.start_kib = self._status("VmRSS")

    def end(self) -> None:
        self.peak_kib = self._status("VmHWM")

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024


@dataclass(frozen=True)
class Row:
    stage: str
    rows: int
    seconds: float
    rss_growth_mib: float
    rss_peak_mib: float


@asynccontextmanager
async def measured(stage: str, rows: list[Row], count: int) -> AsyncIterator[None]:
    watch = MemoryWatch()
    watch.begin()
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    watch.end()
    rows.append(Row(stage, count, elapsed, watch.growth_mib, watch.peak_kib / 1024))


async def run() -> tuple[list[Row], SchedulerSettings]:
    base = SchedulerSettings()
    name = "mailing_bench_finalize"
    database_url = make_url(base.database_url).set(database=name).render_as_string(hide_password=False)
    settings = base.model_copy(
        update={"database_url": database_url, "amqp_namespace": f"bench-{uuid.uuid4().hex[:8]}"}
    )
    _recreate(database_url, name)
    upgrade(database_url)
    engine = make_engine(settings)
    connection = await connect(settings.amqp_url)
    rows: list[Row] = []
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        print(
            f"seeding {MESSAGES:,} clients and three mailings of {MESSAGES:,} open messages ...", flush=True
        )
        async with engine.begin() as conn:
            await seed_clients(conn, MESSAGES)
            ended = await seed_open_mailing(conn, MESSAGES, now, status=MailingStatus.RUNNING)
            cancelled = await seed_open_mailing(conn, MESSAGES, now, status=MailingStatus.CANCELLED)
            running = await seed_open_mailing(conn, MESSAGES, now, status=MailingStatus.RUNNING)
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE messages"))

        topology = settings.topology()
        channel = await confirm_channel(connection)
        await declare(channel, topology)
        events, work = await exchanges(channel, topology)
        publisher = AmqpSchedulerPublisher(Publisher(work), Publisher(events), topology)
        scheduler = Scheduler(engine, publisher, settings, SchedulerMetrics(CollectorRegistry()))
        chunk = f"{settings.dispatch_batch:,} a chunk, {settings.messages_per_event} outcomes an event"

        async with measured(f"scheduler: a mailing past its end, all expired ({chunk})", rows, MESSAGES):
            await scheduler.process_mailing(ended, now)
        async with measured(f"scheduler: a cancelled mailing, all cancelled ({chunk})", rows, MESSAGES):
            await scheduler.process_mailing(cancelled, now)
        sessions = make_sessionmaker(engine)
        async with (
            measured("API: `POST /mailings/{id}/cancel` (one statement, counted in SQL)", rows, MESSAGES),
            unit_of_work(sessions) as session,
        ):
            await cancel_mailing(session, running, now)

        async with engine.connect() as conn:
            left = (
                await conn.execute(
                    text("SELECT count(*) FROM messages WHERE status = ANY(CAST(:open AS text[]))"),
                    {"open": list(OPEN_STATUSES)},
                )
            ).scalar_one()
        if left:
            raise RuntimeError(f"{left} messages are still open after the run")
        await delete(channel, topology)
    finally:
        await connection.close()
        await engine.dispose()
        _drop(database_url, name)
    return rows, settings


def _table(rows: list[Row]) -> str:
    lines = [
        "| stage | messages | seconds | messages/s | peak RSS growth | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.stage} | {row.rows:,} | {row.seconds:.2f} | {row.rows / row.seconds:,.0f}"
            f" | {row.rss_growth_mib:.1f} MiB | {row.rss_peak_mib:.0f} MiB |"
        )
    return "\n".join(lines)


def _write_doc(table: str) -> None:
    section = (
        "Command: `make bench` (runs `uv run --frozen python -m bench.finalize`). Three mailings of\n"
        "1,000,000 open messages each (pending, queued and retrying in turn) in a fresh database: the\n"
        "scheduler ends the first (past its end: expired) and the second (cancelled) a chunk a transaction,\n"
        "publishing each chunk's `message.finalized` events with confirms before its commit; the API's\n"
        "cancel ends the third in one statement that returns only the count. Peak RSS growth is the rise\n"
        "of the process's resident memory over the stage (`VmHWM`, reset before each stage, less `VmRSS`\n"
        "at its start): what the stage holds at once; 0.0 means it fitted in memory the process had\n"
        "already taken. Logging at WARNING, as in the other benchmarks. For comparison, one chunk of\n"
        "everything (`MAILING_SCHEDULER_DISPATCH_BATCH=1000000`, what the single statement before\n"
        "2026-11-30 did) took 66.7 s and +1,611 MiB to expire, 79.2 s and +1,393 MiB to cancel.\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n" + table + "\n"
    )
    rewrite_section("Ending mailings (memory)", section)


def main() -> None:
    configure_logging("bench", level="WARNING")
    rows, _ = asyncio.run(run())
    table = _table(rows)
    print(table)
    _write_doc(table)
    print(f"written to {DOC}")


if __name__ == "__main__":
    main()
