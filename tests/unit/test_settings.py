from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from services.api.settings import ApiSettings
from services.probe_stub.settings import ProbeStubSettings
from services.reporter.settings import ReporterSettings
from services.scheduler.settings import SchedulerSettings
from services.sender.settings import SenderSettings
from shared.settings import CommonSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SETTINGS: list[type[BaseSettings]] = [
    CommonSettings, ApiSettings, SchedulerSettings, SenderSettings, ReporterSettings, ProbeStubSettings
]  # fmt: skip


def env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        names.add(alias.upper() if isinstance(alias, str) else (prefix + name).upper())
    return names


def example_names() -> set[str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_setting_is_documented_in_the_env_example(cls: type[BaseSettings]) -> None:
    assert env_names(cls) - example_names() == set()


def test_the_env_example_names_no_setting_that_does_not_exist() -> None:
    known = set().union(*(env_names(cls) for cls in SETTINGS))
    assert example_names() - known == set()


def test_service_settings_read_their_own_prefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILING_SCHEDULER_METRICS_PORT", "9201")
    monkeypatch.setenv("MAILING_SENDER_METRICS_PORT", "9202")
    monkeypatch.setenv("METRICS_PORT", "1")
    assert SchedulerSettings(_env_file=None).metrics_port == 9201
    assert SenderSettings(_env_file=None).metrics_port == 9202
    assert SenderSettings(_env_file=None, metrics_port=7).metrics_port == 7


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"smtp_tls": True, "smtp_starttls": True}, "choose one of smtp_tls"),
        ({"smtp_password": "secret"}, "smtp_username is empty"),
    ],
)
def test_reporter_smtp_settings_that_cannot_work_are_refused_at_start(
    values: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        ReporterSettings(_env_file=None, **values)  # type: ignore[arg-type]
