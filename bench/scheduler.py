"""`python -m bench.scheduler`: expansion and dispatch of a 1,000,000-client mailing against raw ceilings.

Uses its own database (`mailing_bench`) and a random RabbitMQ namespace, both removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from prometheus_client import CollectorRegistry
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.report import DOC, ZONES, rewrite_section
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.publisher import AmqpSchedulerPublisher
from services.scheduler.scheduler import Scheduler
from services.scheduler.settings import SchedulerSettings
from shared.broker import Publisher, amqp_message, confirm_channel, connect
from shared.contracts import SendItem, SendMessages
from shared.db import make_engine
from shared.domain.statuses import MailingStatus, MessageStatus
from shared.logging import configure_logging
from shared.migrate import upgrade
from shared.topology import declare, delete, exchanges

CLIENTS = 1_000_000
RAW_PUBLISHES = 50_000
PUBLISH_WINDOW = 1_000


@dataclass(frozen=True)
class Row:
    stage: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def _admin_dsn(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql", database="postgres")
    return url.render_as_string(hide_password=False)


def _recreate(database_url: str, name: str) -> None:
    with psycopg.connect(_admin_dsn(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop(database_url: str, name: str) -> None:
    with psycopg.connect(_admin_dsn(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def _seed(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with (
            conn.cursor() as cur,
            cur.copy("COPY clients (phone, operator_code, tag, timezone) FROM STDIN") as copy,
        ):
            for i in range(CLIENTS):
                await copy.write_row((str(79000000000 + i), "900", "", ZONES[i % len(ZONES)]))
        await conn.commit()
        await conn.execute("ANALYZE clients")
        await conn.commit()


async def _raw_publish_ceiling(amqp_url: str, namespace: str) -> Row:
    connection = await connect(amqp_url)
    async with connection:
        channel = await confirm_channel(connection)
        queue = await channel.declare_queue(f"{namespace}.raw", auto_delete=False)
        body = SendMessages(messages=[SendItem(message_id=1, mailing_id=1, client_id=1)]).encode()
        started = time.perf_counter()
        for offset in range(0, RAW_PUBLISHES, PUBLISH_WINDOW):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(amqp_message(body), queue.name)
                    for _ in range(min(PUBLISH_WINDOW, RAW_PUBLISHES - offset))
                )
            )
        elapsed = time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
    return Row("raw: aio-pika publish with confirms, one body per message", RAW_PUBLISHES, elapsed)


async def run() -> list[Row]:
    base = SchedulerSettings()
    name = "mailing_bench"
    database_url = make_url(base.database_url).set(database=name).render_as_string(hide_password=False)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    settings = base.model_copy(
        update={"database_url": database_url, "amqp_namespace": namespace, "max_outstanding": 0}
    )
    _recreate(database_url, name)
    upgrade(database_url)
    engine = make_engine(settings)
    connection = await connect(settings.amqp_url)
    rows: list[Row] = []
    try:
        print(f"seeding {CLIENTS:,} clients over {len(ZONES)} timezones ...", flush=True)
        await _seed(settings.psycopg_dsn)
        now = datetime.now(UTC).replace(microsecond=0)
        end = now + timedelta(days=2)
        async with engine.begin() as conn:
            mailing = (
                await conn.execute(
                    text(
                        # Paused while it is expanded, so the expansion only writes (a running
                        # mailing's due messages go to the sender chunk by chunk as they are written);
                        # resumed for the dispatch.
                        "INSERT INTO mailings (text, start_at, end_at, window_start, window_end, status)"
                        f" VALUES ('bench', :s, :e, '09:00', '21:00', {MailingStatus.PAUSED.sql})"
                        " RETURNING id"
                    ),
                    {"s": now, "e": end},
                )
            ).scalar_one()

        started = time.perf_counter()
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO messages (mailing_id, client_id, status, not_before)"
                    f" SELECT :m, id, {MessageStatus.PENDING.sql}, :nb FROM clients"
                ),
                {"m": mailing, "nb": now},
            )
        rows.append(
            Row("raw: plain INSERT ... SELECT of the same rows", CLIENTS, time.perf_counter() - started)
        )
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE messages"))

        topology = settings.topology()
        channel = await confirm_channel(connection)
        await declare(channel, topology)
        events, work = await exchanges(channel, topology)
        publisher = AmqpSchedulerPublisher(Publisher(work), Publisher(events), topology)
        scheduler = Scheduler(engine, publisher, settings, SchedulerMetrics(CollectorRegistry()))

        started = time.perf_counter()
        await scheduler.process_mailing(mailing, now)
        rows.append(
            Row(
                "scheduler: expansion (30 timezones, 09:00-21:00 window)",
                CLIENTS,
                time.perf_counter() - started,
            )
        )

        # A day later every timezone has had its window open, so every message is due.
        later = now + timedelta(days=1, hours=23)
        async with engine.begin() as conn:
            resume = f"UPDATE mailings SET status = {MailingStatus.RUNNING.sql} WHERE id = :m"
            await conn.execute(text(resume), {"m": mailing})
        started = time.perf_counter()
        dispatched = await scheduler.dispatch(later)
        rows.append(
            Row(
                f"scheduler: dispatch ({settings.dispatch_batch} rows a claim, {settings.messages_per_event}"
                " per AMQP message, confirmed)",
                dispatched,
                time.perf_counter() - started,
            )
        )
        rows.append(await _raw_publish_ceiling(settings.amqp_url, namespace))
        await delete(channel, topology)
    finally:
        await connection.close()
        await engine.dispose()
        _drop(database_url, name)
    return rows


def _table(rows: list[Row]) -> str:
    lines = ["| stage | messages | seconds | messages/s |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.stage} | {row.rows:,} | {row.seconds:.2f} | {row.rate:,.0f} |")
    raw_insert, expansion, dispatch, raw_publish = rows
    lines += [
        "",
        f"- expansion takes {expansion.seconds / raw_insert.seconds:.2f}x the raw insert (target: within 2x)",
        f"- dispatch is {dispatch.rate / raw_publish.rate:.1f}x the one-body-per-message publish ceiling"
        f" (target: at least 5x); that ceiling extrapolated to {CLIENTS:,} messages:"
        f" {CLIENTS / raw_publish.rate:.0f} s",
    ]
    return "\n".join(lines)


def _write_doc(table: str) -> None:
    section = (
        "Command: `make bench` (runs `uv run --frozen python -m bench.scheduler`). A mailing over 1,000,000\n"
        "clients spread over 30 timezones with a 09:00-21:00 window: its expansion into messages (a chunk\n"
        "of 5,000 clients a transaction; the mailing is paused meanwhile, so that the stage only writes:\n"
        "a running mailing's due messages go to the sender as each chunk commits) and the dispatch of all\n"
        "of them to the send queue, next to the raw ceilings measured in the same run.\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n" + table + "\n"
    )
    rewrite_section("Scheduler", section)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler", description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md")
    args = parser.parse_args()
    # Per-message log lines are part of production, but this measures the machinery: as in bench.sender.
    configure_logging("bench", level="WARNING")
    rows = asyncio.run(run())
    table = _table(rows)
    print(table)
    if not args.no_write:
        _write_doc(table)
        print(f"written to {DOC}")


if __name__ == "__main__":
    main()
