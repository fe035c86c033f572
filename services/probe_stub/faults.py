from pydantic import BaseModel, ConfigDict, Field

from services.probe_stub.settings import ProbeStubSettings


class Faults(BaseModel):
    """The switchable faults; `PUT /_stub/faults` validates a partial update with this same model."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    timeout_rate: float = Field(default=0.0, ge=0, le=1)
    malformed_rate: float = Field(default=0.0, ge=0, le=1)
    reject_rate: float = Field(default=0.0, ge=0, le=1)
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    outage_seconds: float = Field(default=0.0, ge=0)

    @classmethod
    def from_settings(cls, settings: ProbeStubSettings) -> "Faults":
        return cls.model_validate(settings.model_dump(include=set(cls.model_fields)))
