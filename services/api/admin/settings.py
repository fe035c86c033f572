from __future__ import annotations

import secrets

from pydantic import Field, SecretStr

from shared.settings import CommonSettings, service_setting


class AdminSettings(CommonSettings):
    """The admin UI's own settings. The report's timezone is the reporter's, so both tell the same day."""

    report_timezone: str = service_setting("reporter", "timezone", "Europe/Moscow")
    # Signs the session cookie; a random one (the default) logs everyone out at each restart.
    session_secret: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_urlsafe(32)),
        validation_alias="mailing_admin_session_secret",
    )
    dashboard_page_size: int = Field(default=50, ge=1, le=500)
    refresh_seconds: int = Field(default=5, ge=1)
