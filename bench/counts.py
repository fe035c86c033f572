"""`python -m bench.counts`: what the per-mailing status counts (migration 0007) cost the hot writes.

In its own database (`mailing_bench_counts_<random>`, dropped at the end), with the triggers on and off
(`ALTER TABLE messages DISABLE/ENABLE TRIGGER`), in interleaved rounds so the host's drift falls on both:
- the scheduler's expansion (`services.scheduler.store.insert_chunk`, all in one chunk) of 1,000,000 clients;
- the sender's claim and success write (`services.sender.store.Store.claim` / `write`, the real
  statements on the real connections) in batches of 1,000 messages of one mailing, with the update
  trigger as deployed and as first written (old and new rows joined by id);
- two senders writing successes of the same mailing at once, with the triggers off, with each writer on
  a slot of its own (as deployed), and with both forced onto one slot;
- one sender writing beside a dispatch-like transaction of the same mailing that stays open 100 ms after
  changing statuses (the scheduler publishes with confirms before it commits), on another slot and on
  the sender's own: the wait that slots avoid.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from bench.report import ZONES, rewrite_section
from services.api.mailings_service import mailing_stats_page, status_counts
from services.scheduler.planning import MailingPlan, plan_timezones
from services.scheduler.store import insert_chunk
from services.sender import outcome
from services.sender.checks import Claim
from services.sender.store import Store
from shared.db import make_engine
from shared.domain.statuses import MessageStatus
from shared.logging import configure_logging
from shared.migrate import ROOT, upgrade
from shared.settings import CommonSettings

T = TypeVar("T")

CLIENTS = 1_000_000
BATCH = 1_000
ROUNDS = 8
BATCHES_A_ROUND = 20
EXPANSION_ROUNDS = 3
CONCURRENT_BATCHES = 5
CONCURRENT_ROUNDS = 4
SENDER_MODES = ("off", "on", "joined")
# The dispatch-like transaction beside a sender: how many messages it changes, how long it stays open.
HELD_ROWS = 1_000
HOLD_SECONDS = 0.1
HELD_BATCHES = 20
MAILINGS = 1_000
READS = 20
TRIGGERS = ("messages_counts_insert", "messages_counts_update", "messages_counts_delete")
MIGRATION = ROOT / "shared" / "migrations" / "versions" / "0007_mailing_status_counts.py"


# The deployed update trigger aggregates the old and new rows apart; this was the first version, which
# joined them by id and kept only rows whose status changed. Measured beside it for the record.
_JOINED = """
    SELECT v.mailing_id, v.status, sum(v.delta) AS delta
    FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
    CROSS JOIN LATERAL (VALUES (o.mailing_id, o.status, -1), (n.mailing_id, n.status, 1))
        AS v(mailing_id, status, delta)
    WHERE o.status <> n.status OR o.mailing_id <> n.mailing_id
    GROUP BY v.mailing_id, v.status
"""


@dataclass(frozen=True)
class Row:
    stage: str
    off: float
    on: float
    cpu_off: float
    cpu_on: float
    unit: str


@dataclass(frozen=True)
class Contended:
    label: str
    rate: float
    latencies: list[float]

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migration_0007", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _admin_dsn(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql", database="postgres")
    return url.render_as_string(hide_password=False)


def _drop(database_url: str, name: str) -> None:
    with psycopg.connect(_admin_dsn(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _create(database_url: str, name: str) -> None:
    _drop(database_url, name)
    with psycopg.connect(_admin_dsn(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


class Db:
    """An autocommit psycopg connection for the bench's own set-up statements."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        self.conn = conn

    async def run(self, statement: str) -> None:
        await self.conn.execute(statement.encode())

    async def triggers(self, on: bool) -> None:
        action = "ENABLE" if on else "DISABLE"
        for name in TRIGGERS:
            await self.run(f"ALTER TABLE messages {action} TRIGGER {name}")

    async def check_counts(self) -> None:
        cur = await self.conn.execute(
            "(SELECT mailing_id, status, sum(count) FROM mailing_status_counts GROUP BY 1, 2"
            " HAVING sum(count) <> 0"
            " EXCEPT SELECT mailing_id, status, count(*) FROM messages GROUP BY 1, 2)"
            " UNION ALL (SELECT mailing_id, status, count(*) FROM messages GROUP BY 1, 2"
            " EXCEPT SELECT mailing_id, status, sum(count) FROM mailing_status_counts GROUP BY 1, 2)"
        )
        if await cur.fetchall():
            raise RuntimeError("mailing_status_counts differs from the messages")


async def _seed(db: Db) -> int:
    zones = "{" + ",".join(ZONES) + "}"
    await db.run(
        "INSERT INTO clients (phone, operator_code, tag, timezone)"
        f" SELECT (79000000000 + g)::text, '900', '', (CAST('{zones}' AS text[]))[1 + g % {len(ZONES)}]"
        f" FROM generate_series(1, {CLIENTS}) AS g"
    )
    await db.run("ANALYZE clients")
    cur = await db.conn.execute(
        "INSERT INTO mailings (text, start_at, end_at) VALUES ('bench', now(), now() + interval '2 days')"
        " RETURNING id"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(str(row[0]))


async def _queue_everything(db: Db) -> list[int]:
    # The last expansion may have run with the triggers off: the counts are rebuilt as 0007 backfills them.
    await db.run("DELETE FROM mailing_status_counts")
    await db.run(
        "INSERT INTO mailing_status_counts (mailing_id, status, slot, count)"
        " SELECT mailing_id, status, 0, count(*) FROM messages GROUP BY mailing_id, status"
    )
    await db.triggers(True)
    await db.run(f"UPDATE messages SET status = {MessageStatus.QUEUED.sql}, queued_at = now()")
    await db.run("VACUUM ANALYZE messages")
    cur = await db.conn.execute("SELECT id FROM messages ORDER BY id")
    return [int(str(r[0])) for r in await cur.fetchall()]


def _rotated(items: Sequence[T], n: int) -> list[T]:
    """Round n starts with item n: no mode always runs first (after a checkpoint, say)."""
    return [*items[n % len(items) :], *items[: n % len(items)]]


def _cpu(pid: int) -> float:
    """Seconds the backend `pid` has run on a CPU (PostgreSQL on this host): unlike the wall clock, not
    lengthened by waiting for a core the rest of the machine holds. NaN when it cannot be read."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


async def _pid(store: Store, which: str) -> int:
    connection = store._claims if which == "claim" else store._writes
    rows = await connection.fetch("SELECT pg_backend_pid()", {})
    return int(str(rows[0][0]))


async def _use_updated(db: Db, mode: str, slot: str | None = None) -> None:
    """The update trigger as deployed, off, or with the old and new rows joined by id."""
    await db.triggers(mode != "off")
    migration = _migration()
    deltas = _JOINED if mode == "joined" else migration._UPDATED
    body = migration._APPLY.format(slot=slot or migration._SLOT, deltas=deltas)
    await db.run(
        "CREATE OR REPLACE FUNCTION mailing_status_counts_updated() RETURNS trigger"
        f" LANGUAGE plpgsql AS $$ BEGIN {body}; RETURN NULL; END $$"
    )


class Times:
    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def add(self, mode: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(mode, []).append(wall)
        self.cpu.setdefault(mode, []).append(cpu)

    def row(self, stage: str, mode: str, unit: str, scale: float) -> Row:
        return Row(
            stage,
            statistics.median(self.wall["off"]) * scale,
            statistics.median(self.wall[mode]) * scale,
            statistics.median(self.cpu["off"]) * scale,
            statistics.median(self.cpu[mode]) * scale,
            unit,
        )


async def _expansion(settings: CommonSettings, db: Db, mailing: int) -> Row:
    engine = make_engine(settings)
    now = datetime.now(UTC)
    plan = MailingPlan(mailing, now, now + timedelta(days=2), None, (), ())
    times = Times()
    try:
        for n in range(EXPANSION_ROUNDS):
            for mode in _rotated(("off", "on"), n):
                await db.run("TRUNCATE messages")
                await db.run("CHECKPOINT")
                await db.triggers(mode == "on")
                async with engine.begin() as conn:
                    pid = int((await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one())
                    zones = plan_timezones(plan, ZONES, now)
                    cpu, started = _cpu(pid), time.perf_counter()
                    await insert_chunk(
                        conn, plan, zones, now, None, after_client_id=0, limit=CLIENTS, queue_first=0
                    )
                times.add(mode, time.perf_counter() - started, _cpu(pid) - cpu)
    finally:
        await engine.dispose()
    stage = f"scheduler: expansion `INSERT ... SELECT` of {CLIENTS:,} messages (`insert_chunk`, one chunk)"
    return times.row(stage, "on", "s", 1)


async def _sender(settings: CommonSettings, db: Db, ids: list[int]) -> tuple[list[Row], list[int]]:
    engine = make_engine(settings)
    store = Store(engine, settings, "bench.counts")
    claim, write = Times(), Times()
    try:
        # Connections opened and statements prepared before anything is timed.
        await store.claim(ids[:BATCH], 60.0)
        claim_pid, write_pid = await _pid(store, "claim"), await _pid(store, "write")
        offset = BATCH
        for n in range(ROUNDS + 1):  # the first round warms up and is not kept
            for mode in _rotated(SENDER_MODES, n):
                await _use_updated(db, mode)
                for _ in range(BATCHES_A_ROUND):
                    batch = ids[offset : offset + BATCH]
                    offset += BATCH
                    cpu, started = _cpu(claim_pid), time.perf_counter()
                    claims = await store.claim(batch, 60.0)
                    if n:
                        claim.add(mode, time.perf_counter() - started, _cpu(claim_pid) - cpu)
                    now = datetime.now(UTC)
                    cpu, started = _cpu(write_pid), time.perf_counter()
                    written = await store.write([outcome.sent(c, now) for c in claims])
                    if n:
                        write.add(mode, time.perf_counter() - started, _cpu(write_pid) - cpu)
                    if len(claims) != len(batch) or len(written) != len(batch):
                        raise RuntimeError(f"claimed {len(claims)}, wrote {len(written)} of {len(batch)}")
        await _use_updated(db, "on")
    finally:
        await store.close()
        await engine.dispose()
    claim_stage = f"sender: claim of {BATCH:,} messages (`Store.claim`, no status change)"
    write_stage = f"sender: success write of {BATCH:,} messages (`Store.write`)"
    rows = [
        claim.row(claim_stage, "on", "ms", 1000),
        write.row(write_stage, "on", "ms", 1000),
        claim.row(claim_stage + ", old and new rows joined by id", "joined", "ms", 1000),
        write.row(write_stage + ", old and new rows joined by id", "joined", "ms", 1000),
    ]
    return rows, ids[offset:]


async def _write_all(store: Store, batches: list[list[Claim]], latencies: list[float]) -> None:
    for batch in batches:
        started = time.perf_counter()
        now = datetime.now(UTC)
        await store.write([outcome.sent(c, now) for c in batch])
        latencies.append(time.perf_counter() - started)


async def _claimed(store: Store, ids: list[int]) -> list[list[Claim]]:
    return [await store.claim(ids[i : i + BATCH], 600.0) for i in range(0, len(ids), BATCH)]


async def _other_slot(store: Store, avoid: int) -> None:
    slots = int(_migration().SLOTS)
    while await _pid(store, "write") % slots == avoid % slots:
        await store.close()  # the next statement opens a new backend, with another pid


async def _two_senders(settings: CommonSettings, db: Db, ids: list[int]) -> tuple[list[Contended], list[int]]:
    """Two senders, each writing its own messages of the same mailing, BATCH at a time, at once."""
    engine = make_engine(settings)
    stores = [Store(engine, settings, "bench.counts.a"), Store(engine, settings, "bench.counts.b")]
    results: list[Contended] = []
    try:
        await _other_slot(stores[1], await _pid(stores[0], "write"))
        per_round = 2 * CONCURRENT_BATCHES * BATCH
        modes = (
            ("triggers off", "off", None),
            ("triggers on, each writer on a slot of its own (as deployed)", "on", None),
            ("triggers on, both writers on one slot", "on", "0::smallint"),
        )
        elapsed: dict[str, float] = {}
        latencies: dict[str, list[float]] = {}
        offset = 0
        for n in range(CONCURRENT_ROUNDS):
            for label, mode, slot in _rotated(modes, n):
                await _use_updated(db, mode, slot)
                chunk = ids[offset : offset + per_round]
                offset += per_round
                claims = [
                    await _claimed(s, part) for s, part in zip(stores, (chunk[::2], chunk[1::2]), strict=True)
                ]
                times = latencies.setdefault(label, [])
                started = time.perf_counter()
                await asyncio.gather(*(_write_all(s, c, times) for s, c in zip(stores, claims, strict=True)))
                elapsed[label] = elapsed.get(label, 0.0) + time.perf_counter() - started
        total = per_round * CONCURRENT_ROUNDS
        results = [Contended(label, total / elapsed[label], latencies[label]) for label, _, _ in modes]
        await _use_updated(db, "on")
    finally:
        for store in stores:
            await store.close()
        await engine.dispose()
    return results, ids[offset:]


async def _hold(dsn: str, ids: list[int], stop: asyncio.Event, pid: asyncio.Future[int]) -> None:
    """A dispatch-like transaction on the same mailing, over and over: it changes the status of some of
    its messages (queued and retrying in turn), then stays open HOLD_SECONDS (the scheduler publishes
    with confirms before it commits) and commits."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        assert row is not None
        pid.set_result(int(str(row[0])))
        await conn.commit()
        statuses = (MessageStatus.RETRYING, MessageStatus.QUEUED)
        turn = 0
        while not stop.is_set():
            await conn.execute(
                "UPDATE messages SET status = %s WHERE id = ANY(%s)", (statuses[turn % 2], ids)
            )
            await asyncio.sleep(HOLD_SECONDS)
            await conn.commit()
            turn += 1


async def _beside_a_held_dispatch(settings: CommonSettings, db: Db, ids: list[int]) -> list[Contended]:
    engine = make_engine(settings)
    store = Store(engine, settings, "bench.counts.c")
    results: list[Contended] = []
    held, ids = ids[:HELD_ROWS], ids[HELD_ROWS:]
    try:
        modes = (
            ("the dispatch on another slot (as deployed)", None),
            ("the dispatch on the sender's slot", "0::smallint"),
        )
        offset = 0
        for label, slot in modes:
            await _use_updated(db, "on", slot)
            stop, pid = asyncio.Event(), asyncio.get_running_loop().create_future()
            holder = asyncio.create_task(_hold(settings.psycopg_dsn, held, stop, pid))
            await _other_slot(store, await pid)
            chunk = ids[offset : offset + HELD_BATCHES * BATCH]
            offset += len(chunk)
            claims = await _claimed(store, chunk)
            latencies: list[float] = []
            started = time.perf_counter()
            await _write_all(store, claims, latencies)
            elapsed = time.perf_counter() - started
            stop.set()
            await holder
            results.append(Contended(label, len(chunk) / elapsed, latencies))
        await _use_updated(db, "on")
    finally:
        await store.close()
        await engine.dispose()
    return results


async def _reads(settings: CommonSettings, db: Db, mailing: int) -> list[tuple[str, float]]:
    """What the statistics read: a page of mailings with their counts (`mailing_stats_page`, as
    `GET /stats/mailings` runs it) among MAILINGS mailings, beside the count the API made before 0007
    over the one mailing that has all the messages. The other mailings' counter rows are written
    directly, as many as the triggers would leave (every status in every slot)."""
    slots = int(_migration().SLOTS)
    await db.run(
        "INSERT INTO mailings (text, start_at, end_at)"
        " SELECT 'bench ' || g, now(), now() + interval '2 days'"
        f" FROM generate_series(2, {MAILINGS}) AS g"
    )
    await db.run(
        "INSERT INTO mailing_status_counts (mailing_id, status, slot, count)"
        " SELECT g.id, s.status, n, 100 FROM mailings g"
        f" CROSS JOIN unnest(ARRAY[{', '.join(s.sql for s in MessageStatus)}]) AS s(status)"
        f" CROSS JOIN generate_series(0, {slots - 1}) AS n"
        f" WHERE g.id <> {mailing} ON CONFLICT DO NOTHING"
    )
    await db.run("VACUUM ANALYZE mailings")
    await db.run("VACUUM ANALYZE mailing_status_counts")
    engine = make_engine(settings)
    results: list[tuple[str, float]] = []
    before = text(
        "SELECT count(*), "
        + ", ".join(f"count(*) FILTER (WHERE status = '{s.value}')" for s in MessageStatus)
        + " FROM messages WHERE mailing_id = :m"
    )
    try:
        async with AsyncSession(engine) as session:

            async def page(limit: int) -> None:
                await mailing_stats_page(session, None, limit, 0)

            async def one() -> None:
                await status_counts(session, [mailing])

            async def counted() -> None:
                await session.execute(before, {"m": mailing})

            cases: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
                (f"`GET /stats/mailings` page of 100 of {MAILINGS:,} mailings", partial(page, 100)),
                (f"`GET /stats/mailings` page of 500 of {MAILINGS:,} mailings", partial(page, 500)),
                (f"counts of the mailing of {CLIENTS:,} messages (`status_counts`)", one),
                ("the same, counted from `messages` (as before 0007)", counted),
            )
            for label, call in cases:
                times = []
                for _ in range(READS):
                    started = time.perf_counter()
                    await call()
                    times.append(time.perf_counter() - started)
                    session.expunge_all()
                results.append((label, statistics.median(times) * 1000))
    finally:
        await engine.dispose()
    return results


async def run() -> str:
    base = CommonSettings()
    name = f"mailing_bench_counts_{uuid.uuid4().hex[:8]}"
    database_url = make_url(base.database_url).set(database=name).render_as_string(hide_password=False)
    settings = base.model_copy(update={"database_url": database_url})
    _create(database_url, name)
    try:
        upgrade(database_url)
        async with await psycopg.AsyncConnection.connect(settings.psycopg_dsn, autocommit=True) as conn:
            db = Db(conn)
            print(f"seeding {CLIENTS:,} clients ...", flush=True)
            mailing = await _seed(db)
            print("expansion, triggers off and on ...", flush=True)
            expansion = await _expansion(settings, db, mailing)
            ids = await _queue_everything(db)
            await db.check_counts()
            print("sender batches, triggers off and on ...", flush=True)
            sender, ids = await _sender(settings, db, ids)
            print("two senders at once ...", flush=True)
            two, ids = await _two_senders(settings, db, ids)
            print("a sender beside a held dispatch ...", flush=True)
            held = await _beside_a_held_dispatch(settings, db, ids)
            print("statistics reads ...", flush=True)
            reads = await _reads(settings, db, mailing)
            # No check here: the writes made with the triggers off were not counted, on purpose.
    finally:
        _drop(database_url, name)
    return _table([expansion, *sender], two, held, reads)


def _pct(on: float, off: float) -> str:
    return f"{on / off - 1:+.0%}" if off == off and on == on else "n/a"  # NaN: no CPU figures


def _table(
    rows: list[Row], two: list[Contended], held: list[Contended], reads: list[tuple[str, float]]
) -> str:
    lines = [
        "| statement | triggers off | triggers on | slowdown | backend CPU off | on | slowdown |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.stage} | {r.off:,.2f} {r.unit} | {r.on:,.2f} {r.unit} | {_pct(r.on, r.off)}"
            f" | {r.cpu_off:,.2f} {r.unit} | {r.cpu_on:,.2f} {r.unit} | {_pct(r.cpu_on, r.cpu_off)} |"
        )
    write = rows[2]
    lines += [
        "",
        f"- the sender's success write costs {_pct(write.on, write.off)} in time and"
        f" {_pct(write.cpu_on, write.cpu_off)} in backend CPU with the triggers (target: within 15%)",
    ]
    lines += [
        "",
        f"| two senders writing successes of one mailing at once ({BATCH:,} a statement; {CONCURRENT_ROUNDS}"
        f" interleaved rounds of {CONCURRENT_BATCHES} each) | messages/s | statement p50 | p90 |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {c.label} | {c.rate:,.0f} | {c.quantile(0.5):.1f} ms | {c.quantile(0.9):.1f} ms |" for c in two
    ]
    lines += [
        "",
        f"| one sender's success writes ({BATCH:,} a statement) beside a dispatch of the same mailing that"
        f" holds its transaction {HOLD_SECONDS * 1000:.0f} ms | messages/s | statement p50 | p90 |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {c.label} | {c.rate:,.0f} | {c.quantile(0.5):.1f} ms | {c.quantile(0.9):.1f} ms |" for c in held
    ]
    lines += ["", f"| statistics read (median of {READS}) | time |", "|---|---:|"]
    lines += [f"| {label} | {ms:.1f} ms |" for label, ms in reads]
    return "\n".join(lines)


def main() -> None:
    configure_logging("bench", level="WARNING")
    table = asyncio.run(run())
    print(table)
    section = (
        "Command: `make bench` (runs `uv run --frozen python -m bench.counts`). What the triggers that keep\n"
        "`mailing_status_counts` cost the hot writes on `messages`, in a fresh database of 1,000,000\n"
        "clients and one mailing: medians of interleaved rounds with the triggers off and on, each round in\n"
        f"another order ({EXPANSION_ROUNDS} expansions each; {ROUNDS} rounds of {BATCHES_A_ROUND} batches"
        " each for the\nsender). Backend CPU is the time the statement's PostgreSQL backend spent on a CPU\n"
        "(`/proc/<pid>/schedstat`): the share of the cost that waiting for a core on this shared host does\n"
        "not blur, and the figure to judge the triggers by; the wall-clock columns moved by up to ±30%\n"
        "between runs, either way.\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n" + table + "\n"
    )
    rewrite_section("Status counts", section)


if __name__ == "__main__":
    main()
