from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from shared.domain.roles import DEFAULT_ROLE_MAP, Role
from shared.settings import CommonSettings

# The local development OpenID Connect provider (`python -m scripts.dev_oidc`): used only in development
# when no issuer is configured. It accepts any client secret.
DEV_OIDC_HOST = "127.0.0.1"
DEV_OIDC_PORT = 8099
DEV_OIDC_ISSUER = f"http://{DEV_OIDC_HOST}:{DEV_OIDC_PORT}"
DEV_OIDC_CLIENT_ID = "mailing-admin"
DEV_OIDC_CLIENT_SECRET = "development-only"  # noqa: S105 the local development provider's, which accepts any secret
# The placeholder of deploy/k8s/secret.yaml and .env.example: a copy that was never edited.
KEY_PLACEHOLDER_PREFIX = "replace-me"
MIN_PRODUCTION_KEY_LENGTH = 32
MIB = 1024 * 1024


@dataclass(frozen=True)
class OidcConfig:
    """The OpenID Connect provider the admin UI logs in with and whose access tokens the API accepts."""

    issuer: str
    client_id: str
    client_secret: str
    audience: str
    role_claim: str
    role_map: dict[str, Role]
    development: bool

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


class ApiSettings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # development: a missing bootstrap key or session secret is generated into local_state_dir and the
    # local development OpenID Connect provider stands in for a missing issuer. production: never.
    environment: Literal["development", "production"] = "development"
    # The first administrator key, created (stored hashed) at start so a fresh installation can be used.
    bootstrap_api_key: SecretStr | None = None
    # Where development keeps what it generates (git-ignored): admin-api-key, session-secret.
    local_state_dir: Path = Path(".local")
    # The address people and the provider reach the API at: the login redirect URI is built from it, and
    # https makes the session cookie Secure.
    public_url: str = "http://127.0.0.1:8000"
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    # The `aud` API bearer tokens must carry; the client id when not set.
    oidc_audience: str | None = None
    # A dotted path into the claims: `roles`, `realm_access.roles` (Keycloak), or a namespaced claim.
    oidc_role_claim: str = "roles"
    oidc_role_map: dict[str, Role] = Field(default_factory=lambda: dict(DEFAULT_ROLE_MAP))
    # The provider's keys are fetched again for an unknown key id at most this often (key rotation).
    oidc_jwks_refetch_seconds: float = Field(default=60.0, ge=0)
    session_secret: SecretStr | None = None
    session_max_age_seconds: int = Field(default=8 * 3600, ge=60)
    relay_batch_size: int = Field(default=500, ge=1)
    relay_poll_seconds: float = Field(default=0.5, gt=0)
    relay_enabled: bool = True
    csv_import_chunk_rows: int = Field(default=5000, ge=100)
    max_page_size: int = Field(default=500, ge=1)
    # Request bodies are refused (413) past these sizes before they are parsed or authenticated; the CSV
    # import's size counts the whole multipart body. The ingress's proxy-body-size must not be smaller.
    max_json_body_bytes: int = Field(default=MIB, ge=1024)
    csv_import_max_bytes: int = Field(default=64 * MIB, ge=1024)
    csv_import_max_rows: int = Field(default=1_000_000, ge=1)
    # Failed authentications per client address within the window: past the first number each further
    # failure is answered more slowly, past the second every request is refused (429) until the window
    # has room again. Kept in each API process's memory.
    auth_failure_window_seconds: float = Field(default=60.0, gt=0)
    auth_failures_before_delay: int = Field(default=5, ge=0)
    auth_failures_before_refusal: int = Field(default=20, ge=1)
    auth_failure_delay_step_seconds: float = Field(default=0.25, ge=0)
    auth_failure_max_delay_seconds: float = Field(default=2.0, ge=0)
    # How many proxies in front of the API append to X-Forwarded-For (1 behind ingress-nginx); 0 trusts
    # no such header and takes the connection's address.
    trusted_proxy_hops: int = Field(default=0, ge=0)
    # Authenticated keys are remembered this long (a revocation on another replica takes effect within
    # it), unknown keys for the shorter time.
    key_cache_seconds: float = Field(default=5.0, ge=0, le=5.0)
    key_cache_negative_seconds: float = Field(default=2.0, ge=0, le=5.0)
    # Origins allowed to call the API from a browser (JSON list); empty: no cross-origin calls.
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator(
        "bootstrap_api_key",
        "oidc_issuer",
        "oidc_client_id",
        "oidc_client_secret",
        "oidc_audience",
        "session_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("public_url")
    @classmethod
    def _public_url_is_absolute(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _oidc_is_whole(self) -> ApiSettings:
        if self.oidc_issuer is not None and self.oidc_client_id is None:
            raise ValueError("MAILING_OIDC_ISSUER is set but MAILING_OIDC_CLIENT_ID is not")
        if self.environment == "production" and self.oidc_issuer is not None and self.session_secret is None:
            raise ValueError("production with an OpenID Connect provider needs MAILING_SESSION_SECRET")
        if self.session_secret is not None and len(self.session_secret.get_secret_value()) < 32:
            raise ValueError("MAILING_SESSION_SECRET must be at least 32 characters")
        if self.environment == "production":
            _check_production_key(self.bootstrap_api_key)
        return self

    @property
    def development(self) -> bool:
        return self.environment == "development"

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    def oidc(self) -> OidcConfig | None:
        """The provider in use: the configured one; in development without one, the local development
        provider; in production without one, none (the admin UI's login is off, API keys still work)."""
        if self.oidc_issuer is not None and self.oidc_client_id is not None:
            secret = self.oidc_client_secret.get_secret_value() if self.oidc_client_secret else ""
            issuer, client_id, development = self.oidc_issuer, self.oidc_client_id, False
        elif self.development:
            issuer, client_id, secret, development = (
                DEV_OIDC_ISSUER,
                DEV_OIDC_CLIENT_ID,
                DEV_OIDC_CLIENT_SECRET,
                True,
            )
        else:
            return None
        return OidcConfig(
            issuer=issuer,
            client_id=client_id,
            client_secret=secret,
            audience=self.oidc_audience or client_id,
            role_claim=self.oidc_role_claim,
            role_map=dict(self.oidc_role_map),
            development=development,
        )


def _check_production_key(key: SecretStr | None) -> None:
    if key is None:
        raise ValueError("production needs MAILING_BOOTSTRAP_API_KEY (at least 32 random characters)")
    value = key.get_secret_value()
    if value.strip().lower().startswith(KEY_PLACEHOLDER_PREFIX):
        raise ValueError("MAILING_BOOTSTRAP_API_KEY is still the example placeholder: set a random key")
    if len(value) < MIN_PRODUCTION_KEY_LENGTH:
        raise ValueError(
            f"MAILING_BOOTSTRAP_API_KEY must be at least {MIN_PRODUCTION_KEY_LENGTH} characters in production"
        )
