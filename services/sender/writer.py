"""Batched status writes: the outcomes of many messages go out in one write, then their copies."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Protocol, TypeVar

from loguru import logger

from services.sender.bus import needs_publishing
from services.sender.metrics import SenderMetrics
from services.sender.outcome import Outcome

WRITE_RETRY_PAUSES = (0.1, 0.5, 1.0, 2.0, 5.0)
W = TypeVar("W")
_status = attrgetter("status")


class OutcomeStore(Protocol):
    async def write(self, outcomes: Sequence[Outcome], *, repeat: bool = False) -> list[Outcome]:
        """Write the outcomes; returns those written (not already final, claim still held; with
        `repeat`, also those this claim already made final so, by a try whose reply was lost)."""


class Bus(Protocol):
    async def publish(self, outcomes: Sequence[Outcome], at: datetime) -> None:
        """Publish the copies these written outcomes ask for and the `message.finalized` event of the
        final ones, with confirms."""


class OutcomeWriter:
    def __init__(
        self,
        store: OutcomeStore,
        bus: Bus,
        metrics: SenderMetrics,
        *,
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
        interval: float,
        max_rows: int,
    ) -> None:
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.now = now
        self.monotonic = monotonic
        self.interval = interval
        self.max_rows = max_rows
        self._batch: list[Outcome] = []
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

    def submit(self, outcome: Outcome) -> asyncio.Future[None]:
        """Queue an outcome's write; the future (shared by the whole batch) resolves once it is committed
        and its copies and event are confirmed."""
        self._batch.append(outcome)
        future = self._batch_written
        if future is None:
            future = self._batch_written = asyncio.get_running_loop().create_future()
            self._pending_since = self.monotonic()
            self._wake.set()
        elif len(self._batch) >= self.max_rows:
            self._wake.set()
        return future

    def unwritten_for(self) -> float:
        """Seconds the oldest outcome handed over has waited for its commit (0 when none waits):
        the sender stops calling once outcomes cannot be recorded (see Sender's fence)."""
        since = self._flushing_since if self._flushing_since is not None else self._pending_since
        return 0.0 if since is None else self.monotonic() - since

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
            await self._gather()
            if self._batch_written is not None:
                batch, future = self._batch, self._batch_written
                self._flushing_since = self._pending_since
                self._batch, self._batch_written, self._pending_since = [], None, None
                await self._flush(batch, future)
            if self._batch_written is not None:
                self._wake.set()  # what came during the write: its own wait counts from its first outcome
            elif self._closing:
                return

    async def _gather(self) -> None:
        """Let the batch fill: until `interval` after its first outcome, `max_rows` outcomes, or closing.
        Under a steady stream of answers, flushing at once whatever came during the last write made
        batches of a few dozen outcomes, each a transaction, an event and a reporter's insert of its own
        (docs/benchmarks.md, "Where the end-to-end CPU goes")."""
        since = self._pending_since
        if since is None or len(self._batch) >= self.max_rows or self._closing:
            return
        delay = since + self.interval - self.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _flush(self, batch: list[Outcome], future: asyncio.Future[None]) -> None:
        """Write the outcomes, then publish their copies in the background: the next batch's write does
        not wait for the broker (which may be restarting) and the fence looks at writes alone."""
        try:
            written = await self._retrying(
                lambda tries: self.store.write(batch, repeat=tries > 0), "write", len(batch)
            )
        except Exception as exc:
            logger.exception("status write of {} messages failed", len(batch))
            _fail(future, exc)
            return
        finally:
            self._flushing_since = None
        self._count(batch, written)
        if not needs_publishing(written):
            _resolve(future)
            return
        task = asyncio.create_task(self._publish(written, self.now(), future))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    def _count(self, batch: list[Outcome], written: list[Outcome]) -> None:
        lost = len(batch) - len(written)
        if lost:
            self.metrics.outcomes_unwritten.inc(lost)
            logger.warning(
                "{} outcomes not written: the message was final already or its claim had passed on", lost
            )
        for status, count in Counter(map(_status, written)).items():
            self.metrics.outcomes.labels(status).inc(count)

    async def _publish(self, written: list[Outcome], at: datetime, future: asyncio.Future[None]) -> None:
        try:
            await self._retrying(lambda _: self.bus.publish(written, at), "publish", len(written))
        except Exception as exc:
            logger.exception("publishing the copies of {} outcomes failed", len(written))
            _fail(future, exc)
            return
        _resolve(future)

    async def _retrying(self, step: Callable[[int], Awaitable[W]], what: str, rows: int) -> W:
        # Outcomes of calls already made must not be dropped: giving up would let the lease run out and
        # the message be sent again. So keep trying until it works, bounded only while shutting down.
        # Each write is idempotent (a final status never changes), so repeating one whose reply was
        # lost is harmless: the repeat (`step(tries)` with tries > 0) counts the final rows its own
        # claim wrote. So is publishing a copy twice (the claim drops the redundant one). The copies are
        # published only after the write, and the write is never repeated for them.
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                done = await step(failures)
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
