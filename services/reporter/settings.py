from __future__ import annotations

from datetime import time
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import SecretStr, field_validator, model_validator

from shared.settings import CommonSettings, service_setting


def _setting(default: Any, name: str, **constraints: Any) -> Any:
    return service_setting("reporter", name, default, **constraints)


class ReporterSettings(CommonSettings):
    metrics_host: str = _setting("0.0.0.0", "metrics_host")  # noqa: S104 metrics and health only: compose publishes them on 127.0.0.1, Kubernetes scrapes in-cluster
    metrics_port: int = _setting(9103, "metrics_port", ge=0, le=65535)
    # The report of local day D is sent on D+1 at `send_at` in this timezone.
    timezone: str = _setting("Europe/Moscow", "timezone")
    send_at: time = _setting(time(8, 0), "send_at")
    tick_seconds: float = _setting(30.0, "tick_seconds", gt=0)
    # After a long outage only the most recent days are sent, not months of reports.
    max_missed_days: int = _setting(31, "max_missed_days", ge=1)
    prefetch: int = _setting(64, "prefetch", ge=1)
    smtp_host: str = _setting("127.0.0.1", "smtp_host")
    smtp_port: int = _setting(1025, "smtp_port", ge=1, le=65535)
    smtp_username: str = _setting("", "smtp_username")
    smtp_password: SecretStr = _setting(SecretStr(""), "smtp_password")
    # true: STARTTLS is required; false: it is used whenever the server offers it.
    smtp_starttls: bool = _setting(False, "smtp_starttls")
    # Implicit TLS from the first byte (port 465), as opposed to STARTTLS.
    smtp_tls: bool = _setting(False, "smtp_tls")
    smtp_timeout_seconds: float = _setting(30.0, "smtp_timeout_seconds", gt=0)
    # How long a reporter holds a day it sends. The SMTP timeout bounds each step of a send, not the
    # whole of it; a send still under way when the lease ends is abandoned, since another reporter may
    # then take the day over.
    lease_seconds: float = _setting(300.0, "lease_seconds", gt=0)
    mail_from: str = _setting("mailing-reporter@localhost", "mail_from")
    mail_to: tuple[str, ...] = _setting(("operators@localhost",), "mail_to", min_length=1)
    # Right-hand side of the report's Message-ID, <mailing-report-YYYY-MM-DD@domain>.
    message_id_domain: str = _setting("mailing.local", "message_id_domain")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    @model_validator(mode="after")
    def _coherent_smtp(self) -> ReporterSettings:
        if self.smtp_tls and self.smtp_starttls:
            raise ValueError("choose one of smtp_tls (implicit TLS, port 465) and smtp_starttls")
        if self.smtp_password.get_secret_value() and not self.smtp_username:
            raise ValueError("smtp_password is set but smtp_username is empty")
        if self.lease_seconds <= self.smtp_timeout_seconds:
            raise ValueError("lease_seconds must exceed smtp_timeout_seconds: a send must fit in its lease")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
