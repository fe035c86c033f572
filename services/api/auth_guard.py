"""What an attacker's guesses cost: failed authentications counted per client address in a sliding window
(slowed past a first number, refused with 429 past a second), and API keys remembered for a few seconds so
that neither a known nor an unknown key costs a database round trip on every request.

Both live in the memory of one API process: with several replicas an attacker gets each replica's
allowance, and a revocation reaches the other replicas when their cache entry ends (at most
MAILING_KEY_CACHE_SECONDS, 5 s or less)."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from math import ceil

from services.api.auth import Principal

# Bounds on what an attacker can make us remember: the oldest entries go first.
MAX_TRACKED_SOURCES = 10_000
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class FailurePolicy:
    window_seconds: float
    before_delay: int
    before_refusal: int
    delay_step_seconds: float
    max_delay_seconds: float


class FailedAuthentications:
    """Failures per source within the last window_seconds; the clock is passed in (monotonic seconds)."""

    def __init__(self, policy: FailurePolicy) -> None:
        self.policy = policy
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, source: str, now: float) -> deque[float]:
        failures = self._failures.get(source)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.policy.window_seconds:
            failures.popleft()
        if not failures:
            del self._failures[source]
        return failures

    def retry_after(self, source: str, now: float) -> int | None:
        """Seconds until the source may try again, or None when it may now."""
        failures = self._recent(source, now)
        if len(failures) < self.policy.before_refusal:
            return None
        # The failure that, once out of the window, brings the count under the refusal threshold.
        freeing = failures[len(failures) - self.policy.before_refusal]
        return max(1, ceil(freeing + self.policy.window_seconds - now))

    def fail(self, source: str, now: float) -> float:
        """Records a failure; how long to hold the answer to it."""
        failures = self._recent(source, now)
        if source not in self._failures:
            self._failures[source] = failures
            if len(self._failures) > MAX_TRACKED_SOURCES:
                self._failures.popitem(last=False)
        failures.append(now)
        over = len(failures) - self.policy.before_delay
        if over <= 0:
            return 0.0
        return min(over * self.policy.delay_step_seconds, self.policy.max_delay_seconds)


class KeyCache:
    """Key hash -> principal (or None: unknown or revoked) until an expiry; the clock is passed in."""

    def __init__(self, known_seconds: float, unknown_seconds: float) -> None:
        self.known_seconds = known_seconds
        self.unknown_seconds = unknown_seconds
        self._entries: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()

    def get(self, digest: str, now: float) -> tuple[bool, Principal | None]:
        """(found, principal): found is False when the database must be asked."""
        entry = self._entries.get(digest)
        if entry is None:
            return False, None
        expires, principal = entry
        if expires <= now:
            del self._entries[digest]
            return False, None
        return True, principal

    def put(self, digest: str, principal: Principal | None, now: float) -> None:
        ttl = self.known_seconds if principal is not None else self.unknown_seconds
        if ttl <= 0:
            return
        self._entries[digest] = (now + ttl, principal)
        self._entries.move_to_end(digest)
        if len(self._entries) > MAX_CACHED_KEYS:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def client_address(peer: str | None, forwarded_for: str | None, trusted_hops: int) -> str:
    """The caller's address: each trusted proxy appends the address it was called from to
    X-Forwarded-For, so the caller is the trusted_hops-th entry from the right. Anything left of it was
    written by the caller and proves nothing."""
    if trusted_hops > 0 and forwarded_for:
        hops = [part.strip() for part in forwarded_for.split(",") if part.strip()]
        if hops:
            return hops[-min(trusted_hops, len(hops))]
    return peer or "unknown"
