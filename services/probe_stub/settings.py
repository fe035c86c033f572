from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.probe_stub.recorder import REQUEST_LOG_SIZE


class FaultLevels(BaseModel):
    """The faults the stand-in injects: set at start from settings, changed at run time by its API."""

    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    malformed_rate: float = Field(default=0.0, ge=0, le=1)
    reject_rate: float = Field(default=0.0, ge=0, le=1)
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    outage_seconds: float = Field(default=0.0, ge=0)


class ProbeStubSettings(BaseSettings, FaultLevels):
    model_config = SettingsConfigDict(env_prefix="MAILING_PROBE_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    jwt_secret: str = "local-probe-secret"  # noqa: S105 the local stand-in's default; the stand-in runs in development only
    log_level: str = "INFO"
    log_json: bool = False
    # The newest send requests kept for GET /_stub/requests; older ones are forgotten.
    request_log_size: int = Field(default=REQUEST_LOG_SIZE, ge=1)
