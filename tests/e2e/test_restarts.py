"""RabbitMQ, and separately PostgreSQL, restarted while two senders deliver two mailings: every message
ends final within two minutes of the restart, none is lost, none is sent twice beyond the stated bound.

api, scheduler, two senders and the stand-in (15% errors, some latency) run as processes against a private
RabbitMQ node and a private PostgreSQL cluster (bench.chaos), so the restart disturbs no other test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from bench.chaos import PrivatePostgres, PrivateRabbit, Services
from bench.soak import IN_FLIGHT_GAUGES
from services.probe_stub.token import make_token
from shared.domain.statuses import FINAL_MESSAGE_STATUSES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

API_KEY = "restart-e2e-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CLIENTS_PER_MAILING = 2_500
# Spreads the 5,000 sends over about a minute, so the restart lands mid-delivery on any machine.
RATE_PER_SECOND = 100
RESTART_AFTER_SENT = 800
FINAL_WITHIN_SECONDS = 120.0
FINAL = sorted(FINAL_MESSAGE_STATUSES)


@dataclass
class Stack:
    rabbit: PrivateRabbit
    postgres: PrivatePostgres
    services: Services
    http: aiohttp.ClientSession

    @property
    def dsn(self) -> str:
        return self.postgres.dsn("mailing")

    def url(self, service: str, path: str) -> str:
        return self.services[service].base + path

    async def json(self, method: str, service: str, path: str, **kwargs: Any) -> Any:
        async with self.http.request(method, self.url(service, path), headers=AUTH, **kwargs) as r:
            assert r.status < 300, await r.text()
            return await r.json()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    rabbit, postgres = PrivateRabbit(), PrivatePostgres()
    services: Services | None = None
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        await asyncio.gather(rabbit.start(), postgres.start())
        database_url = await postgres.create_database("mailing")
        services = Services(
            tmp_path / "logs",
            {
                "MAILING_DATABASE_URL": database_url,
                "MAILING_AMQP_URL": rabbit.url,
                "MAILING_AMQP_NAMESPACE": "restarts",
                "MAILING_RETRY_DELAYS_SECONDS": "[0.5, 1.0, 2.0]",
                "MAILING_BOOTSTRAP_API_KEY": API_KEY,
                "MAILING_DB_POOL_SIZE": "5",
                "MAILING_PROBE_TOKEN": make_token("local-probe-secret"),
                "MAILING_SCHEDULER_TICK_SECONDS": "0.5",
                "MAILING_SCHEDULER_REQUEUE_AFTER_SECONDS": "20",
                "MAILING_SENDER_REQUEST_TIMEOUT_SECONDS": "2",
                "MAILING_SENDER_LEASE_SECONDS": "10",
                "MAILING_SENDER_MAX_ATTEMPTS": "12",
                "MAILING_SENDER_MAX_IN_FLIGHT": "100",
                "MAILING_SENDER_BREAKER_COOLDOWN_SECONDS": "2",
                "MAILING_SENDER_RATE_LIMIT_PER_SECOND": str(RATE_PER_SECOND),
            },
        )
        stub = services.add(
            "stub",
            "probe_stub",
            MAILING_PROBE_ERROR_RATE="0.15",
            MAILING_PROBE_LATENCY_MS="20",
            MAILING_PROBE_LATENCY_JITTER_MS="40",
        )
        services.common_env["MAILING_PROBE_BASE_URL"] = stub.base
        for name, kind in (
            ("api", "api"),
            ("scheduler", "scheduler"),
            ("sender1", "sender"),
            ("sender2", "sender"),
        ):
            services.add(name, kind)
        for name in ("stub", "api", "scheduler", "sender1", "sender2"):
            await services.start(name)
        for name in ("stub", "api", "scheduler", "sender1", "sender2"):
            await services.wait_healthy(name)
        yield Stack(rabbit, postgres, services, http)
    finally:
        await http.close()
        if services is not None:
            await services.stop_all()
        await asyncio.gather(rabbit.stop(), postgres.stop(), return_exceptions=True)


async def two_running_mailings(stack: Stack) -> list[int]:
    rows = ["phone,operator_code,tag,timezone"]
    zones = ("Europe/Moscow", "UTC", "Asia/Vladivostok", "America/New_York")
    for tag, prefix in (("alpha", "7910"), ("beta", "7920")):
        rows += [
            f"{prefix}{n:07d},9{n % 100:02d},{tag},{zones[n % len(zones)]}"
            for n in range(CLIENTS_PER_MAILING)
        ]
    form = aiohttp.FormData()
    form.add_field("file", "\n".join(rows).encode(), filename="clients.csv", content_type="text/csv")
    await stack.json("POST", "api", "/api/v1/clients/import", data=form)
    now = datetime.now(UTC)
    ids = []
    for tag in ("alpha", "beta"):
        body = {
            "text": f"restart {tag}",
            "start_at": (now - timedelta(seconds=1)).isoformat(),
            "end_at": (now + timedelta(hours=1)).isoformat(),
            "filter": {"tags": [tag], "operator_codes": []},
        }
        ids.append((await stack.json("POST", "api", "/api/v1/mailings", json=body))["id"])
    return ids


async def accepted_count(stack: Stack) -> int:
    stats = await stack.json("GET", "stub", "/_stub/stats")
    return int(stats["distinct_accepted"])


async def in_flight(stack: Stack) -> dict[str, float]:
    readings = {}
    for name in ("sender1", "sender2"):
        values = await stack.services.metrics(name)
        readings[name] = sum(values.get(g, 0.0) for g in IN_FLIGHT_GAUGES)
    return readings


async def counts_by_status(dsn: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT status, count(*) FROM messages GROUP BY status")
        return {str(status): int(n) for status, n in await cursor.fetchall()}


async def deliver_through(stack: Stack, restart: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    mailing_ids = await two_running_mailings(stack)
    deadline = time.monotonic() + 60
    while await accepted_count(stack) < RESTART_AFTER_SENT:
        assert time.monotonic() < deadline, "delivery never got going"
        await asyncio.sleep(0.2)
    # Calls in flight when the broker or the database goes away are the only ones whose outcome may not be
    # recorded; a sender that calls one of them again is the one duplicate exactly-once HTTP cannot avoid.
    in_flight_at_restart = await in_flight(stack)
    await restart()
    restarted_at = time.monotonic()

    counts: dict[str, int] = {}
    with_errors = 0
    while time.monotonic() - restarted_at < FINAL_WITHIN_SECONDS:
        try:
            counts = await counts_by_status(stack.dsn)
        except psycopg.Error:
            with_errors += 1
        if counts and sum(counts.values()) == 2 * CLIENTS_PER_MAILING and set(counts) <= set(FINAL):
            break
        await asyncio.sleep(1)
    final_after = time.monotonic() - restarted_at

    accepted = await stack.json("GET", "stub", "/_stub/accepted")
    async with await psycopg.AsyncConnection.connect(stack.dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT id FROM messages WHERE status = 'sent'")
        sent = {int(row[0]) for row in await cursor.fetchall()}
    per_msg = Counter(int(r["msg_id"]) for r in accepted)
    summary = {
        "mailings": mailing_ids,
        "counts": counts,
        "final_after_restart_s": round(final_after, 1),
        "in_flight_at_restart": in_flight_at_restart,
        "accepted": len(accepted),
        "distinct_accepted": len(per_msg),
        "duplicates": sum(n - 1 for n in per_msg.values()),
        "accepted_not_sent": len(set(per_msg) - sent),
        "sent_not_accepted": len(sent - set(per_msg)),
        "logs": str(stack.services.logs),
    }
    print("\nrestart e2e:", json.dumps(summary))
    return summary


def assert_survived(summary: dict[str, Any]) -> None:
    counts = summary["counts"]
    assert sum(counts.values()) == 2 * CLIENTS_PER_MAILING, summary
    assert set(counts) <= set(FINAL), f"not final {FINAL_WITHIN_SECONDS} s after the restart: {summary}"
    assert summary["sent_not_accepted"] == 0, summary
    assert summary["accepted_not_sent"] == 0, summary
    # The bound: every call in flight at the restart, on both senders, may be made once more.
    bound = sum(summary["in_flight_at_restart"].values())
    assert summary["duplicates"] <= bound, summary


async def test_every_message_ends_final_after_a_rabbitmq_restart_mid_delivery(stack: Stack) -> None:
    async def restart() -> None:
        await stack.rabbit.restart(down_seconds=7)

    assert_survived(await deliver_through(stack, restart))


async def test_every_message_ends_final_after_a_postgresql_restart_mid_delivery(stack: Stack) -> None:
    assert_survived(await deliver_through(stack, stack.postgres.restart))
