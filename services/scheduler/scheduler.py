"""The scheduler's work, one step at a time: `tick(now)` is everything the periodic loop does once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.scheduler import store
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.planning import MailingPlan, TimezonePlan, chunks, plan_timezones
from services.scheduler.publisher import SchedulerPublisher
from services.scheduler.settings import SchedulerSettings
from shared.broker import Delivery
from shared.clock import Clock, utc_now
from shared.contracts import (
    MailingChanged,
    MessageOutcome,
    MessagesFinalized,
    SendMessages,
)
from shared.domain.statuses import MailingStatus, MessageStatus, Reason
from shared.logging import HotLine

if TYPE_CHECKING:
    from loguru import Logger

# A sender reports its state every few seconds; one silent for longer is gone.
SENDER_REPORT_MAX_AGE = timedelta(seconds=30)
RUNNING = MailingStatus.RUNNING.value
PAUSED = MailingStatus.PAUSED.value
SCHEDULED = MailingStatus.SCHEDULED.value
ACTIVE = (SCHEDULED, RUNNING, PAUSED)
# A line a message, for finding its story by id (docs/operations.md).
HANDED = HotLine("message handed to the sender", "mailing_id", "message_id", "client_id")
# An expansion's first chunk is this many clients, and each next one twice the last, up to
# MAILING_SCHEDULER_DISPATCH_BATCH: a new mailing's first messages go out after a small write, the rest
# in chunks large enough to cost little a row.
FIRST_CHUNK = 500
# How old the outstanding cap's count may get while a pass adds its own hand-overs to it: the others'
# (another scheduler's) show only in a new count.
RECOUNT_AFTER_SECONDS = 1.0


class _Outstanding:
    """The outstanding cap's figure through one expansion pass or one dispatch run, without a count
    before every batch: a count plus what this pass handed over since is an upper bound of the
    `queued` and `retrying` messages (sending only lowers it). It is counted again when that bound
    leaves no room for the next batch, or when the count is older than `RECOUNT_AFTER_SECONDS`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.bound: int | None = None
        self.counted_at = 0.0

    async def room(self, conn: AsyncConnection, wanted: int) -> int:
        """How many of `wanted` messages may be handed over now (all of them without a cap)."""
        if not self.cap:
            return wanted
        if (
            self.bound is None
            or self.bound + wanted > self.cap
            or time.monotonic() - self.counted_at > RECOUNT_AFTER_SECONDS
        ):
            self.bound = await store.outstanding(conn)
            self.counted_at = time.monotonic()
        return max(0, min(wanted, self.cap - self.bound))

    def took(self, count: int) -> None:
        """`count` messages were made `queued` and committed."""
        if self.bound is not None:
            self.bound += count


@dataclass
class _Expansion:
    """One expansion pass: what its first step decided, and what it has written so far."""

    plan: MailingPlan
    full: bool
    # The mailing has messages from an earlier pass: the chunks look only for clients without one.
    again: bool
    changed_since: datetime | None
    zones: TimezonePlan
    # The instant `mark_expanded` records (`store.expansion_start`), and the pass's start for its metric.
    started: datetime
    timer: float
    planned: int = 0
    expired: int = 0
    cancelled: int = 0
    moved: int = 0


@dataclass(frozen=True)
class TickReport:
    mailings: int
    requeued: int
    dispatched: int
    backlog: int


class Scheduler:
    def __init__(
        self,
        engine: AsyncEngine,
        publisher: SchedulerPublisher,
        settings: SchedulerSettings,
        metrics: SchedulerMetrics,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        # Mailings this process is working on: the tick and the event consumer never both take one.
        self._busy: set[int] = set()

    async def tick(
        self, now: datetime | None = None, *, should_stop: Callable[[], bool] = bool
    ) -> TickReport:
        now = now or self.clock()
        async with self.engine.connect() as conn:
            mailing_ids = await store.mailings_needing_attention(conn, now)
        for mailing_id in mailing_ids:
            try:
                await self.process_mailing(mailing_id, now)
            except Exception:
                # One broken mailing must not stop the others; the next tick tries it again.
                logger.bind(mailing_id=mailing_id).exception("processing the mailing failed")
        async with self.engine.connect() as conn:
            running = await store.running_mailings(conn, now)
        requeued = await self.sweep(now, running=running, should_stop=should_stop)
        dispatched = await self.dispatch(now, running=running, should_stop=should_stop)
        async with self.engine.connect() as conn:
            backlog = await store.due_backlog(conn, running, now)
        self.metrics.due_backlog.set(backlog)
        return TickReport(len(mailing_ids), requeued, dispatched, backlog)

    async def on_mailing_changed(self, delivery: Delivery[MailingChanged]) -> None:
        event = delivery.body
        logger.bind(mailing_id=event.mailing_id).info("mailing {} event {}", event.type, event.event_id)
        await self.process_mailing(event.mailing_id, self.clock())

    async def process_mailing(self, mailing_id: int, now: datetime) -> bool:
        """Bring one mailing up to date with `now`; False when another scheduler, or this one's other
        task (the tick or the event consumer), holds it right now."""
        if mailing_id in self._busy:
            return False
        self._busy.add(mailing_id)
        try:
            return await self._process_mailing(mailing_id, now)
        finally:
            self._busy.discard(mailing_id)

    async def _process_mailing(self, mailing_id: int, now: datetime) -> bool:
        log = logger.bind(mailing_id=mailing_id)
        ending: tuple[str, str, str | None] | None = None
        expansion: _Expansion | None = None
        async with self.engine.begin() as conn:
            if not await store.try_lock_mailing(conn, mailing_id):
                return False
            row = await store.load_mailing(conn, mailing_id)
            if row is None:
                return True
            status = row.status
            if row.deleted or row.status == MailingStatus.CANCELLED:
                ending = (
                    MessageStatus.CANCELLED,
                    Reason.MAILING_DELETED if row.deleted else Reason.MAILING_CANCELLED,
                    None,
                )
                if row.deleted and await store.set_mailing_status(
                    conn, mailing_id, MailingStatus.CANCELLED, ACTIVE
                ):
                    log.info("mailing deleted: status {} -> cancelled", row.status)
            elif row.status in ACTIVE and row.plan.start_at <= now:
                ended = now >= row.plan.end_at
                if status == SCHEDULED and await store.set_mailing_status(
                    conn, mailing_id, RUNNING, (SCHEDULED,)
                ):
                    log.info("mailing started: status scheduled -> running")
                    status = RUNNING
                if ended:
                    ending = (MessageStatus.EXPIRED, Reason.MAILING_ENDED, status)
                if row.expanded_at is None or not ended:
                    expansion = await self._begin_expansion(conn, row, now, log)
        if expansion is not None:
            await self._publish_ended(expansion, now, log)
            if not await self._expand(expansion, now, log, finish=ending is None):
                return False
        if ending is not None:
            await self._end_open_messages(mailing_id, *ending, now, log)
        return True

    async def _end_open_messages(
        self,
        mailing_id: int,
        status: str,
        reason: str,
        finish_from: str | None,
        now: datetime,
        log: Logger,
    ) -> None:
        """Ends a mailing's open messages a chunk a transaction, each chunk's events published after its
        commit: a mailing of millions never sits in memory, and a crash midway leaves the rest open for
        the next tick. With `finish_from` (the mailing's status) the mailing is finished after the last."""
        limit = self.settings.dispatch_batch
        while True:
            async with self.engine.begin() as conn:
                # The lock went with the previous chunk's commit; without it another scheduler carries on.
                if not await store.try_lock_mailing(conn, mailing_id):
                    return
                chunk = await store.finalize_unfinished(conn, mailing_id, status, reason, now, limit)
                last = len(chunk) < limit
                if (
                    last
                    and finish_from is not None
                    and await store.finish_if_done(conn, mailing_id, (RUNNING, PAUSED))
                ):
                    log.info("mailing finished: status {} -> finished", finish_from)
            # After the commit: an outcome published for rows rolled back would be counted by the reporter
            # for a message that did not end so. One lost in a crash here, the reporter's backfill adds.
            if chunk:
                await self._publish_finalized(chunk, now)
            self._count_finalized(chunk, log)
            if last:
                return

    async def _begin_expansion(
        self, conn: AsyncConnection, row: store.MailingRow, now: datetime, log: Logger
    ) -> _Expansion:
        """The expansion's first step, in the transaction that read the mailing: what changed since the
        last one (a first or changed plan is a full pass), cancelling what no longer matches and moving
        pending messages to the current plan."""
        plan = row.plan
        full = row.expanded_at is None or row.expansion_signature != plan.signature
        changed_since = (
            None
            if full or row.expanded_at is None
            else row.expanded_at - timedelta(seconds=self.settings.client_change_margin_seconds)
        )
        expansion = _Expansion(
            plan=plan,
            full=full,
            again=row.expanded_at is not None,
            changed_since=changed_since,
            zones=plan_timezones(plan, await store.matching_timezones(conn, plan, changed_since), now),
            started=await store.expansion_start(conn),
            timer=time.perf_counter(),
        )
        # Also on a first pass: one that stopped before its end wrote messages under the plan it read.
        expansion.cancelled = await store.cancel_unmatched(conn, plan, now, changed_since)
        if expansion.zones.timezones:
            # A full pass moves every pending message to a changed plan; a later one, those of the clients
            # changed since (a new timezone is a new local window).
            expansion.moved, expansion.expired = await store.replan_pending(
                conn, plan, expansion.zones, now, changed_since
            )
        return expansion

    async def _publish_ended(self, expansion: _Expansion, now: datetime, log: Logger) -> None:
        """The outcomes of the messages the expansion's first step ended (cancelled, expired), read back
        after its commit. Either can be every client of the mailing: published and logged a chunk at a
        time, never held."""
        ended: list[tuple[str, Sequence[str]]] = (
            [(MessageStatus.CANCELLED, store.UNMATCHED_REASONS)] if expansion.cancelled else []
        )
        ended += [(MessageStatus.EXPIRED, (Reason.NO_OPENING,))] if expansion.expired else []
        if not ended:
            return
        async with self.engine.connect() as conn:
            for status, reasons in ended:
                async for chunk in store.finalized_at(
                    conn, expansion.plan.id, status, reasons, now, self.settings.dispatch_batch
                ):
                    await self._publish_finalized(chunk, now)
                    self._count_finalized(chunk, log)

    async def _expand(self, expansion: _Expansion, now: datetime, log: Logger, *, finish: bool) -> bool:
        """Writes the messages a chunk of clients a transaction, handing those due now to the sender as
        each chunk commits, so the first are sent while the rest are written; then records the expansion
        (and, with `finish`, finishes a mailing with nothing left open). False when the mailing stopped
        being active or was changed midway: the next pass starts over under what it is now, and what was
        written stays (it is idempotent; a pending message is re-planned)."""
        plan = expansion.plan
        after = 0
        size = min(FIRST_CHUNK, self.settings.dispatch_batch)
        outstanding = _Outstanding(self.settings.max_outstanding)
        while expansion.zones.timezones:
            async with self.engine.begin() as conn:
                await store.lock_mailing(conn, plan.id)
                current = await store.load_mailing(conn, plan.id)
                if current is None or current.deleted or current.status not in ACTIVE:
                    log.info("expansion stopped: the mailing is no longer active")
                    return False
                if current.plan.signature != plan.signature:
                    log.info("expansion stopped: the mailing changed; the next pass follows the change")
                    return False
                chunk = await store.insert_chunk(
                    conn,
                    plan,
                    expansion.zones,
                    now,
                    expansion.changed_since,
                    after_client_id=after,
                    limit=size,
                    queue_first=await self._queue_room(conn, current, now, outstanding, size),
                    skip_existing=expansion.again,
                )
            if chunk.expired:
                await self._publish_finalized(chunk.expired, now)
            if chunk.last_client_id is None:
                break
            after = chunk.last_client_id
            size = min(2 * size, self.settings.dispatch_batch)
            expansion.planned += chunk.pending + len(chunk.queued)
            expansion.expired += len(chunk.expired)
            self._count_finalized(chunk.expired, log)
            if chunk.queued:
                outstanding.took(len(chunk.queued))
                await self._hand_over(chunk.queued, now)
        async with self.engine.begin() as conn:
            await store.lock_mailing(conn, plan.id)
            await store.mark_expanded(conn, plan.id, plan.signature, expansion.started)
            finished = finish and await store.finish_if_done(conn, plan.id, (RUNNING,))
        self.metrics.expansion_duration.observe(time.perf_counter() - expansion.timer)
        self.metrics.planned.inc(expansion.planned)
        e = expansion
        if e.full or e.planned or e.cancelled or e.moved or e.expired:
            log.info(
                "{} expansion: {} planned, {} expired, {} cancelled, {} re-planned over {} timezones",
                "full" if e.full else "incremental",
                e.planned,
                e.expired,
                e.cancelled,
                e.moved,
                len(e.zones.timezones),
            )
        if finished:
            log.info("mailing finished: status running -> finished")
        return True

    async def _queue_room(
        self,
        conn: AsyncConnection,
        mailing: store.MailingRow,
        now: datetime,
        outstanding: _Outstanding,
        size: int,
    ) -> int:
        """How many of a chunk's first clients may have their due rows written `queued`, to go to the
        sender at once: none unless the mailing is running now (as `running_mailings` has it), else the
        room under the outstanding cap. The chunk's other due rows are written `pending`, for the
        dispatch to write again."""
        if mailing.status != RUNNING or not mailing.plan.start_at <= now < mailing.plan.end_at:
            return 0
        return await outstanding.room(conn, size)

    async def sweep(
        self,
        now: datetime,
        *,
        running: Sequence[int] | None = None,
        should_stop: Callable[[], bool] = bool,
    ) -> int:
        """Publish again what was queued or due back from a retry long ago and never picked up."""
        after = timedelta(seconds=self.settings.requeue_after_seconds)
        total = 0
        running = await self._running(now) if running is None else running
        if not running:
            return 0
        cutoff = await self._lost_before(now, after)
        if cutoff is None:
            return 0
        while running and not should_stop():
            async with self.engine.begin() as conn:
                claimed = await store.claim_stale(conn, running, now, cutoff, self.settings.dispatch_batch)
                if claimed:
                    await self.publisher.send(self._commands(claimed))
            if not claimed:
                break
            total += len(claimed)
            self.metrics.requeued.inc(len(claimed))
            for mailing_id, count in Counter(c.mailing_id for c in claimed).items():
                logger.bind(mailing_id=mailing_id).warning(
                    "recovery sweep re-published {} stale messages", count
                )
            for c in claimed:
                logger.info(
                    "message re-published by the recovery sweep",
                    mailing_id=c.mailing_id,
                    message_id=c.message_id,
                    client_id=c.client_id,
                )
            if len(claimed) < self.settings.dispatch_batch:
                break
        return total

    async def _lost_before(self, now: datetime, after: timedelta) -> datetime | None:
        """A queued message that entered the send queue before the returned instant and is not held by
        a sender is lost; None when nothing can be called lost now.

        Waiting its turn is not being lost, whether in the queue or in a sender's prefetch (deliveries a
        sender holds while its breaker is open or its database is away): only a message that newer ones
        went past (the senders record how far they claimed) counts, with `after` as the margin for
        publishes that overtook each other. When nothing newer comes, the queue is empty and no sender
        has claimed anything for `after`, whatever is still queued is lost too."""
        status = await self.publisher.send_queue_status()
        if status is None:
            return None
        if status.consumers == 0:
            # With no sender consuming, what is queued still waits in the queue: copying it again every
            # few minutes would only pile up duplicates until the senders are back.
            logger.warning("no sender consumes the send queue: the recovery sweep waits")
            return None
        cutoff = now - after
        async with self.engine.connect() as conn:
            progress = await store.send_progress(conn, self.settings.topology().send_queue)
            idle = status.ready == 0 and (progress is None or progress.claimed_at < cutoff)
            if idle and not await store.senders_holding_back(conn, now - SENDER_REPORT_MAX_AGE):
                return cutoff
        return None if progress is None else min(cutoff, progress.consumed_through - after)

    async def dispatch(
        self,
        now: datetime,
        *,
        running: Sequence[int] | None = None,
        should_stop: Callable[[], bool] = bool,
    ) -> int:
        """Hand every due message of a running mailing to the sender, batch by batch, within the cap."""
        running = await self._running(now) if running is None else running
        total, more = 0, bool(running)
        outstanding = _Outstanding(self.settings.max_outstanding)
        while more and not should_stop():
            claimed, more = await self._dispatch_batch(running, now, outstanding)
            total += claimed
        return total

    async def _running(self, now: datetime) -> list[int]:
        async with self.engine.connect() as conn:
            return await store.running_mailings(conn, now)

    async def _dispatch_batch(
        self, running: Sequence[int], now: datetime, outstanding: _Outstanding
    ) -> tuple[int, bool]:
        """Returns how many were dispatched and whether more may be due."""
        started = time.perf_counter()
        async with self.engine.begin() as conn:
            limit = await outstanding.room(conn, self.settings.dispatch_batch)
            if limit <= 0:
                logger.info("dispatch held back: {} messages outstanding", self.settings.max_outstanding)
                return 0, False
            claimed = await store.claim_due(conn, running, now, limit)
        if not claimed:
            return 0, False
        outstanding.took(len(claimed))
        await self._hand_over(claimed, now)
        self.metrics.dispatch_duration.observe(time.perf_counter() - started)
        return len(claimed), len(claimed) == limit

    async def _hand_over(self, claimed: Sequence[store.Claimed], now: datetime) -> None:
        """Publishes messages made `queued` at `now`, once that is committed: a sender's claim does not
        see a status that is not committed yet, and would drop a delivery that outran the commit. Should
        the publish fail, the rows go back to pending for the next tick; should that fail too (or the
        process die in between), the recovery sweep publishes them."""
        try:
            await self.publisher.send(self._commands(claimed))
        except Exception:
            async with self.engine.begin() as conn:
                await store.unqueue(conn, [c.message_id for c in claimed], now)
            raise
        self.metrics.dispatched.inc(len(claimed))
        for mailing_id, count in Counter(c.mailing_id for c in claimed).items():
            logger.bind(mailing_id=mailing_id).info("dispatched {} messages", count)
        HANDED.info_each((c.mailing_id, c.message_id, c.client_id) for c in claimed)

    def _commands(self, claimed: Sequence[store.Claimed]) -> list[SendMessages]:
        # Each command validated whole from plain items, not a model built an item at a time (cheaper).
        items = [
            {"message_id": c.message_id, "mailing_id": c.mailing_id, "client_id": c.client_id}
            for c in claimed
        ]
        return [
            SendMessages.model_validate({"messages": chunk})
            for chunk in chunks(items, self.settings.messages_per_event)
        ]

    async def _publish_finalized(self, finalized: Sequence[store.Finalized], now: datetime) -> None:
        outcomes = [
            MessageOutcome(
                message_id=f.message_id,
                mailing_id=f.mailing_id,
                client_id=f.client_id,
                status=MessageStatus(f.status),
                attempts=f.attempts,
                occurred_at=now,
                reason=f.reason,
            )
            for f in finalized
        ]
        await self.publisher.finalized(
            [
                MessagesFinalized(outcomes=list(chunk))
                for chunk in chunks(outcomes, self.settings.messages_per_event)
            ]
        )

    def _count_finalized(self, finalized: Sequence[store.Finalized], log: Logger) -> None:
        by_status = Counter(f.status for f in finalized)
        self.metrics.expired.inc(by_status[MessageStatus.EXPIRED])
        self.metrics.cancelled.inc(by_status[MessageStatus.CANCELLED])
        for status, count in by_status.items():
            reasons = Counter(f.reason for f in finalized if f.status == status)
            log.info("{} messages {} ({})", count, status, ", ".join(f"{r}: {n}" for r, n in reasons.items()))
        for f in finalized:
            log.info("message {}: {}", f.status, f.reason, message_id=f.message_id, client_id=f.client_id)
