"""Identity settings: the development provider stands in only in development; production invents
nothing; what development generates is kept once, privately, in the local state directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from scripts.first_run import report
from services.api.entrypoint import with_development_secrets
from services.api.local_state import ensure_admin_key, read_admin_key
from services.api.settings import DEV_OIDC_ISSUER, ApiSettings
from services.probe_stub.settings import ProbeStubSettings
from services.reporter.settings import ReporterSettings
from shared.domain.roles import Role

pytestmark = pytest.mark.unit

SECRET = "s" * 40
PRODUCTION_KEY = "k" * 40
ROOT = Path(__file__).resolve().parents[2]


def test_development_without_an_issuer_uses_the_development_provider() -> None:
    oidc = ApiSettings(_env_file=None).oidc()
    assert oidc is not None and oidc.development and oidc.issuer == DEV_OIDC_ISSUER
    assert oidc.audience == oidc.client_id


def test_production_without_an_issuer_has_no_provider_at_all() -> None:
    settings = ApiSettings(_env_file=None, environment="production", bootstrap_api_key=PRODUCTION_KEY)
    assert settings.oidc() is None


def test_a_configured_provider_is_used_with_its_audience_claim_and_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILING_ENVIRONMENT", "production")
    monkeypatch.setenv("MAILING_OIDC_ISSUER", "https://kc.example.com/realms/mailing")
    monkeypatch.setenv("MAILING_OIDC_CLIENT_ID", "mailing")
    monkeypatch.setenv("MAILING_OIDC_AUDIENCE", "mailing-api")
    monkeypatch.setenv("MAILING_OIDC_ROLE_CLAIM", "realm_access.roles")
    monkeypatch.setenv("MAILING_OIDC_ROLE_MAP", '{"mailing-admins": "admin"}')
    monkeypatch.setenv("MAILING_SESSION_SECRET", SECRET)
    monkeypatch.setenv("MAILING_BOOTSTRAP_API_KEY", PRODUCTION_KEY)
    oidc = ApiSettings(_env_file=None).oidc()
    assert oidc is not None and not oidc.development
    assert oidc.discovery_url == "https://kc.example.com/realms/mailing/.well-known/openid-configuration"
    assert (oidc.audience, oidc.role_claim, oidc.role_map) == (
        "mailing-api",
        "realm_access.roles",
        {"mailing-admins": Role.ADMIN},
    )


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (
            {"environment": "production", "oidc_issuer": "https://id.example", "oidc_client_id": "c"},
            "SESSION_SECRET",
        ),
        ({"oidc_issuer": "https://id.example"}, "OIDC_CLIENT_ID"),
        ({"session_secret": "short"}, "at least 32"),
        ({"oidc_role_map": {"x": "root"}}, "oidc_role_map"),
        ({"public_url": "mailing.example.com"}, "http"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_start(values: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        ApiSettings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (None, "production needs MAILING_BOOTSTRAP_API_KEY"),
        ("", "production needs MAILING_BOOTSTRAP_API_KEY"),
        ("x" * 31, "at least 32 characters"),
        ("REPLACE-ME-with-a-long-random-admin-key", "placeholder"),
        ("replace-me-" + "x" * 40, "placeholder"),
    ],
)
def test_production_refuses_a_missing_short_or_example_bootstrap_key(key: str | None, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        ApiSettings(_env_file=None, environment="production", bootstrap_api_key=key)


def test_production_takes_a_long_random_key_and_development_takes_any() -> None:
    assert ApiSettings(_env_file=None, environment="production", bootstrap_api_key=PRODUCTION_KEY)
    assert ApiSettings(_env_file=None, bootstrap_api_key="short")


def test_the_api_refuses_to_start_in_production_without_a_key_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILING_")}
    env |= {"MAILING_ENVIRONMENT": "production", "MAILING_BOOTSTRAP_API_KEY": "too-short"}
    done = subprocess.run(
        [sys.executable, "-m", "services.api"],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "api: refusing to start: MAILING_BOOTSTRAP_API_KEY must be at least 32 characters in production"
    ]


def test_an_https_public_url_makes_cookies_secure() -> None:
    assert ApiSettings(_env_file=None, public_url="https://m.example.com/").secure_cookies
    assert not ApiSettings(_env_file=None).secure_cookies


def test_empty_values_in_the_env_file_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BOOTSTRAP_API_KEY", "OIDC_ISSUER", "OIDC_CLIENT_SECRET", "SESSION_SECRET"):
        monkeypatch.setenv(f"MAILING_{name}", "")
    settings = ApiSettings(_env_file=None)
    assert (
        settings.bootstrap_api_key is None
        and settings.oidc_issuer is None
        and settings.session_secret is None
    )


def test_a_local_secret_is_written_once_privately_and_then_read(tmp_path: Path) -> None:
    key, created = ensure_admin_key(tmp_path / "local")
    assert created and key.startswith("mk_")
    assert ensure_admin_key(tmp_path / "local") == (key, False)
    assert read_admin_key(tmp_path / "local") == key
    assert stat.S_IMODE((tmp_path / "local" / "admin-api-key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "local").stat().st_mode) == 0o700


def test_development_fills_a_missing_key_and_secret_from_the_local_directory(tmp_path: Path) -> None:
    settings = with_development_secrets(ApiSettings(_env_file=None, local_state_dir=tmp_path))
    assert settings.bootstrap_api_key is not None and settings.session_secret is not None
    assert settings.bootstrap_api_key.get_secret_value() == read_admin_key(tmp_path)
    again = with_development_secrets(ApiSettings(_env_file=None, local_state_dir=tmp_path))
    assert again.session_secret == settings.session_secret


def test_production_invents_nothing(tmp_path: Path) -> None:
    settings = ApiSettings(
        _env_file=None,
        environment="production",
        bootstrap_api_key=SecretStr(PRODUCTION_KEY),
        local_state_dir=tmp_path / "local",
    )
    assert with_development_secrets(settings) is settings
    assert not (tmp_path / "local").exists()
    text = report(settings, ProbeStubSettings(_env_file=None), ReporterSettings(_env_file=None))
    assert "MAILING_BOOTSTRAP_API_KEY (your environment" in text and "sign-in           off" in text
    assert not (tmp_path / "local").exists()


def test_the_first_run_prints_every_address_and_the_key_only_the_first_time(tmp_path: Path) -> None:
    settings = ApiSettings(_env_file=None, local_state_dir=tmp_path)
    first = report(settings, ProbeStubSettings(_env_file=None), ReporterSettings(_env_file=None))
    key = read_admin_key(tmp_path)
    assert key is not None and key in first
    for address in ("/api/v1", "/docs/", "/admin/", DEV_OIDC_ISSUER, ":8090", "smtp://", ":15672"):
        assert address in first
    later = report(settings, ProbeStubSettings(_env_file=None), ReporterSettings(_env_file=None))
    assert key not in later and str(tmp_path / "admin-api-key") in later
    configured = settings.model_copy(update={"bootstrap_api_key": SecretStr("x" * 20)})
    assert "MAILING_BOOTSTRAP_API_KEY" in report(
        configured, ProbeStubSettings(_env_file=None), ReporterSettings(_env_file=None)
    )
