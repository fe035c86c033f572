"""Circuit breaker: when most recent calls fail, stop calling for a cool-down, then let a few probes in."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType

# While the breaker is open, a waiting call looks again this often at most (and at the cool-down's end).
POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerConfig:
    window: int = 50
    min_calls: int = 20
    failure_ratio: float = 0.7
    cooldown_seconds: float = 5.0
    probes: int = 3


class CircuitBreaker:
    def __init__(
        self,
        config: BreakerConfig,
        clock: Callable[[], float],
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.on_change = on_change
        self._results: deque[bool] = deque(maxlen=config.window)
        self._failures = 0
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probes_out = 0
        self._probes_ok = 0
        # Each half-open spell is a trial of its own, numbered from 1: a probe belongs to one.
        self._trial = 0
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self.clock() - self._opened_at >= self.config.cooldown_seconds
        ):
            self._set(BreakerState.HALF_OPEN)
            self._probes_out = self._probes_ok = 0
            self._trial += 1
        return self._state

    def cooldown_left(self) -> float:
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.cooldown_seconds - self.clock())

    def admit(self) -> int | None:
        """Whether a call may go now: None when it may not; 0 for a call of the closed breaker; for a
        probe of the half-open breaker, the number of its trial (see `record` and `release`)."""
        if self._state is BreakerState.CLOSED:
            # Nearly every call: no clock to read.
            return 0
        state = self.state
        if state is BreakerState.CLOSED:
            return 0
        if state is BreakerState.HALF_OPEN and self._probes_out < self.config.probes:
            self._probes_out += 1
            return self._trial
        return None

    def slot(self, until: float, abandoned: Callable[[], bool]) -> CallSlot:
        """A call's turn: `async with breaker.slot(until, abandoned) as slot`; `slot.acquired` says
        whether it may call; `slot.record(success)` counts the call; a slot left unrecorded is
        released on the way out, whatever the exit (see CallSlot)."""
        return CallSlot(self, until, abandoned)

    def release(self, trial: int | None = None) -> None:
        """A probe admitted in `trial` (by default the current one) that was not made after all: its place
        is free again. A call admitted otherwise (the breaker closed, or an earlier trial) frees none."""
        if self._state is BreakerState.HALF_OPEN and self._probes_out > 0 and trial in (None, self._trial):
            self._probes_out -= 1

    def record(self, success: bool, trial: int | None = None) -> None:
        """The answer to a call; `trial` is what `admit` gave it (by default a probe of the current trial,
        when half-open). While half-open, only the current trial's probes count."""
        if success and not self._failures and self._state is BreakerState.CLOSED:
            # Nearly every call: a success in a window without failures changes no count and cannot
            # open the breaker (the slot it pushes out, if any, was a success too).
            self._results.append(True)
            return
        state = self._state if self._state is BreakerState.CLOSED else self.state
        if state is BreakerState.HALF_OPEN:
            if trial not in (None, self._trial):
                # Admitted before this trial began (the breaker closed then, or an earlier trial).
                return
            if not success:
                self._open()
                return
            self._probes_ok += 1
            if self._probes_ok >= self.config.probes:
                self._results.clear()
                self._failures = 0
                self._set(BreakerState.CLOSED)
            return
        if state is BreakerState.OPEN:
            # An answer to a call made before the breaker opened changes nothing.
            return
        # Once per call: keep the failures in the window counted instead of counting them each time.
        results = self._results
        if len(results) == results.maxlen and not results[0]:
            self._failures -= 1
        results.append(success)
        if not success:
            self._failures += 1
        calls = len(results)
        if calls >= self.config.min_calls and self._failures >= self.config.failure_ratio * calls:
            self._open()

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._results.clear()
        self._failures = 0
        self.opened_count += 1
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self.on_change is not None:
                self.on_change(state)


class CallSlot:
    """Waits (until `until` on the breaker's clock, or until `abandoned()`) for the breaker to let a
    call through. A half-open breaker lets only a few probes through: a slot taken but left without a
    recorded call (the call was not made after all) is given back on exit, so no exit path keeps it. A
    slot admitted before a half-open trial began neither frees nor counts as one of its probes."""

    __slots__ = ("_abandoned", "_breaker", "_recorded", "_trial", "_until")

    def __init__(self, breaker: CircuitBreaker, until: float, abandoned: Callable[[], bool]) -> None:
        self._breaker = breaker
        self._until = until
        self._abandoned = abandoned
        self._recorded = False
        self._trial: int | None = None  # what the breaker's `admit` gave this slot

    @property
    def acquired(self) -> bool:
        return self._trial is not None

    async def __aenter__(self) -> CallSlot:
        breaker = self._breaker
        self._trial = breaker.admit()
        while self._trial is None and not self._abandoned() and breaker.clock() < self._until:
            await asyncio.sleep(max(POLL_SECONDS, min(breaker.cooldown_left(), MAX_POLL_SECONDS)))
            self._trial = breaker.admit()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._trial and not self._recorded:
            self._breaker.release(self._trial)

    def record(self, success: bool) -> None:
        self._recorded = True
        self._breaker.record(success, self._trial)
