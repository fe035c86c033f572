"""Batched status writes: outcomes of many messages go out in one UPDATE, then their follow-up copies."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

from loguru import logger

from services.sender.metrics import SenderMetrics
from services.sender.store import OutcomeRow, Written
from shared.contracts import SendItem, SendMessages, finalized_body
from shared.domain.statuses import FINAL_MESSAGE_STATUSES

WRITE_RETRY_PAUSES = (0.1, 0.5, 1.0, 2.0, 5.0)
_FINAL = frozenset(status.value for status in FINAL_MESSAGE_STATUSES)


class OutcomeStore(Protocol):
    async def write(self, rows: Sequence[OutcomeRow]) -> list[Written]: ...


@dataclass(frozen=True)
class WorkCopy:
    command: SendMessages
    routing_key: str
    headers: dict[str, str] | None = None


class Bus(Protocol):
    async def publish(self, copies: Sequence[WorkCopy], finalized: bytes | None) -> None:
        """Publish every copy to the work exchange and the encoded `MessagesFinalized` event to the
        events exchange, with confirms."""


class _Pending(NamedTuple):
    row: OutcomeRow
    item: SendItem
    # Where a copy of the message goes once the row is written (retry tier, parking lot, send queue).
    route: str | None


class OutcomeWriter:
    def __init__(
        self,
        store: OutcomeStore,
        bus: Bus,
        metrics: SenderMetrics,
        *,
        parking_key: str,
        now: Callable[[], datetime],
        interval: float,
        max_rows: int,
    ) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.parking_key = parking_key
        self.now = now
        self.interval = interval
        self.max_rows = max_rows
        self._batch: list[_Pending] = []
        self._batch_written: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sender-outcome-writer")

    def submit(self, row: OutcomeRow, item: SendItem, route: str | None = None) -> asyncio.Future[None]:
        """Queue a status write; the future (shared by the whole batch) resolves once it is committed
        and its follow-up copies are confirmed."""
        if self._batch_written is None:
            self._batch_written = asyncio.get_running_loop().create_future()
        self._batch.append(_Pending(row, item, route))
        if len(self._batch) == 1 or len(self._batch) >= self.max_rows:
            self._wake.set()
        return self._batch_written

    async def close(self) -> None:
        """Write what is left and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._batch) < self.max_rows and not self._closing:
                await asyncio.sleep(self.interval)
            while self._batch:
                batch, future = self._batch, self._batch_written
                self._batch, self._batch_written = [], None
                assert future is not None
                await self._flush(batch, future)
            if self._closing:
                return

    async def _flush(self, batch: list[_Pending], future: asyncio.Future[None]) -> None:
        try:
            written = await self._write([p.row for p in batch])
            await self._follow_up(batch, written)
        except Exception as exc:
            logger.exception("status write of {} messages failed", len(batch))
            future.set_exception(exc)
            # Every waiting delivery sees the error; mark it retrieved so asyncio does not warn twice.
            future.exception()
            return
        future.set_result(None)

    async def _write(self, rows: list[OutcomeRow]) -> list[Written]:
        # Outcomes of calls already made must not be dropped: giving up would let the lease run out and
        # the message be sent again. So keep trying until it works, bounded only while shutting down.
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                written = await self.store.write(rows)
            except Exception as exc:
                failures += 1
                if self._closing and failures > len(WRITE_RETRY_PAUSES):
                    raise
                pause = WRITE_RETRY_PAUSES[min(failures, len(WRITE_RETRY_PAUSES)) - 1]
                logger.warning("status write of {} rows failed ({!r}), retry in {}s", len(rows), exc, pause)
                await asyncio.sleep(pause)
                continue
            self.metrics.flush_seconds.observe(time.perf_counter() - started)
            self.metrics.flush_rows.inc(len(rows))
            return written

    async def _follow_up(self, batch: list[_Pending], written: list[Written]) -> None:
        done = {w.message_id: w for w in written}
        routed: dict[str, list[SendItem]] = defaultdict(list)
        parked: list[WorkCopy] = []
        outcomes: list[tuple[int, int, int, str, int, str | None]] = []
        by_status: Counter[str] = Counter()
        at = self.now()
        for pending in batch:
            row = done.get(pending.row.message_id)
            if row is None or row.status != pending.row.status:
                # Already final (a concurrent cancel or another copy): the guard kept it.
                continue
            status = row.status
            by_status[status] += 1
            if status in _FINAL:
                reason = row.last_error if status != "sent" else None
                outcomes.append((row.message_id, row.mailing_id, row.client_id, status, row.attempts, reason))
            if pending.route == self.parking_key:
                command = SendMessages(messages=[pending.item])
                reason = (row.last_error or "")[:500]
                parked.append(WorkCopy(command, self.parking_key, {"x-parked-reason": reason}))
            elif pending.route is not None:
                routed[pending.route].append(pending.item)
        for label, count in by_status.items():
            self.metrics.outcomes.labels(label).inc(count)
        copies = [WorkCopy(SendMessages(messages=items), key) for key, items in routed.items()] + parked
        finalized = finalized_body(outcomes, at) if outcomes else None
        if copies or finalized is not None:
            await self.bus.publish(copies, finalized)
