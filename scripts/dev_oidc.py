"""The local development OpenID Connect provider of `make run`: http://127.0.0.1:8099, DEVELOPMENT ONLY.

oidc-provider-mock (discovery, JWKS, authorization code, token, userinfo, end_session) with the users
`admin`, `operator` and `viewer` holding those roles in the `roles` claim of the id token and of the access
token (a JWT whose audience is the client id), and PKCE (S256) required. Its login page asks only for a
user name. When an issuer is configured, or in production, it does not start and just waits, so that
`make run` (`scripts/procfile.py`) keeps the other processes running.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import secrets
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import flask
import jinja2
import jwt
import werkzeug.serving
from loguru import logger

from services.api.entrypoint import quiet_authlib_deprecations
from services.api.settings import DEV_OIDC_HOST, DEV_OIDC_PORT, ApiSettings
from shared.logging import configure_logging

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

TOKEN_LIFETIME = timedelta(hours=1)
TEMPLATES = Path(__file__).with_name("dev_oidc_templates")
ROLES = ("admin", "operator", "viewer")
PENDING_CODES_KEPT = 1000


def _access_token(client: Any, grant_type: str, user: Any, scope: str) -> str:
    """Access tokens as JWTs signed with the provider's key, so the API can check them like a real one's."""
    # The mock keeps its signing key on flask.g for the request (its storage); there is no public getter.
    key = flask.g.oidc_provider_mock_storage.jwk
    public = key.as_dict()
    now = int(time.time())
    claims = {
        **{name: value for name, value in user.claims.items() if name != "email"},
        "iss": flask.request.host_url.rstrip("/"),
        "sub": user.sub,
        "aud": client.get_client_id(),
        "iat": now,
        "exp": now + int(TOKEN_LIFETIME.total_seconds()),
        "scope": scope,
        "jti": secrets.token_urlsafe(12),
    }
    headers = {"kid": public["kid"]} if "kid" in public else None
    return jwt.encode(claims, key.as_pem(is_private=True), algorithm="RS256", headers=headers)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class RequirePkce:
    """PKCE (RFC 7636, S256 only) in front of the mock, which does not check it: an authorization request
    must carry a code_challenge, and the code it yields is exchanged only with the matching verifier."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app
        self.challenges: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/oauth2/authorize":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            challenge = query.get("code_challenge", [""])[0]
            if not challenge or query.get("code_challenge_method", [""])[0] != "S256":
                return _error(start_response, "400 Bad Request", "PKCE is required: code_challenge with S256")
            return self.app(environ, self._remember(challenge, start_response))
        if path == "/oauth2/token" and environ.get("REQUEST_METHOD") == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(size)
            environ["wsgi.input"] = io.BytesIO(body)
            form = parse_qs(body.decode())
            if form.get("grant_type", [""])[0] == "authorization_code":
                with self.lock:
                    challenge = self.challenges.pop(form.get("code", [""])[0], None)
                verifier = form.get("code_verifier", [""])[0]
                if (
                    challenge is None
                    or not verifier
                    or not secrets.compare_digest(_s256(verifier), challenge)
                ):
                    return _error(
                        start_response, "400 Bad Request", "invalid_grant: PKCE verification failed"
                    )
        return self.app(environ, start_response)

    def _remember(self, challenge: str, start_response: StartResponse) -> StartResponse:
        def remember(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            location = dict((k.lower(), v) for k, v in headers).get("location", "")
            code = parse_qs(urlsplit(location).query).get("code", [""])[0]
            if code:
                with self.lock:
                    if len(self.challenges) >= PENDING_CODES_KEPT:
                        self.challenges.pop(next(iter(self.challenges)))
                    self.challenges[code] = challenge
            return start_response(status, headers, exc_info)

        return remember


def _error(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode()]


def build_app() -> flask.Flask:
    """The provider as a WSGI app (its templates first, so its pages say "development only")."""
    quiet_authlib_deprecations()
    import oidc_provider_mock
    from oidc_provider_mock import User, init_app

    users = [
        User(
            sub=role,
            claims={
                "name": f"Development {role}",
                "preferred_username": role,
                "email": f"{role}@example.test",
                "roles": [role],
            },
        )
        for role in ROLES
    ]
    app = flask.Flask("dev_oidc", template_folder=str(TEMPLATES))
    # The mock's own pages (end_session_form.html, error.html, ...) live in its package, which a Flask app
    # of our own does not look in: ours first, then the package's.
    package_templates = Path(oidc_provider_mock.__file__).with_name("templates")
    app.jinja_loader = jinja2.ChoiceLoader(
        [jinja2.FileSystemLoader(TEMPLATES), jinja2.FileSystemLoader(package_templates)]
    )
    app.secret_key = secrets.token_bytes(16)
    app.config["OAUTH2_ACCESS_TOKEN_GENERATOR"] = _access_token
    init_app(app, require_nonce=True, access_token_max_age=TOKEN_LIFETIME, user_claims=users)
    # init_app turns on Werkzeug's interactive debugger; a sign-in page needs none.
    app.debug = False
    app.wsgi_app = RequirePkce(app.wsgi_app.app)  # type: ignore[attr-defined,method-assign]
    return app


@contextmanager
def running(host: str = DEV_OIDC_HOST, port: int = 0) -> Iterator[str]:
    """The provider served on a background thread; yields its issuer URL."""
    server = werkzeug.serving.make_server(host, port, build_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the development OpenID Connect provider")
    parser.add_argument("--port", type=int, default=DEV_OIDC_PORT, help="default %(default)s (make run)")
    port: int = parser.parse_args(argv).port
    settings = ApiSettings()
    configure_logging("dev-oidc", json=settings.log_json, level=settings.log_level)
    signal.signal(signal.SIGTERM, _stop)
    if settings.oidc_issuer is not None or not settings.development:
        logger.info(
            "the development OpenID Connect provider is not started ({}); waiting",
            "an issuer is configured" if settings.oidc_issuer else "production",
        )
        with suppress(_Stopped):
            threading.Event().wait()
        return 0
    logger.warning(
        "DEVELOPMENT-ONLY OpenID Connect provider on http://{}:{} (users admin, operator, viewer; anyone "
        "can sign in as anyone): never use it in production",
        DEV_OIDC_HOST,
        port,
    )
    server = werkzeug.serving.make_server(DEV_OIDC_HOST, port, build_app(), threaded=True)
    try:
        server.serve_forever()
    except _Stopped:
        logger.info("development OpenID Connect provider stopped")
    finally:
        server.server_close()
    return 0


class _Stopped(Exception):
    """SIGTERM (`make run` stopping, a test ending): out of `serve_forever` or the wait, exit code 0."""


def _stop(*_: object) -> None:
    raise _Stopped


if __name__ == "__main__":
    raise SystemExit(main())
