"""Helpers of the scheduler integration tests: seeding rows, a recording publisher, reading statuses."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time
from itertools import count
from typing import Any

import aio_pika
import psycopg
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.scheduler import Scheduler
from services.scheduler.settings import SchedulerSettings
from shared.broker import QueueStatus
from shared.contracts import MessagesFinalized, SendMessages, decode

_phones = count(70000000000)


class RecordingPublisher:
    def __init__(self) -> None:
        self.commands: list[SendMessages] = []
        self.events: list[MessagesFinalized] = []
        self.listening = True
        # Messages still waiting in the send queue, as the broker would count them.
        self.ready = 0

    async def send(self, commands: Sequence[SendMessages]) -> None:
        self.commands.extend(commands)

    async def finalized(self, events: Sequence[MessagesFinalized]) -> None:
        self.events.extend(events)

    async def send_queue_status(self) -> QueueStatus | None:
        return QueueStatus(ready=self.ready, consumers=int(self.listening))

    @property
    def sent_ids(self) -> list[int]:
        return [item.message_id for command in self.commands for item in command.messages]

    def take_sent(self) -> list[int]:
        ids = self.sent_ids
        self.commands.clear()
        return ids


def scheduler_settings(database_url: str, **overrides: Any) -> SchedulerSettings:
    return SchedulerSettings.model_validate({"database_url": database_url, **overrides})


def make_scheduler(
    engine: AsyncEngine, settings: SchedulerSettings, publisher: RecordingPublisher
) -> Scheduler:
    return Scheduler(engine, publisher, settings, SchedulerMetrics(CollectorRegistry()))


async def add_client(engine: AsyncEngine, tz: str, *, tag: str = "", code: str = "900") -> int:
    async with engine.begin() as conn:
        result = await conn.execute(
            text(
                "INSERT INTO clients (phone, operator_code, tag, timezone)"
                " VALUES (:p, :c, :t, :tz) RETURNING id"
            ),
            {"p": str(next(_phones)), "c": code, "t": tag, "tz": tz},
        )
        return int(result.scalar_one())


async def add_mailing(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    *,
    window: tuple[time, time] | None = None,
    tags: Sequence[str] = (),
    codes: Sequence[str] = (),
) -> int:
    async with engine.begin() as conn:
        result = await conn.execute(
            text(
                "INSERT INTO mailings (text, start_at, end_at, window_start, window_end, filter_tags,"
                " filter_operator_codes) VALUES ('hello', :s, :e, :ws, :we, CAST(:tags AS varchar[]),"
                " CAST(:codes AS varchar[])) RETURNING id"
            ),
            {
                "s": start,
                "e": end,
                "ws": window[0] if window else None,
                "we": window[1] if window else None,
                "tags": list(tags),
                "codes": list(codes),
            },
        )
        return int(result.scalar_one())


async def mailing_status(engine: AsyncEngine, mailing_id: int) -> str:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT status FROM mailings WHERE id = :id"), {"id": mailing_id})
        return str(result.scalar_one())


async def set_mailing(engine: AsyncEngine, mailing_id: int, assignments: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(f"UPDATE mailings SET {assignments}, updated_at = now() WHERE id = :id"),
            {"id": mailing_id, **params},
        )


async def messages(engine: AsyncEngine, mailing_id: int) -> dict[int, tuple[str, datetime, str | None]]:
    """client id -> (status, not_before, last_error)"""
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT client_id, status, not_before, last_error FROM messages WHERE mailing_id = :id"),
            {"id": mailing_id},
        )
        return {row.client_id: (row.status, row.not_before, row.last_error) for row in result}


async def message_ids_of(engine: AsyncEngine, mailing_id: int) -> dict[int, int]:
    """client id -> message id"""
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT client_id, id FROM messages WHERE mailing_id = :id"), {"id": mailing_id}
        )
        return {row.client_id: row.id for row in result}


async def copy_clients(database_url: str, n: int, timezones: Sequence[str]) -> None:
    """Seed many clients fast with COPY."""
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with (
            conn.cursor() as cur,
            cur.copy("COPY clients (phone, operator_code, timezone) FROM STDIN") as copy,
        ):
            for i in range(n):
                await copy.write_row((str(79000000000 + i), "900", timezones[i % len(timezones)]))
        await conn.commit()


async def drain_send_queue(amqp_url: str, queue_name: str) -> list[int]:
    """Every message id found in the send queue (acked, so the queue ends empty)."""
    connection = await aio_pika.connect(amqp_url)
    ids: list[int] = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        while (message := await queue.get(fail=False)) is not None:
            ids.extend(item.message_id for item in decode(SendMessages, message.body).messages)
            await message.ack()
    return ids


async def status_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT status, count(*) FROM messages GROUP BY status"))
        return {row[0]: int(row[1]) for row in result}
