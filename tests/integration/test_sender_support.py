"""Helpers for the sender's integration tests: the stand-in in-process, rows inserted directly, polling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import aiohttp
import psycopg

from services.probe_stub.app import ProbeStubService, build_probe_stub
from services.probe_stub.settings import ProbeStubSettings
from services.probe_stub.token import make_token
from services.sender.settings import SenderSettings
from shared.broker import Publisher, confirm_channel, connect
from shared.contracts import SendItem, SendMessages
from shared.settings import CommonSettings
from shared.topology import Topology


def stub_settings() -> ProbeStubSettings:
    return ProbeStubSettings(_env_file=None)


async def start_stub() -> ProbeStubService:
    """The stand-in on a free port of 127.0.0.1 (its `port`)."""
    service = build_probe_stub(stub_settings().model_copy(update={"host": "127.0.0.1", "port": 0}))
    await service.start()
    return service


def sender_settings(common: CommonSettings, probe_url: str, **overrides: Any) -> SenderSettings:
    values: dict[str, Any] = {
        "database_url": common.database_url,
        "amqp_url": common.amqp_url,
        "amqp_namespace": common.amqp_namespace,
        "retry_delays_seconds": common.retry_delays_seconds,
        "probe_base_url": probe_url,
        "probe_token": make_token(stub_settings().jwt_secret),
        "request_timeout_seconds": 0.5,
        "max_in_flight": 20,
        "prefetch": 4,
        "lease_seconds": 10.0,
        "max_attempts": 6,
        "flush_interval_ms": 5.0,
        "mailing_recheck_seconds": 0.0,
        "shutdown_timeout_seconds": 5.0,
        "metrics_port": 0,
    }
    values.update(overrides)
    return SenderSettings(_env_file=None, **values)


class Stub:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    async def _call(self, method: str, path: str, payload: object | None = None) -> Any:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.base_url + path, json=payload) as response,
        ):
            response.raise_for_status()
            return json.loads(await response.read())

    async def faults(self, **faults: float) -> None:
        await self._call("PUT", "/_stub/faults", faults)

    async def stats(self) -> dict[str, int]:
        stats: dict[str, int] = await self._call("GET", "/_stub/stats")
        return stats

    async def accepted(self) -> list[dict[str, Any]]:
        accepted: list[dict[str, Any]] = await self._call("GET", "/_stub/accepted")
        return accepted


@dataclass
class Db:
    dsn: str

    async def execute(self, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall() if cursor.description else []

    async def client(self, phone: str, timezone: str = "UTC") -> int:
        rows = await self.execute(
            "INSERT INTO clients (phone, operator_code, timezone) VALUES (%s, %s, %s) RETURNING id",
            (phone, phone[1:4], timezone),
        )
        return int(rows[0][0])

    async def mailing(
        self,
        *,
        end_in: timedelta = timedelta(hours=1),
        window: tuple[time, time] | None = None,
        status: str = "running",
    ) -> int:
        now = datetime.now(UTC)
        rows = await self.execute(
            "INSERT INTO mailings (text, start_at, end_at, window_start, window_end, status)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            ("hello", now - timedelta(minutes=1), now + end_in, *(window or (None, None)), status),
        )
        return int(rows[0][0])

    async def queued_messages(
        self, mailing_id: int, count: int, first_phone: int = 79000000000
    ) -> list[SendItem]:
        items = []
        for n in range(count):
            client_id = await self.client(str(first_phone + n))
            rows = await self.execute(
                "INSERT INTO messages (mailing_id, client_id, status, not_before, queued_at)"
                " VALUES (%s, %s, 'queued', now(), now()) RETURNING id",
                (mailing_id, client_id),
            )
            items.append(SendItem(message_id=int(rows[0][0]), mailing_id=mailing_id, client_id=client_id))
        return items

    async def statuses(self, mailing_id: int) -> dict[int, tuple[Any, ...]]:
        rows = await self.execute(
            "SELECT id, status, attempts, last_error, sent_at, not_before, lease_until, next_attempt_at"
            " FROM messages WHERE mailing_id = %s",
            (mailing_id,),
        )
        return {int(row[0]): row[1:] for row in rows}


async def publish_send(
    amqp_url: str, topology: Topology, items: Sequence[SendItem], per_event: int = 50
) -> None:
    connection = await connect(amqp_url)
    async with connection:
        channel = await confirm_channel(connection)
        work = await channel.get_exchange(topology.work_exchange)
        batches = [items[i : i + per_event] for i in range(0, len(items), per_event)]
        await Publisher(work).publish_many(
            (SendMessages(messages=list(batch)), topology.send_key) for batch in batches
        )


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 15.0, what: str = "condition"
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def send_new_mailing(
    db: Db, amqp_url: str, topology: Topology, count: int, *, per_event: int = 50, **mailing: Any
) -> tuple[int, list[SendItem]]:
    """A mailing with `count` queued messages, published to the send queue as the scheduler would."""
    mailing_id = await db.mailing(**mailing)
    items = await db.queued_messages(mailing_id, count)
    await publish_send(amqp_url, topology, items, per_event=per_event)
    return mailing_id, items


async def observe_events(amqp_url: str, topology: Topology, key: str) -> str:
    """A queue of the test's own that receives the events matching `key`; it expires once unused."""
    name = f"{topology.namespace}.observer"
    connection = await connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, arguments={"x-expires": 60_000})
        await queue.bind(topology.events_exchange, key)
    return name


async def drain_queue(amqp_url: str, queue_name: str) -> list[bytes]:
    connection = await connect(amqp_url)
    bodies = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        while (message := await queue.get(fail=False)) is not None:
            bodies.append(message.body)
            await message.ack()
    return bodies
