from pydantic import ConfigDict

from services.probe_stub.settings import FaultLevels, ProbeStubSettings


class Faults(FaultLevels):
    """The switchable faults; `PUT /_stub/faults` validates a partial update with this same model."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    @classmethod
    def from_settings(cls, settings: ProbeStubSettings) -> "Faults":
        return cls.model_validate(settings.model_dump(include=set(cls.model_fields)))
