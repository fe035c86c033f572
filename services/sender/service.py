"""The sender's core: claim a delivery's messages, call the API for each with bounded concurrency,
and hand every outcome to the batched writer. The delivery is acked (by the consumer wrapper) only
after all its outcomes are committed and their copies confirmed."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from loguru import logger

from services.sender import outcome
from services.sender.breaker import CircuitBreaker
from services.sender.checks import Claim, MailingInfo, Verdict, check_sendable
from services.sender.metrics import SenderMetrics
from services.sender.pacing import Pacer
from services.sender.provider import Provider
from services.sender.ratelimit import RateLimiter
from services.sender.settings import SenderSettings
from services.sender.writer import OutcomeWriter
from shared.broker import Delivery
from shared.contracts import SendMessages
from shared.db import TRANSIENT_DB_ERRORS
from shared.domain.retry import FailureKind
from shared.domain.statuses import MessageStatus, Route

if TYPE_CHECKING:
    from loguru import Logger

FENCE_POLL_SECONDS = 0.25
RECHECK_AFTER_WAIT_SECONDS = 0.05


class ClaimStore(Protocol):
    async def claim(self, ids: Sequence[int], lease_seconds: float) -> list[Claim]: ...

    async def mailings(self, ids: Sequence[int]) -> dict[int, MailingInfo]: ...


class MailingCache:
    """Mailing state no older than `max_age`, so the check before each call costs no query."""

    def __init__(self, store: ClaimStore, max_age: float, monotonic: Callable[[], float]) -> None:
        self.store = store
        self.max_age = max_age
        self.monotonic = monotonic
        self._entries: dict[int, tuple[float, MailingInfo]] = {}
        self._refreshing: dict[int, asyncio.Task[MailingInfo]] = {}

    def fresh(self, mailing_id: int) -> MailingInfo | None:
        """The cached state if it is recent enough, without a query (and without an await)."""
        entry = self._entries.get(mailing_id)
        if entry is not None and self.monotonic() - entry[0] <= self.max_age:
            return entry[1]
        return None

    async def get(self, mailing_id: int) -> MailingInfo:
        info = self.fresh(mailing_id)
        if info is not None:
            return info
        entry = self._entries.get(mailing_id)
        task = self._refreshing.get(mailing_id)
        if task is None:
            task = asyncio.create_task(self._refresh(mailing_id, entry))
            self._refreshing[mailing_id] = task
        return await asyncio.shield(task)

    async def _refresh(self, mailing_id: int, entry: tuple[float, MailingInfo] | None) -> MailingInfo:
        try:
            found = await self.store.mailings([mailing_id])
        finally:
            self._refreshing.pop(mailing_id, None)
        info = found.get(mailing_id)
        if info is None:
            if entry is None:
                raise LookupError(f"mailing {mailing_id} not found")
            info = entry[1]
        self._entries[mailing_id] = (self.monotonic(), info)
        return info


@dataclass(frozen=True)
class Clocks:
    now: Callable[[], datetime]
    monotonic: Callable[[], float]


@dataclass(frozen=True)
class SenderParts:
    """What the sender works with: where claims and mailings come from, whom it calls, where outcomes
    go, what it counts."""

    store: ClaimStore
    provider: Provider
    writer: OutcomeWriter
    metrics: SenderMetrics


@dataclass(frozen=True)
class Guards:
    """What holds calls back: the circuit breaker, the pacing of call starts, the shared rate limit."""

    breaker: CircuitBreaker
    pacer: Pacer | None = None
    limiter: RateLimiter | None = None


# A claimed message waiting for a caller: its claim, when to give up waiting (monotonic), its batch.
_Job = tuple[Claim, float, "_Batch"]


class _Batch:
    """The messages of one delivery: done when every one has an outcome handed to the writer."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.flushes: set[asyncio.Future[None]] = set()
        self.error: BaseException | None = None
        self.done = asyncio.get_running_loop().create_future()

    def finish(self, flush: asyncio.Future[None] | None, error: BaseException | None = None) -> None:
        if flush is not None:
            self.flushes.add(flush)
        if error is not None and self.error is None:
            self.error = error
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)


class Sender:
    def __init__(
        self,
        settings: SenderSettings,
        parts: SenderParts,
        guards: Guards,
        clocks: Clocks,
        rng: random.Random | None = None,
    ) -> None:
        self.store = parts.store
        self.provider = parts.provider
        self.writer = parts.writer
        self.metrics = parts.metrics
        self.breaker = guards.breaker
        self.pacer = guards.pacer
        self.limiter = guards.limiter
        self.clocks = clocks
        self.topology = settings.topology()
        self.policy = settings.retry_policy()
        self.lease_seconds = settings.lease_seconds
        self.fence_after_seconds = settings.fence_after_seconds
        self.max_in_flight = settings.max_in_flight
        self.request_timeout = settings.request_timeout_seconds
        self.rng = rng or random.Random()  # noqa: S311 retry jitter, not security
        self.cache = MailingCache(parts.store, settings.mailing_recheck_seconds, clocks.monotonic)
        # A fixed pool of callers, one per request allowed in flight: cheaper than a task per message.
        # Jobs wait in a plain deque and idle callers on futures of their own: an asyncio.Queue does
        # the same with several more calls per message.
        self._jobs: deque[_Job] = deque()
        self._idle_callers: deque[asyncio.Future[None]] = deque()
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0
        self.calls_in_flight = 0
        self._idle = asyncio.Event()
        self.stopping = False
        self.fenced = False

    def stop(self) -> None:
        """Messages not yet called go back to the send queue instead of waiting for a caller."""
        self.stopping = True

    async def close(self, grace_seconds: float) -> None:
        """Give back what was not called, let the calls under way finish (within the grace), then stop."""
        self.stopping = True
        if self._busy or self._jobs:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_seconds)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    async def handle(self, delivery: Delivery[SendMessages]) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._work(), name=f"caller-{i}") for i in range(self.max_in_flight)
            ]
        # Claimed as soon as received, breaker open or not: a delivery held unclaimed would look lost to
        # the scheduler's sweep. Each message then waits for the breaker within its own give-up time.
        await self._wait_for_fence()
        ids = [item.message_id for item in delivery.body.messages]
        # The lease runs from the claim statement's start, which may wait for row locks: counted from here.
        claiming = self.clocks.monotonic()
        claims = await self.store.claim(ids, self.lease_seconds)
        if claims:
            # Give up waiting (breaker, callers) well before the lease runs out, so no other copy can
            # claim the message while this one might still call.
            give_up_at = claiming + self.lease_seconds / 2
            batch = _Batch(len(claims))
            self._jobs.extend([(claim, give_up_at, batch) for claim in claims])
            self._wake_callers(len(claims))
            # Shielded: a flush is shared by many deliveries, and one delivery's cancellation (its channel
            # closed) must not cancel what the others wait for.
            await batch.done
            await asyncio.gather(*map(asyncio.shield, batch.flushes))
            if batch.error is not None:
                raise batch.error
        self.metrics.deliveries.labels("done").inc()

    def check_fence(self) -> bool:
        """True while outcomes wait longer than `fence_after_seconds` for their commit. A call made then
        might never be recorded: its lease would run out, another sender would claim the message and
        send it again. So no call starts until the writer catches up."""
        fenced = self.writer.unwritten_for() > self.fence_after_seconds
        if fenced is not self.fenced:
            self.fenced = fenced
            self.metrics.fenced.set(int(fenced))
            if fenced:
                logger.error(
                    "fenced: outcomes not recorded for {:.1f}s; no calls until the database takes them",
                    self.writer.unwritten_for(),
                )
            else:
                logger.warning("fence lifted: outcomes are recorded again")
        return fenced

    def _wake_callers(self, jobs: int) -> None:
        idle = self._idle_callers
        while jobs and idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                jobs -= 1

    async def _work(self) -> None:
        jobs = self._jobs
        loop = asyncio.get_running_loop()
        while True:
            if not jobs:
                waiter = loop.create_future()
                self._idle_callers.append(waiter)
                await waiter
                continue
            claim, give_up_at, batch = jobs.popleft()
            self._busy += 1
            try:
                flush = await self._deliver(claim, give_up_at)
            except Exception as exc:
                logger.bind(message_id=claim.message_id, mailing_id=claim.mailing_id).exception(
                    "delivery step failed"
                )
                batch.finish(None, exc)
            else:
                batch.finish(flush)
            finally:
                self._busy -= 1
                if not self._busy and not jobs:
                    self._idle.set()

    async def _wait_for_fence(self) -> None:
        # Holding the delivery, not requeueing it: each requeue counts towards the queue's delivery limit,
        # which would park a healthy delivery. Should the fence last, the scheduler's sweep copies its
        # messages to another sender, and this one's claim finds them final.
        while self.check_fence() and not self.stopping:  # noqa: ASYNC110
            await asyncio.sleep(FENCE_POLL_SECONDS)

    def _abandoned(self) -> bool:
        return self.stopping

    async def _deliver(self, claim: Claim, give_up_at: float) -> asyncio.Future[None]:
        monotonic = self.clocks.monotonic
        topology = self.topology
        started = monotonic()
        if self.stopping or started >= give_up_at:
            return self._give_back(claim, topology.send_key)
        mailing = self.cache.fresh(claim.mailing_id) or await self._read_mailing(claim)
        if mailing is None:
            return self._give_back(claim, topology.retry_key(0))
        now, checked = self.clocks.now(), monotonic()
        verdict = check_sendable(claim, mailing, now)
        if verdict.action != Route.SEND:
            return self._not_sent(claim, verdict)
        # Every wait below (pacing, breaker, rate limit) may let a pause, cancel, the end or the
        # window's close come first: a long one is followed by the check again.
        if self.pacer is not None and (pause := self.pacer.reserve()):
            await asyncio.sleep(min(pause, max(0.0, give_up_at - started)))
            if self.stopping or monotonic() >= give_up_at:
                return self._give_back(claim, topology.send_key)
        async with self.breaker.slot(give_up_at, self._abandoned) as slot:
            if not slot.acquired:
                return self._give_back(claim, topology.retry_key(0))
            if self.limiter is not None and not await _rate_token(self.limiter, claim, give_up_at):
                return self._give_back(claim, topology.retry_key(0))
            if monotonic() - started > RECHECK_AFTER_WAIT_SECONDS:
                rechecked = self.cache.fresh(claim.mailing_id) or await self._read_mailing(claim)
                if rechecked is None:
                    return self._give_back(claim, topology.retry_key(0))
                mailing, now, checked = rechecked, self.clocks.now(), monotonic()
                verdict = check_sendable(claim, mailing, now)
                if verdict.action != Route.SEND:
                    return self._not_sent(claim, verdict)
            # Never let a call still be under way when the mailing ends.
            left = (mailing.end_at - now).total_seconds() - (monotonic() - checked)
            if left <= 0:
                return self._not_sent(claim, check_sendable(claim, mailing, mailing.end_at))
            if self.check_fence():
                return self._give_back(claim, topology.send_key)
            if monotonic() >= give_up_at:
                # A wait above (the rate limit's turn, a slow read of the mailing) ran past it: the lease
                # could run out during the call, and another copy be claimed and sent.
                return self._give_back(claim, topology.send_key)
            self.calls_in_flight += 1
            try:
                result = await self.provider.send(
                    claim, mailing.text, left if left < self.request_timeout else None
                )
            finally:
                self.calls_in_flight -= 1
            slot.record(result.ok or result.kind is FailureKind.PERMANENT)
        # Decided once, right after the call.
        decided = outcome.after_call(
            claim,
            result,
            now=self.clocks.now(),
            end_at=mailing.end_at,
            policy=self.policy,
            topology=topology,
            rand=self.rng.random,
        )
        if decided.status is not MessageStatus.SENT:
            _about(claim).info(
                "attempt {} failed ({}): {} {}", claim.attempts, result.reason, decided.status, decided.reason
            )
        return self.writer.submit(decided)

    async def _read_mailing(self, claim: Claim) -> MailingInfo | None:
        """The mailing's state from the database, or None when it cannot be read now (the message is
        then given back, not called on a state nobody checked)."""
        try:
            return await self.cache.get(claim.mailing_id)
        except Exception as exc:
            logger.bind(message_id=claim.message_id, mailing_id=claim.mailing_id).warning(
                "could not read the mailing ({!r}); giving the message back", exc
            )
            return None

    def _give_back(self, claim: Claim, route: str) -> asyncio.Future[None]:
        return self.writer.submit(outcome.given_back(claim, route))

    def _not_sent(self, claim: Claim, verdict: Verdict) -> asyncio.Future[None]:
        decided = outcome.not_sent(claim, verdict)
        _about(claim).info("not sending: {} -> {}", verdict.reason, decided.status)
        return self.writer.submit(decided)


async def _rate_token(limiter: RateLimiter, claim: Claim, give_up_at: float) -> bool:
    """A token of the shared rate limit; False when none came in time or the database could not be asked
    (the message is then given back, not left leased without an outcome until its lease runs out)."""
    try:
        return await limiter.acquire(give_up_at)
    except TRANSIENT_DB_ERRORS as exc:
        logger.bind(message_id=claim.message_id, mailing_id=claim.mailing_id).warning(
            "could not take a rate-limit token ({!r}); giving the message back", exc
        )
        return False


def _about(claim: Claim) -> Logger:
    return logger.bind(message_id=claim.message_id, mailing_id=claim.mailing_id, client_id=claim.client_id)
