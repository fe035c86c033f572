"""Spread the calls' starts evenly in time instead of letting them leave in bursts.

A fixed pool of callers is "answer-clocked": each caller starts its next call the moment its last answer
arrives, so calls that once left together keep leaving together, and every burst queues on the
provider's side and on ours: at 50 ms of provider latency and 100 callers, milliseconds on every
call (docs/benchmarks.md). Pacing, as TCP pacing does for the same reason, lets calls start no
closer than `min latency / (callers x gain)` apart: the slots still add up to more than the callers can
use, so pacing never lowers the rate, it only takes the bursts out. With a fast provider the interval is
a few microseconds and no caller ever waits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

# Start slots per second are this much above what the callers could use at the lowest latency seen.
PACING_GAIN = 1.25
# The lowest latency is taken over the last one to two windows, so it follows a provider that speeds up;
# after two windows without a call (idle, or every call stuck) nothing is known and nothing is paced.
LATENCY_WINDOW_SECONDS = 1.0
# Shorter waits are not worth a timer: such a call starts at once (its slot is still taken).
MIN_WAIT_SECONDS = 0.001
# No caller waits longer than this for its slot, whatever the latency seen (all calls timing out, say):
# pacing smooths bursts, it is not a rate limit.
MAX_WAIT_SECONDS = 0.5


class Pacer:
    def __init__(self, callers: int, monotonic: Callable[[], float], gain: float = PACING_GAIN) -> None:
        self.callers = callers
        self.monotonic = monotonic
        self.gain = gain
        self._forget()

    def _forget(self) -> None:
        self._next_slot = 0.0
        self._window_started = self.monotonic()
        self._window_min = math.inf
        self._previous_min = math.inf
        # Seconds between two call starts; 0 until a call has been timed.
        self.interval = 0.0

    def observe(self, duration: float) -> None:
        """Record how long one call took (answered or not)."""
        now = self.monotonic()
        if now - self._window_started >= LATENCY_WINDOW_SECONDS:
            self._previous_min, self._window_min = self._window_min, math.inf
            self._window_started = now
        # Comparisons rather than min() and max() here and below: this runs for every call, and the
        # builtins cost more than the rest of it.
        if duration < self._window_min:
            self._window_min = duration
        lowest = self._window_min if self._window_min < self._previous_min else self._previous_min
        interval = lowest / (self.callers * self.gain)
        if interval < self.interval and now + interval < self._next_slot:
            # The provider got faster: slots handed out at the old spacing are pulled in.
            self._next_slot = now + interval
        self.interval = interval

    def reserve(self) -> float:
        """Take the next start slot; returns how long to wait for it (0: start now)."""
        now = self.monotonic()
        if now - self._window_started >= 2 * LATENCY_WINDOW_SECONDS:
            self._forget()
        slot = self._next_slot
        if slot <= now:
            self._next_slot = now + self.interval
            return 0.0
        if slot > now + MAX_WAIT_SECONDS:
            slot = now + MAX_WAIT_SECONDS
        self._next_slot = slot + self.interval
        wait = slot - now
        return wait if wait >= MIN_WAIT_SECONDS else 0.0
