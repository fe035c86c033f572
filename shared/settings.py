from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.domain.retry import RetryPolicy
from shared.topology import PARKED_TTL_SECONDS, Topology


class CommonSettings(BaseSettings):
    """Settings every service shares; each service subclasses it with its own fields."""

    model_config = SettingsConfigDict(
        env_prefix="MAILING_", env_file=".env", extra="ignore", validate_by_name=True, validate_by_alias=True
    )

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/mailing"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Prefix of every exchange and queue name, so test runs and environments never share a queue.
    amqp_namespace: str = "mailing"
    log_json: bool = False
    log_level: str = "INFO"
    db_pool_size: int = Field(default=10, ge=1)
    # No statement, connect or lock wait runs without a bound: the server cancels a statement after
    # db_statement_timeout_seconds, and the client gives up a few seconds later (a frozen connection
    # never answers, not even the server's cancellation).
    db_statement_timeout_seconds: float = Field(default=30.0, gt=0)
    db_connect_timeout_seconds: int = Field(default=10, ge=1)
    # Delays of the retry tiers (seconds); one RabbitMQ TTL queue per delay.
    retry_delays_seconds: tuple[float, ...] = RetryPolicy().delays
    # How long a copy stays in the parking lot before RabbitMQ drops it (the database keeps the message).
    parking_ttl_seconds: float = Field(default=PARKED_TTL_SECONDS, gt=0)

    def topology(self) -> Topology:
        return Topology(
            self.amqp_namespace,
            retry_policy=RetryPolicy(delays=self.retry_delays_seconds),
            parked_ttl_seconds=self.parking_ttl_seconds,
        )

    @property
    def db_deadline_seconds(self) -> float:
        """How long a client waits for any one statement before it drops the connection."""
        return self.db_statement_timeout_seconds + 5.0

    def db_connect_args(self) -> dict[str, Any]:
        """libpq parameters of every connection: timeouts, TCP keepalives, and a TCP user timeout (the
        deadline) that bounds both how long keepalive probes may go unanswered on an idle connection
        (Linux then takes it over from the probe count) and how long sent data may wait for its
        acknowledgement, which keepalives do not cover and the kernel would otherwise retransmit for
        about 15 minutes (a failover whose old primary vanished mid-statement)."""
        timeout_ms = int(self.db_statement_timeout_seconds * 1000)
        return {
            "connect_timeout": self.db_connect_timeout_seconds,
            "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}"
            f" -c idle_in_transaction_session_timeout={timeout_ms * 2}",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(self.db_deadline_seconds * 1000),
        }

    @property
    def psycopg_dsn(self) -> str:
        """The database URL in the form psycopg itself takes (no SQLAlchemy driver suffix)."""
        return self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def service_setting(service: str, name: str, default: Any, **constraints: Any) -> Any:
    """A field of one service's settings, read from MAILING_<SERVICE>_<NAME> so that one .env can hold
    every service's settings without clashes; code and tests still pass it by its field name."""
    return Field(default, validation_alias=f"mailing_{service}_{name}", **constraints)
