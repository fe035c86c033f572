"""`python -m bench.admin_pages`: every admin UI page and htmx fragment, timed with real data, while a
mailing is being delivered.

In its own database (`mailing_bench_pages_<random>`, dropped at the end), seeded set-wise:
1,000,000 clients (30 timezones, 11 tags, 50 operator codes, one in 200 deleted), 1,000 mailings in
every status, 1,000,000 messages (one running mailing of 300,000 over the last 2 days, the others of
about 700 each, each sent from its start in 24 hourly bursts, the starts 10 minutes apart over the last
7 days) in mixed statuses, a `report_outcomes` row for each final message (as the reporter records
them, which fills the per-minute counts), and a few API keys. The app runs in-process (`build_api(...).app`,
relay off) behind httpx's ASGI transport, signed in as an admin with a signed session cookie.

While the pages are timed, a writer process does to the big mailing what a sender does: through the
real `services.sender.store.Store`, it claims 1,000 of its queued messages and writes them `sent`
(`Store.claim`, `Store.write`), records their outcomes as the reporter does, and sleeps 50 ms, over
and over (the sent ones of a batch are put back to `queued` first, so the list can come round again).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import httpx
import psycopg
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from bench.counts import _create, _drop
from bench.report import ZONES, rewrite_section
from services.api.app import build_api
from services.api.settings import ApiSettings
from services.sender import outcome
from services.sender.store import Store
from shared.db import make_engine
from shared.logging import configure_logging
from shared.migrate import upgrade
from shared.settings import CommonSettings
from tests.admin_session import COOKIE_NAME, SESSION_SECRET, session_cookie

CLIENTS = 1_000_000
MAILINGS = 1_000
BIG = 300_000
SMALL_MESSAGES = 700_000
CODES = 50
TAGS = 11  # tag0 .. tag9 and no tag
DAYS = 7
REPEATS = int(os.environ.get("BENCH_PAGES_REPEATS", "20"))
WARMUP = 2
LIMIT_MS = 300.0
WRITER_BATCH = 1_000
WRITER_PAUSE = 0.05
BIG_MAILING = 1
SMALL_MAILING = 500


async def _run(conn: psycopg.AsyncConnection[tuple[object, ...]], statement: str) -> None:
    await conn.execute(statement.encode())


async def _seed(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    zones = "{" + ",".join(ZONES) + "}"
    print(f"seeding {CLIENTS:,} clients ...", flush=True)
    # phone = 7 + operator code + 7 digits, unique: (code, g / CODES) differs for every g.
    await _run(
        conn,
        "INSERT INTO clients (phone, operator_code, tag, timezone, created_at, updated_at, deleted_at)"
        f" SELECT '7' || (900 + g % {CODES})::text || lpad((g / {CODES})::text, 7, '0'),"
        f" (900 + g % {CODES})::text,"
        f" CASE WHEN g % {TAGS} = 0 THEN '' ELSE 'tag' || (g % {TAGS} - 1)::text END,"
        f" (CAST('{zones}' AS text[]))[1 + g % {len(ZONES)}],"
        f" now() - interval '30 days', now() - interval '30 days',"
        " CASE WHEN g % 200 = 0 THEN now() - interval '1 day' END"
        f" FROM generate_series(1, {CLIENTS}) AS g",
    )
    print(f"seeding {MAILINGS:,} mailings ...", flush=True)
    # Mailing 1 runs; the others are finished mostly, with some of every other status.
    await _run(
        conn,
        "INSERT INTO mailings (text, start_at, end_at, filter_tags, status, expanded_at, created_at,"
        " updated_at, deleted_at)"
        " SELECT 'Bench mailing ' || g || ': spring sale, everything 20% off until Sunday',"
        f" now() - make_interval(days => {DAYS}) + make_interval(mins => g * 10),"
        f" now() + interval '3 days', ARRAY['tag' || (g % 10)::text],"
        " CASE WHEN g = 1 THEN 'running' WHEN g % 10 = 1 THEN 'running' WHEN g % 10 = 2 THEN 'paused'"
        " WHEN g % 10 = 3 THEN 'scheduled' WHEN g % 10 = 4 THEN 'cancelled' ELSE 'finished' END,"
        f" now() - make_interval(days => {DAYS}), now() - make_interval(days => {DAYS}), now(),"
        " CASE WHEN g % 97 = 0 THEN now() END"
        f" FROM generate_series(1, {MAILINGS}) AS g",
    )
    print(f"seeding {BIG + SMALL_MESSAGES:,} messages ...", flush=True)
    # r: a fraction in [0, 1) per message, which decides its status; t: when it was created.
    status = (
        "CASE WHEN r < 0.40 THEN 'sent' WHEN r < 0.45 THEN 'failed' WHEN r < 0.47 THEN 'expired'"
        " WHEN r < 0.48 THEN 'cancelled' WHEN r < 0.50 THEN 'retrying' ELSE 'queued' END"
    )
    small_status = (
        "CASE WHEN r < 0.85 THEN 'sent' WHEN r < 0.90 THEN 'failed' WHEN r < 0.93 THEN 'expired'"
        " WHEN r < 0.95 THEN 'cancelled' ELSE 'pending' END"
    )
    columns = (
        "INSERT INTO messages (mailing_id, client_id, status, not_before, created_at, updated_at,"
        " queued_at, sent_at, attempts, last_error)"
    )
    values = (
        " SELECT mailing_id, client_id, status, t, t, t + interval '1 minute',"
        " CASE WHEN status <> 'pending' THEN t END,"
        " CASE WHEN status = 'sent' THEN t + make_interval(secs => 1 + r * 600) END,"
        " CASE WHEN status IN ('pending', 'queued') THEN 0 ELSE 1 + (r * 100)::int % 3 END,"
        " CASE WHEN status IN ('failed', 'retrying') THEN 'provider answered ' || (500 + (r * 1000)::int % 4)"
        " END FROM ("
    )
    await _run(
        conn,
        columns
        + values
        + f" SELECT {BIG_MAILING} AS mailing_id, 1 + g::bigint * 3331 % {CLIENTS} AS client_id,"
        f" {status} AS status, r,"
        f" now() - make_interval(secs => (1 - g::float / {BIG}) * 2 * 86400) AS t"
        f" FROM (SELECT g, (g::bigint * 7919 % 1000) / 1000.0 AS r FROM generate_series(1, {BIG}) AS g) AS s"
        ") AS m",
    )
    await _run(
        conn,
        columns + values + f" SELECT 2 + (g - 1) % {MAILINGS - 1} AS mailing_id,"
        f" 1 + g::bigint * 7927 % {CLIENTS} AS client_id,"
        f" {small_status} AS status, r,"
        # Sent from the mailing's start in 24 hourly bursts (its clients' timezone windows opening), each
        # within a minute, as a sender does it; the latest mailings' bursts stop a minute ago.
        f" least(now() - interval '1 minute', now() - make_interval(days => {DAYS})"
        f" + make_interval(mins => (2 + (g - 1) % {MAILINGS - 1}) * 10, hours => g % 24,"
        " secs => r * 50)) AS t"
        " FROM (SELECT g, (g::bigint * 7919 % 1000) / 1000.0 AS r"
        f" FROM generate_series(1, {SMALL_MESSAGES}) AS g) AS s) AS m",
    )
    print("seeding the reporter's outcomes and API keys ...", flush=True)
    await _run(
        conn,
        "INSERT INTO report_outcomes (message_id, mailing_id, client_id, status, attempts, occurred_at,"
        " recorded_at) SELECT id, mailing_id, client_id, status, attempts, coalesce(sent_at, updated_at),"
        " coalesce(sent_at, updated_at) FROM messages"
        " WHERE status IN ('sent', 'failed', 'expired', 'cancelled')",
    )
    await _run(
        conn,
        "INSERT INTO api_keys (name, key_hash, prefix, role, last_used_at)"
        " SELECT 'key ' || g, md5(g::text) || md5('x' || g), 'mk_' || g,"
        " (ARRAY['admin', 'operator', 'viewer'])[1 + g % 3], now() - make_interval(hours => g)"
        " FROM generate_series(1, 5) AS g",
    )
    # Each mailing's clients spread over the directory (as a filter picks them), not in id order.
    for table in ("clients", "mailings", "messages", "report_outcomes", "mailing_status_counts", "api_keys"):
        await _run(conn, f"VACUUM ANALYZE {table}")
    await _run(conn, "CHECKPOINT")


# The writer: a separate process, like a sender.


async def _writer(database_url: str) -> None:
    settings = CommonSettings(database_url=database_url)
    engine = make_engine(settings)
    store = Store(engine, settings, "bench.admin_pages")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with await psycopg.AsyncConnection.connect(settings.psycopg_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            # The queued ones, and the sent ones to requeue (a database kept from an earlier run).
            "SELECT id FROM messages WHERE mailing_id = %s AND status IN ('queued', 'sent') ORDER BY id",
            (BIG_MAILING,),
        )
        ids = [int(str(r[0])) for r in await cur.fetchall()]
        batches = [ids[i : i + WRITER_BATCH] for i in range(0, len(ids), WRITER_BATCH)]
        print("ready", flush=True)
        written, rounds, started = 0, 0, time.perf_counter()
        n = 0
        while not stop.is_set():
            batch = batches[n % len(batches)]
            # Its sent messages queued again first, their outcomes dropped, as an operator's requeue does.
            await conn.execute(
                "WITH requeued AS (UPDATE messages SET status = 'queued', queued_at = now(),"
                " sent_at = NULL, lease_until = NULL, claim_token = NULL"
                " WHERE id = ANY(%s) AND status = 'sent' RETURNING id)"
                " DELETE FROM report_outcomes WHERE message_id IN (SELECT id FROM requeued)",
                (batch,),
            )
            claims = await store.claim(batch, 60.0)
            now = datetime.now(UTC)
            done = await store.write([outcome.sent(c, now) for c in claims])
            # What the reporter records when it hears of them.
            await conn.execute(
                "INSERT INTO report_outcomes (message_id, mailing_id, client_id, status, attempts,"
                " occurred_at) SELECT id, mailing_id, client_id, status, attempts, sent_at FROM messages"
                " WHERE id = ANY(%s) ON CONFLICT (message_id) DO NOTHING",
                (list(done),),
            )
            written += len(done)
            rounds += 1
            n += 1
            await asyncio.sleep(WRITER_PAUSE)
        elapsed = time.perf_counter() - started
        print(f"written {written} {rounds} {elapsed:.3f}", flush=True)
    await store.close()
    await engine.dispose()


@dataclass(frozen=True)
class Timed:
    name: str
    path: str
    times: list[float]

    def q(self, quantile: float) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))] * 1000

    @property
    def passed(self) -> bool:
        return self.q(0.95) < LIMIT_MS


def _pages(day: date) -> list[tuple[str, str, bool]]:
    """(what, path, htmx fragment)."""
    b, s = BIG_MAILING, SMALL_MAILING
    return [
        ("dashboard", "/admin/", False),
        ("dashboard: overview fragment (polled)", "/admin/fragments/overview", True),
        ("dashboard: page 10 of the mailings", "/admin/?page=10", False),
        (f"mailing page, the big mailing ({BIG:,} messages, running)", f"/admin/mailings/{b}", False),
        ("mailing page, a small mailing (700 messages)", f"/admin/mailings/{s}", False),
        ("messages fragment, big mailing, status sent", f"/admin/mailings/{b}/messages?status=sent", True),
        (
            "messages fragment, big mailing, status failed, page 200",
            f"/admin/mailings/{b}/messages?status=failed&page=200",
            True,
        ),
        ("messages fragment, big mailing, page 5,000", f"/admin/mailings/{b}/messages?page=5000", True),
        ("messages fragment, big mailing, phone search 7916", f"/admin/mailings/{b}/messages?q=7916", True),
        (
            "messages fragment, big mailing, phone search 7916, page 3",
            f"/admin/mailings/{b}/messages?q=7916&page=3",
            True,
        ),
        ("messages fragment, big mailing, client id search", f"/admin/mailings/{b}/messages?q=12345", True),
        (
            "messages page (no htmx), small mailing, status sent",
            f"/admin/mailings/{s}/messages?status=sent",
            False,
        ),
        ("mailing form (new)", "/admin/mailings/new", False),
        ("mailing form (edit)", "/admin/mailings/503/edit", False),
        ("count preview fragment, no filter", "/admin/mailings/preview", True),
        (
            "count preview fragment, 2 tags, 3 codes",
            "/admin/mailings/preview?tags=tag1,tag2&operator_codes=916,917,920",
            True,
        ),
        ("clients list", "/admin/clients", False),
        ("clients list, page 2,000", "/admin/clients?page=2000", False),
        ("clients fragment, tag filter", "/admin/clients?tag=tag3", True),
        ("clients fragment, operator code filter", "/admin/clients?operator_code=916", True),
        ("clients fragment, timezone filter", "/admin/clients?timezone=Asia/Tokyo", True),
        (
            "clients fragment, all three filters",
            "/admin/clients?tag=tag3&operator_code=916&timezone=Asia/Tokyo",
            True,
        ),
        ("clients fragment, phone search 7916", "/admin/clients?phone=7916", True),
        ("clients fragment, phone search +7916001", "/admin/clients?phone=%2B7916001", True),
        ("client edit", "/admin/clients/12345/edit", False),
        ("import page", "/admin/clients/import", False),
        (f"daily report ({day})", f"/admin/reports?day={day}", False),
        ("daily report (today)", "/admin/reports", False),
        ("API keys", "/admin/api-keys", False),
    ]  # fmt: skip


async def _time_pages(settings: ApiSettings, day: date) -> list[Timed]:
    app = build_api(settings).app
    pages = _pages(day)
    results: dict[str, list[float]] = {path: [] for _, path, _ in pages}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            cookies={COOKIE_NAME: session_cookie("admin")},
            timeout=60,
        ) as client,
    ):
        # Round-robin over the pages, so drift of the host falls on all of them alike.
        for n in range(WARMUP + REPEATS):
            for _, path, fragment in pages:
                headers = {"HX-Request": "true"} if fragment else {}
                started = time.perf_counter()
                response = await client.get(path, headers=headers)
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
                if n >= WARMUP:
                    results[path].append(elapsed)
    return [Timed(name, path, results[path]) for name, path, _ in pages]


def _loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


async def run() -> tuple[str, str]:
    base = CommonSettings()
    # BENCH_PAGES_DATABASE: a database of one's own, seeded once and kept (to look at plans between runs).
    kept = os.environ.get("BENCH_PAGES_DATABASE")
    name = kept or f"mailing_bench_pages_{uuid.uuid4().hex[:8]}"
    database_url = make_url(base.database_url).set(database=name).render_as_string(hide_password=False)
    settings = ApiSettings(
        **base.model_copy(update={"database_url": database_url}).model_dump(),
        relay_enabled=False,
        session_secret=SecretStr(SESSION_SECRET),
        _env_file=None,
    )
    if not kept:
        _create(database_url, name)
    try:
        upgrade(database_url)
        started = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(settings.psycopg_dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT count(*) FROM mailings")
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                await _seed(conn)
        seeded = time.perf_counter() - started
        print(f"seeded in {seeded:.0f} s; timing {REPEATS} rounds of every page ...", flush=True)
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.admin_pages",
            "--writer",
            database_url,
            stdout=asyncio.subprocess.PIPE,
        )
        assert writer.stdout is not None
        ready = await writer.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError(f"the writer did not start: {ready!r}")
        load_before = _loadavg()
        try:
            day = datetime.now(UTC).date() - timedelta(days=1)
            timed = await _time_pages(settings, day)
        finally:
            writer.send_signal(signal.SIGTERM)
            out, _ = await writer.communicate()
        load_after = _loadavg()
        words = out.decode().split()
        written, batches, elapsed = int(words[1]), int(words[2]), float(words[3])
    finally:
        if not kept:
            _drop(database_url, name)
    lines = [
        f"| page or fragment | path | p50 | p95 | max | p95 under {LIMIT_MS:.0f} ms |",
        "|---|---|---:|---:|---:|---|",
    ]
    for t in timed:
        lines.append(
            f"| {t.name} | `{t.path}` | {t.q(0.5):.0f} ms | {t.q(0.95):.0f} ms | {max(t.times) * 1000:.0f} ms"
            f" | {'yes' if t.passed else '**no**'} |"
        )
    failed = [t.name for t in timed if not t.passed]
    lines += [
        "",
        f"- {len(timed) - len(failed)} of {len(timed)} pass"
        + ("" if not failed else f"; over the limit: {', '.join(failed)}"),
        f"- while timing, the writer wrote {written:,} messages `sent` in {batches:,} batches of up to"
        f" {WRITER_BATCH:,} over {elapsed:.0f} s ({written / elapsed:,.0f}/s), through `Store.claim` and"
        " `Store.write`, each batch's outcomes recorded in `report_outcomes`",
        f"- load average (1 / 5 / 15 min) before timing {load_before}, after {load_after}; seeding took"
        f" {seeded:.0f} s",
    ]
    return "\n".join(lines), f"{REPEATS} rounds"


def main() -> None:
    configure_logging("bench", level="WARNING")
    if len(sys.argv) == 3 and sys.argv[1] == "--writer":
        asyncio.run(_writer(sys.argv[2]))
        return
    table, rounds = asyncio.run(run())
    print(table)
    section = " ".join(
        (
            "Command: `make bench` (runs `uv run --frozen python -m bench.admin_pages`).",
            "Every admin UI page and htmx fragment, in a fresh database of 1,000,000 clients, 1,000 mailings",
            "and 1,000,000 messages (one running mailing of 300,000 over 2 days, the others of about 700,",
            "each sent in 24 hourly bursts from its start, the starts spread over 7 days), with a",
            "`report_outcomes` row for every final message and a few API keys, seeded set-wise.",
            "The app runs in-process (`build_api(...).app`, relay off) behind httpx's ASGI transport,",
            "signed in as an admin; a request is timed from the client's call to the whole body read",
            "(the template rendered). Meanwhile a separate writer process delivers the big mailing as a",
            "sender does: `Store.claim` then",
            f"`Store.write` of {WRITER_BATCH:,} of its queued messages, their outcomes inserted as the",
            f"reporter does, every {WRITER_PAUSE * 1000:.0f} ms. {rounds} round-robin over the pages after",
            f"{WARMUP} warm-up rounds; a page passes when its p95 is under {LIMIT_MS:.0f} ms (the max is",
            "shown too: on this shared host a single request now and then waits for a core).",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (2 cores, PostgreSQL on the same machine).",
        )
    )
    section += "\n\n" + table + "\n"
    rewrite_section("Admin pages", section)


if __name__ == "__main__":
    main()
