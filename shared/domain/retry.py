import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from shared.domain.statuses import Route


class FailureKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    # 401/403: the API refuses our token, not the message. Operators can fix the token, so such an
    # attempt is not counted against the message: it waits (until the mailing ends) instead of failing.
    AUTH = "auth"


@dataclass(frozen=True)
class ProviderResult:
    ok: bool
    kind: FailureKind | None
    reason: str
    retry_after: float | None = None


_REASON_LIMIT = 200


def _short(text: str) -> str:
    return text if len(text) <= _REASON_LIMIT else text[:_REASON_LIMIT] + "..."


def _parse_retry_after(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        return None  # an HTTP-date would need a clock; the tier delays cover it
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _classify_ok_body(body: bytes) -> ProviderResult:
    try:
        data = json.loads(body)
    except ValueError:
        return ProviderResult(False, FailureKind.TRANSIENT, "malformed body: not JSON")
    if not isinstance(data, dict):
        return ProviderResult(False, FailureKind.TRANSIENT, "malformed body: not a JSON object")
    code = data.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        return ProviderResult(False, FailureKind.TRANSIENT, "malformed body: no integer code")
    if code != 0:
        message = data.get("message")
        detail = f": {message}" if isinstance(message, str) and message else ""
        return ProviderResult(False, FailureKind.TRANSIENT, _short(f"provider code {code}{detail}"))
    return _OK


_OK = ProviderResult(True, None, "ok")
_OK_BODIES = frozenset({b'{"code":0,"message":"OK"}', b'{"code": 0, "message": "OK"}'})


def classify_response(status_code: int, body: bytes, retry_after_header: str | None = None) -> ProviderResult:
    if status_code == 200:
        # The documented success answer, byte for byte, needs no parsing.
        return _OK if body in _OK_BODIES else _classify_ok_body(body)
    reason = f"http {status_code}"
    if status_code == 400:
        return ProviderResult(False, FailureKind.PERMANENT, reason)
    if status_code in (401, 403):
        return ProviderResult(False, FailureKind.AUTH, reason)
    if status_code in (429, 503):
        return ProviderResult(False, FailureKind.TRANSIENT, reason, _parse_retry_after(retry_after_header))
    return ProviderResult(False, FailureKind.TRANSIENT, reason)


def classify_exception(exc: BaseException) -> ProviderResult:
    name = type(exc).__name__
    detail = str(exc)
    # HTTP clients' own timeout types (httpx) do not all derive from TimeoutError.
    if isinstance(exc, TimeoutError) or any("Timeout" in cls.__name__ for cls in type(exc).__mro__):
        label = "timeout"
    elif isinstance(exc, ConnectionRefusedError):
        label = "connection refused"
    elif isinstance(exc, ConnectionError | OSError) or "Connect" in name:
        label = "connection error"
    else:
        label = "error"
    reason = f"{label}: {name}" + (f": {detail}" if detail else "")
    return ProviderResult(False, FailureKind.TRANSIENT, _short(reason))


# A refused token is retried after about this long (rounded up to a tier, the last one at most): its
# attempts do not grow, so the usual growing delay would keep it at the first tier and cycle a whole
# backlog through claims and writes every few seconds while the token is broken. Long enough not to,
# short enough that the messages resume soon after the token is fixed.
AUTH_RETRY_SECONDS = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    delays: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
    max_attempts: int = 8
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not self.delays or any(d <= 0 for d in self.delays):
            raise ValueError("retry delays must be a non-empty tuple of positive seconds")
        if list(self.delays) != sorted(self.delays):
            raise ValueError("retry delays must grow")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")


@dataclass(frozen=True)
class RetryDecision:
    action: Route
    tier: int | None = None
    delay: float | None = None
    reason: str = ""
    # False when the failed attempt was not the message's fault (a refused token): it is given back.
    counts: bool = True


def decide_retry(
    policy: RetryPolicy,
    attempts_made: int,
    result: ProviderResult,
    now: datetime,
    end_at: datetime,
    rand: float,
) -> RetryDecision:
    if result.ok:
        raise ValueError("a successful result needs no retry decision")
    if result.kind is FailureKind.PERMANENT:
        return RetryDecision(Route.FAIL, reason=result.reason)
    counts = result.kind is not FailureKind.AUTH
    if counts and attempts_made >= policy.max_attempts:
        return RetryDecision(Route.FAIL, reason=f"attempts exhausted ({attempts_made}): {result.reason}")
    if counts:
        base = policy.delays[min(max(attempts_made - 1, 0), len(policy.delays) - 1)]
        desired = base * (1 + policy.jitter * (2 * rand - 1))
    else:
        desired = AUTH_RETRY_SECONDS
    if result.retry_after is not None:
        desired = max(desired, result.retry_after)
    tier = next((i for i, delay in enumerate(policy.delays) if delay >= desired), len(policy.delays) - 1)
    delay = policy.delays[tier]
    if now + timedelta(seconds=delay) >= end_at:
        return RetryDecision(
            Route.EXPIRE, reason=f"mailing ends before next attempt: {result.reason}", counts=counts
        )
    return RetryDecision(Route.RETRY, tier=tier, delay=delay, reason=result.reason, counts=counts)
