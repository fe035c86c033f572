"""What became of one claimed message: decided once (right after its call, or instead of it), then
written by the store, counted by the writer and published by the bus, in this one shape."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NamedTuple

from services.sender.checks import Claim, Verdict
from shared.contracts import SendItem
from shared.domain.retry import ProviderResult, RetryPolicy, decide_retry
from shared.domain.statuses import FINAL_MESSAGE_STATUSES, MessageStatus, Route
from shared.topology import Topology

_SENT = MessageStatus.SENT


class Outcome(NamedTuple):
    claim: Claim
    # The status written: the current one (queued) when the message is given back uncalled.
    status: MessageStatus
    # Where a copy of the message goes once the status is written (a retry tier, the parking lot, the
    # send queue), None when none does.
    route: str | None = None
    # Why it was not sent (the message's `last_error`).
    reason: str | None = None
    sent_at: datetime | None = None
    next_attempt_at: datetime | None = None
    not_before: datetime | None = None
    # The message's attempts after the write when the claim's attempt is given back (the call was not
    # made, or was not the message's fault); None keeps the claim's count. Set, not added, so a write
    # repeated after a lost reply leaves the same row.
    attempts: int | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_MESSAGE_STATUSES

    @property
    def attempts_after(self) -> int:
        return self.claim.attempts if self.attempts is None else self.attempts

    def item(self) -> SendItem:
        """The message as a copy of it is published."""
        claim = self.claim
        return SendItem(message_id=claim.message_id, mailing_id=claim.mailing_id, client_id=claim.client_id)


def sent(claim: Claim, at: datetime) -> Outcome:
    return Outcome(claim, MessageStatus.SENT, sent_at=at)


def given_back(claim: Claim, route: str) -> Outcome:
    """Not called (stopping, breaker open, no caller in time): queued again on `route`, its attempt
    given back."""
    return Outcome(claim, MessageStatus.QUEUED, route, attempts=claim.attempts - 1)


def not_sent(claim: Claim, verdict: Verdict) -> Outcome:
    """The check before the call said no: cancelled, expired, or back to pending until `not_before`."""
    return Outcome(
        claim,
        verdict.action.status,
        reason=verdict.reason,
        not_before=verdict.not_before,
        attempts=claim.attempts - 1,
    )


def after_call(
    claim: Claim,
    result: ProviderResult,
    *,
    now: datetime,
    end_at: datetime,
    policy: RetryPolicy,
    topology: Topology,
    rand: Callable[[], float],
) -> Outcome:
    """The outcome of a call: sent; or retrying on its tier, failed to the parking lot, or expired.
    `rand` (in [0, 1), for the retry's jitter) is drawn only for a failure."""
    if result.ok:
        return Outcome(claim, _SENT, None, None, now)
    decision = decide_retry(policy, claim.attempts, result, now, end_at, rand())
    # An attempt that was not the message's fault (a refused token) is given back.
    attempts = None if decision.counts else claim.attempts - 1
    if decision.action == Route.RETRY:
        assert decision.tier is not None and decision.delay is not None  # noqa: S101 narrows a type for mypy; decide_retry sets both for a retry
        return Outcome(
            claim,
            MessageStatus.RETRYING,
            topology.retry_key(decision.tier),
            reason=decision.reason,
            next_attempt_at=now + timedelta(seconds=decision.delay),
            attempts=attempts,
        )
    if decision.action == Route.FAIL:
        return Outcome(claim, MessageStatus.FAILED, topology.parking_key, reason=decision.reason)
    return Outcome(claim, MessageStatus.EXPIRED, reason=decision.reason, attempts=attempts)
