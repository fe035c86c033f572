from __future__ import annotations

import sys
import warnings

import uvloop
from loguru import logger
from pydantic import SecretStr, ValidationError

from services.api.app import build_api
from services.api.local_state import ensure_admin_key, ensure_session_secret
from services.api.settings import ApiSettings
from shared.logging import configure_logging
from shared.service import serve


def with_development_secrets(settings: ApiSettings) -> ApiSettings:
    """In development, a missing bootstrap key or session secret comes from the git-ignored local state
    directory, generated there once, so every API process on this machine shares them. Production never
    invents either."""
    if not settings.development:
        return settings
    changes: dict[str, SecretStr] = {}
    directory = settings.local_state_dir
    if settings.bootstrap_api_key is None:
        key, created = ensure_admin_key(directory)
        changes["bootstrap_api_key"] = SecretStr(key)
        logger.info(
            "development: the admin API key is in {}{}",
            directory / "admin-api-key",
            " (generated now)" if created else "",
        )
    if settings.session_secret is None:
        secret, _ = ensure_session_secret(directory)
        changes["session_secret"] = SecretStr(secret)
    return settings.model_copy(update=changes) if changes else settings


def quiet_authlib_deprecations() -> None:
    """Authlib 1.9 warns that it prefers httpx2 and joserfc while still supporting httpx and its own
    jose; the warnings would fill every start's output. Its own filter ("always") is set on import."""
    from authlib.deprecate import AuthlibDeprecationWarning

    for message in ("The httpx module is deprecated", "authlib.jose module is deprecated"):
        warnings.filterwarnings("ignore", message=message, category=AuthlibDeprecationWarning)


def main() -> int:
    quiet_authlib_deprecations()
    try:
        settings = ApiSettings()
    except ValidationError as exc:
        # One line a person can act on, not a traceback.
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        print(f"api: refusing to start: {problems}", file=sys.stderr, flush=True)
        return 2
    configure_logging("api", json=settings.log_json, level=settings.log_level)
    settings = with_development_secrets(settings)
    uvloop.run(serve(build_api(settings)))
    return 0
