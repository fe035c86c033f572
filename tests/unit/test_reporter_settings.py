from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.reporter.settings import ReporterSettings

pytestmark = pytest.mark.unit


def test_a_lease_that_a_send_within_the_smtp_timeout_could_outlast_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="lease_seconds must exceed smtp_timeout_seconds"):
        ReporterSettings(_env_file=None, lease_seconds=30, smtp_timeout_seconds=30)


def test_the_default_lease_outlasts_the_default_smtp_timeout() -> None:
    settings = ReporterSettings(_env_file=None)
    assert settings.lease_seconds > settings.smtp_timeout_seconds
