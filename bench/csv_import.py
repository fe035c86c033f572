"""`python -m bench.csv_import`: one CSV upload of 100,000 clients through the API, then the same file again.

Uses its own database (`mailing_bench_import`), recreated at the start and dropped at the end. The API runs
in-process behind httpx's ASGI transport, so the figure covers multipart parsing, validation, COPY and the
upsert, but no network.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import UTC, datetime

import httpx
import psycopg
from loguru import logger
from psycopg import sql
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from bench.report import DOC, ZONES, rewrite_section
from services.api.app import build_api
from services.api.settings import ApiSettings
from shared.migrate import upgrade

ROWS = 100_000
DATABASE = "mailing_bench_import"
KEY = "bench-admin-key"
COMMAND = "uv run --frozen python -m bench.csv_import"
TAGS = ("", "vip", "new", "churned", "b2b")


def make_csv(rows: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    phones = rng.sample(range(10**10), rows)
    lines = ["phone,operator_code,tag,timezone"]
    for i, number in enumerate(phones):
        code = f"{number // 10**7:03d}" if i % 3 == 0 else ""
        lines.append(f"7{number:010d},{code},{rng.choice(TAGS)},{ZONES[i % len(ZONES)]}")
    return ("\n".join(lines) + "\n").encode()


def _admin_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql", database="postgres").render_as_string(False)


def _recreate(database_url: str) -> None:
    with psycopg.connect(_admin_dsn(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    upgrade(database_url)


def _drop(database_url: str) -> None:
    with psycopg.connect(_admin_dsn(database_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))


async def _upload(client: httpx.AsyncClient, body: bytes) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    response = await client.post(
        "/api/v1/clients/import", files={"file": ("clients.csv", body, "text/csv")}, timeout=600
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    report = response.json()
    return elapsed, {k: report[k] for k in ("created", "updated", "rejected")}


async def run() -> list[tuple[str, float, dict[str, int]]]:
    base = ApiSettings()
    database_url = make_url(base.database_url).set(database=DATABASE).render_as_string(hide_password=False)
    settings = base.model_copy(
        update={"database_url": database_url, "bootstrap_api_key": SecretStr(KEY), "relay_enabled": False}
    )
    _recreate(database_url)
    try:
        app = build_api(settings).app
        body = make_csv(ROWS)
        results = []
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://bench",
                headers={"Authorization": f"Bearer {KEY}"},
            ) as client,
        ):
            for label in ("into an empty directory", "same file again (every row an update)"):
                seconds, counts = await _upload(client, body)
                results.append((label, seconds, counts))
                print(f"{label}: {ROWS:,} rows in {seconds:.2f} s ({ROWS / seconds:,.0f} rows/s) {counts}")
        return results
    finally:
        _drop(database_url)


def _write_doc(results: list[tuple[str, float, dict[str, int]]], size: int) -> None:
    rows = "\n".join(
        f"| {label} | {ROWS:,} | {c['created']:,} | {c['updated']:,} | {c['rejected']:,} "
        f"| **{seconds:.2f}** | {ROWS / seconds:,.0f} |"
        for label, seconds, c in results
    )
    section = (
        f"Command: `{COMMAND}` (also part of `make bench`). One `POST /api/v1/clients/import`\n"
        f"of a {size / 1e6:.1f} MB file of 100,000 clients over 30 timezones (a third with an explicit\n"
        "operator code), sent to the API in-process through httpx's ASGI transport into a fresh database:\n"
        "multipart parsing, per-row validation (in a worker thread, a chunk at a time, the next chunk\n"
        "parsed while the current one is COPYed), COPY into a temporary table in chunks and one\n"
        "`INSERT ... ON CONFLICT` upsert, all in one transaction, and a log line per client (INFO, JSON, to\n"
        "/dev/null, written from a worker thread). Then the same file again, so every row updates a client.\n"
        "Same figures, within noise, as before parsing and logging left the event loop (8.4 to 9.8 s\n"
        "then, on a busy machine; 6.9 and 7.4 s on a quiet one): what changed is that other requests\n"
        "are served meanwhile.\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (2 cores, PostgreSQL on the same machine).\n\n"
        "| run | rows | created | updated | rejected | seconds | rows/s |\n"
        "|---|---|---|---|---|---|---|\n"
        f"{rows}\n"
    )
    rewrite_section("CSV import", section)


def main() -> None:
    # Production logs every imported client at INFO as JSON; serializing them is part of the cost.
    logger.remove()
    logger.add(os.devnull, level="INFO", serialize=True)
    results = asyncio.run(run())
    _write_doc(results, len(make_csv(ROWS)))
    print(f"written to {DOC}")


if __name__ == "__main__":
    main()
