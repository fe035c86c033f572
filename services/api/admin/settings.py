from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings, service_setting


class AdminSettings(CommonSettings):
    """The admin UI's own settings. The report's timezone is the reporter's, so both tell the same day."""

    report_timezone: str = service_setting("reporter", "timezone", "Europe/Moscow")
    dashboard_page_size: int = Field(default=50, ge=1, le=500)
    refresh_seconds: int = Field(default=5, ge=1)
