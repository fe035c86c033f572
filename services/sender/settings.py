from __future__ import annotations

from typing import Any

from pydantic import model_validator

from shared.domain.retry import RetryPolicy
from shared.settings import CommonSettings, service_setting

# A token for the stand-in's default secret "local-probe-secret", without expiry (made once with
# services.probe_stub.token.make_token); production sets MAILING_PROBE_TOKEN.
LOCAL_PROBE_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWlsaW5nLXNlbmRlciIsImlhdCI6MTc5NTcxODA4OX0."  # noqa: S105 valid only against the local stand-in's default secret
    "rTgpM9f-gZ79qHsphZAAvxwDHoocOg4kTwDzKLJd5G4"
)


def _setting(default: Any, name: str, **constraints: Any) -> Any:
    return service_setting("sender", name, default, **constraints)


class SenderSettings(CommonSettings):
    probe_base_url: str = "http://127.0.0.1:8090"
    probe_token: str = LOCAL_PROBE_TOKEN
    request_timeout_seconds: float = _setting(5.0, "request_timeout_seconds", gt=0)
    max_in_flight: int = _setting(300, "max_in_flight", ge=1)
    # SendMessages deliveries held at once; each may carry hundreds of messages.
    prefetch: int = _setting(8, "prefetch", ge=1)
    lease_seconds: float = _setting(60.0, "lease_seconds", gt=0)
    # No call starts while outcomes have waited this long for their commit (database down or frozen):
    # well inside the lease, so that a message is never called by two senders at once.
    fence_after_seconds: float = _setting(3.0, "fence_after_seconds", gt=0)
    max_attempts: int = _setting(8, "max_attempts", ge=1)
    retry_jitter: float = _setting(0.1, "retry_jitter", ge=0, lt=1)
    flush_interval_ms: float = _setting(50.0, "flush_interval_ms", gt=0)
    flush_max_rows: int = _setting(1000, "flush_max_rows", ge=1)
    # How stale the cached mailing state (paused, cancelled, end) may be when checked before a call.
    mailing_recheck_seconds: float = _setting(0.5, "mailing_recheck_seconds", ge=0)
    rate_limit_per_second: float = _setting(0.0, "rate_limit_per_second", ge=0)
    rate_limit_name: str = _setting("probe", "rate_limit_name")
    breaker_window: int = _setting(50, "breaker_window", ge=1)
    breaker_min_calls: int = _setting(20, "breaker_min_calls", ge=1)
    breaker_failure_ratio: float = _setting(0.7, "breaker_failure_ratio", gt=0, le=1)
    breaker_cooldown_seconds: float = _setting(5.0, "breaker_cooldown_seconds", gt=0)
    breaker_probes: int = _setting(3, "breaker_probes", ge=1)
    shutdown_timeout_seconds: float = _setting(20.0, "shutdown_timeout_seconds", gt=0)
    queue_depth_interval_seconds: float = _setting(5.0, "queue_depth_interval_seconds", gt=0)
    metrics_host: str = _setting("0.0.0.0", "metrics_host")  # noqa: S104 metrics and health only: compose publishes them on 127.0.0.1, Kubernetes scrapes in-cluster
    metrics_port: int = _setting(9102, "metrics_port", ge=0, le=65535)

    @model_validator(mode="after")
    def _calls_end_inside_the_lease(self) -> SenderSettings:
        # No call starts later than half the lease after the claim; it must end, and a stalled writer must
        # have stopped further calls, before the lease can pass to another sender.
        half = self.lease_seconds / 2
        if self.request_timeout_seconds >= half or self.fence_after_seconds >= half:
            raise ValueError(
                "MAILING_SENDER_REQUEST_TIMEOUT_SECONDS and MAILING_SENDER_FENCE_AFTER_SECONDS must each be"
                " under half of MAILING_SENDER_LEASE_SECONDS"
            )
        return self

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            delays=self.retry_delays_seconds, max_attempts=self.max_attempts, jitter=self.retry_jitter
        )
