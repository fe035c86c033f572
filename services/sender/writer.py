"""Batched status writes: outcomes of many messages go out in one UPDATE, then their follow-up copies."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol, TypeVar

from loguru import logger

from services.sender.checks import Claim
from services.sender.metrics import SenderMetrics
from services.sender.store import OutcomeRow, Written
from shared.contracts import SendItem, SendMessages, finalized_body
from shared.domain.statuses import FINAL_MESSAGE_STATUSES, MessageStatus

WRITE_RETRY_PAUSES = (0.1, 0.5, 1.0, 2.0, 5.0)
_FINAL = frozenset(status.value for status in FINAL_MESSAGE_STATUSES)
W = TypeVar("W")
# One `message.finalized` outcome: message_id, mailing_id, client_id, status, attempts, reason.
Outcome = tuple[int, int, int, str, int, str | None]


class OutcomeStore(Protocol):
    async def write(self, rows: Sequence[OutcomeRow]) -> list[Written]: ...

    async def write_sent(self, ids: list[int], sent_at: list[datetime], tokens: list[int]) -> set[int]: ...


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
        monotonic: Callable[[], float],
        interval: float,
        max_rows: int,
    ) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.parking_key = parking_key
        self.now = now
        self.monotonic = monotonic
        self.interval = interval
        self.max_rows = max_rows
        # The common outcome, a success, is kept as the caller's own claim and the time: no row object
        # is built per message for it. Every other outcome is a full row.
        self._sent: list[tuple[Claim, datetime]] = []
        self._batch: list[_Pending] = []
        self._batch_written: asyncio.Future[None] | None = None
        # When the oldest outcome not yet committed was handed over (monotonic), None when all are.
        self._pending_since: float | None = None
        self._flushing_since: float | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sender-outcome-writer")

    def submit(self, row: OutcomeRow, item: SendItem, route: str | None = None) -> asyncio.Future[None]:
        """Queue a status write; the future (shared by the whole batch) resolves once it is committed
        and its follow-up copies are confirmed."""
        self._batch.append(_Pending(row, item, route))
        return self._queued()

    def sent(self, claim: Claim, at: datetime) -> asyncio.Future[None]:
        """Queue `sent` at `at` for a claimed message: `submit` for the outcome of nearly every call."""
        self._sent.append((claim, at))
        return self._queued()

    def unwritten_for(self) -> float:
        """Seconds the oldest outcome handed over has waited for its commit (0 when none waits):
        the sender stops calling once outcomes cannot be recorded (see Sender's fence)."""
        since = self._flushing_since if self._flushing_since is not None else self._pending_since
        return 0.0 if since is None else self.monotonic() - since

    def _queued(self) -> asyncio.Future[None]:
        future = self._batch_written
        if future is None:
            future = self._batch_written = asyncio.get_running_loop().create_future()
            self._pending_since = self.monotonic()
            self._wake.set()
        elif len(self._sent) + len(self._batch) >= self.max_rows:
            self._wake.set()
        return future

    async def close(self) -> None:
        """Write what is left, publish its copies, and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await asyncio.gather(*self._publishing, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._sent) + len(self._batch) < self.max_rows and not self._closing:
                await asyncio.sleep(self.interval)
            while self._batch_written is not None:
                sent, batch, future = self._sent, self._batch, self._batch_written
                self._flushing_since = self._pending_since
                self._sent, self._batch, self._batch_written, self._pending_since = [], [], None, None
                await self._flush(sent, batch, future)
            if self._closing:
                return

    async def _flush(
        self, sent: list[tuple[Claim, datetime]], batch: list[_Pending], future: asyncio.Future[None]
    ) -> None:
        """Write the outcomes, then publish their copies in the background: the next batch's write does
        not wait for the broker (which may be restarting) and the fence looks at writes alone."""
        try:
            outcomes: list[Outcome] = []
            if sent:
                outcomes = await self._write_sent(sent)
            written = await self._write([p.row for p in batch]) if batch else []
            lost = len(sent) + len(batch) - len(outcomes) - len(written)
            if lost:
                self.metrics.outcomes_unwritten.inc(lost)
                logger.warning(
                    "{} outcomes not written: the message was final already or its claim had passed on",
                    lost,
                )
            copies, finalized = self._follow_up(batch, written, outcomes)
        except Exception as exc:
            logger.exception("status write of {} messages failed", len(sent) + len(batch))
            _fail(future, exc)
            return
        finally:
            self._flushing_since = None
        if not copies and finalized is None:
            _resolve(future)
            return
        task = asyncio.create_task(self._publish(copies, finalized, future))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(
        self, copies: list[WorkCopy], finalized: bytes | None, future: asyncio.Future[None]
    ) -> None:
        try:
            await self._retrying(lambda: self.bus.publish(copies, finalized), "publish", len(copies))
        except Exception as exc:
            logger.exception("publishing the copies of {} outcomes failed", len(copies))
            _fail(future, exc)
            return
        _resolve(future)

    async def _write_sent(self, sent: list[tuple[Claim, datetime]]) -> list[Outcome]:
        """Write the successes; returns the outcomes of those written (not already final)."""
        ids = [claim.message_id for claim, _ in sent]
        times = [at for _, at in sent]
        tokens = [claim.token for claim, _ in sent]
        written = await self._retrying(lambda: self.store.write_sent(ids, times, tokens), "write", len(ids))
        return [
            (claim.message_id, claim.mailing_id, claim.client_id, MessageStatus.SENT, claim.attempts, None)
            for claim, _ in sent
            if claim.message_id in written
        ]

    async def _write(self, rows: list[OutcomeRow]) -> list[Written]:
        return await self._retrying(lambda: self.store.write(rows), "write", len(rows))

    async def _retrying(self, step: Callable[[], Awaitable[W]], what: str, rows: int) -> W:
        # Outcomes of calls already made must not be dropped: giving up would let the lease run out and
        # the message be sent again. So keep trying until it works, bounded only while shutting down.
        # Each write is idempotent (a final status never changes), so repeating one whose reply was
        # lost is harmless; so is publishing a copy twice (the claim drops the redundant one). The
        # copies are published only after the write, and the write is never repeated for them: a
        # repeat would find the rows final and publish no `message.finalized`.
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                done = await step()
            except Exception as exc:
                failures += 1
                if self._closing and failures > len(WRITE_RETRY_PAUSES):
                    raise
                pause = WRITE_RETRY_PAUSES[min(failures, len(WRITE_RETRY_PAUSES)) - 1]
                logger.warning("{} of {} outcomes failed ({!r}), retry in {}s", what, rows, exc, pause)
                await asyncio.sleep(pause)
                continue
            if what == "write":
                self.metrics.flush_seconds.observe(time.perf_counter() - started)
                self.metrics.flush_rows.inc(rows)
            return done

    def _follow_up(
        self, batch: list[_Pending], written: list[Written], outcomes: list[Outcome]
    ) -> tuple[list[WorkCopy], bytes | None]:
        """Count the outcomes written; returns the copies to publish (retry tiers, parking lot, send
        queue) and the `message.finalized` event; `outcomes` holds the successes already."""
        done = {w.message_id: w for w in written}
        routed: dict[str, list[SendItem]] = defaultdict(list)
        parked: list[WorkCopy] = []
        by_status: Counter[str] = Counter()
        if outcomes:
            by_status[MessageStatus.SENT] = len(outcomes)
        at = self.now()
        for pending in batch:
            row = done.get(pending.row.message_id)
            if row is None or row.status != pending.row.status:
                # Already final (a concurrent cancel or another copy): the guard kept it.
                continue
            status = row.status
            by_status[status] += 1
            if status in _FINAL:
                outcomes.append(
                    (row.message_id, row.mailing_id, row.client_id, status, row.attempts, row.last_error)
                )
            if pending.route == self.parking_key:
                command = SendMessages(messages=[pending.item])
                reason = (row.last_error or "")[:500]
                parked.append(WorkCopy(command, self.parking_key, {"x-parked-reason": reason}))
            elif pending.route is not None:
                routed[pending.route].append(pending.item)
        for label, count in by_status.items():
            self.metrics.outcomes.labels(label).inc(count)
        copies = [WorkCopy(SendMessages(messages=items), key) for key, items in routed.items()] + parked
        return copies, finalized_body(outcomes, at) if outcomes else None


# A batch's future may have been cancelled by a delivery whose handler was cancelled (its channel closed
# with the broker): the outcomes are written all the same, and the writer must not die of it.


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    if future.done():
        return
    future.set_exception(exc)
    # Every waiting delivery sees the error; mark it retrieved so asyncio does not warn twice.
    future.exception()
