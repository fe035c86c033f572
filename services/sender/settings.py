from __future__ import annotations

from pydantic import Field

from shared.domain.retry import RetryPolicy
from shared.settings import CommonSettings

# A token for the stand-in's default secret "local-probe-secret", without expiry (made once with
# services.probe_stub.token.make_token); production sets MAILING_PROBE_TOKEN.
LOCAL_PROBE_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWlsaW5nLXNlbmRlciIsImlhdCI6MTc5NTcxODA4OX0."
    "rTgpM9f-gZ79qHsphZAAvxwDHoocOg4kTwDzKLJd5G4"
)


class SenderSettings(CommonSettings):
    probe_base_url: str = "http://127.0.0.1:8090"
    probe_token: str = LOCAL_PROBE_TOKEN
    request_timeout_seconds: float = Field(default=5.0, gt=0)
    max_in_flight: int = Field(default=300, ge=1)
    # SendMessages deliveries held at once; each may carry hundreds of messages.
    prefetch: int = Field(default=8, ge=1)
    lease_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    retry_jitter: float = Field(default=0.1, ge=0, lt=1)
    flush_interval_ms: float = Field(default=20.0, gt=0)
    flush_max_rows: int = Field(default=1000, ge=1)
    # How stale the cached mailing state (paused, cancelled, end) may be when checked before a call.
    mailing_recheck_seconds: float = Field(default=0.5, ge=0)
    rate_limit_per_second: float = Field(default=0.0, ge=0)
    rate_limit_name: str = "probe"
    breaker_window: int = Field(default=50, ge=1)
    breaker_min_calls: int = Field(default=20, ge=1)
    breaker_failure_ratio: float = Field(default=0.7, gt=0, le=1)
    breaker_cooldown_seconds: float = Field(default=5.0, gt=0)
    breaker_probes: int = Field(default=3, ge=1)
    shutdown_timeout_seconds: float = Field(default=20.0, gt=0)
    queue_depth_interval_seconds: float = Field(default=5.0, gt=0)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9102, ge=0, le=65535)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            delays=self.retry_delays_seconds, max_attempts=self.max_attempts, jitter=self.retry_jitter
        )
