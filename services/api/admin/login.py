"""Login to the admin UI: OpenID Connect Authorization Code flow with PKCE (S256), by Authlib."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.integrations.starlette_client import OAuth, OAuthError
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from loguru import logger
from markupsafe import Markup

from services.api.admin import sessions
from services.api.admin.html import page
from services.api.admin.identity import (
    ADMIN_HOME,
    SESSION_ID,
    LoginUnavailable,
    UiUser,
    admin_session,
    begin_session,
    current_user,
    safe_next,
    session_ends_at,
    session_user,
    signed_in_user,
    verify_csrf,
)
from services.api.deps import SessionDep
from services.api.errors import database_unavailable
from services.api.settings import ApiSettings, OidcConfig
from shared.domain.roles import role_from_claims

CALLBACK_PATH = "/admin/auth/callback"
SIGNED_OUT_PATH = "/admin/auth/signed-out"
SCOPES = "openid profile email"

router = APIRouter(prefix="/admin", include_in_schema=False)


def oauth_client(config: OidcConfig) -> Any:
    """The provider's client; discovery and the JWKS are fetched on first use and kept."""
    oauth = OAuth()
    return oauth.register(
        name="oidc",
        client_id=config.client_id,
        client_secret=config.client_secret or None,
        server_metadata_url=config.discovery_url,
        client_kwargs={"scope": SCOPES, "code_challenge_method": "S256"},
    )


def _client(request: Request) -> Any:
    client = getattr(request.app.state, "oauth_client", None)
    if client is None:
        raise LoginUnavailable
    return client


def _settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def _provider_down(request: Request, exc: Exception) -> HTMLResponse:
    issuer = _settings(request).oidc()
    logger.warning("the OpenID Connect provider does not answer: {!r}", exc)
    where = issuer.issuer if issuer else "?"
    hint = (
        Markup(" It is the development provider: <code>make run</code> starts it.")
        if issuer and issuer.development
        else ""
    )
    body = Markup(
        '<p>The identity provider at <code>{}</code> does not answer.{}</p><p><a href="{}">Try again</a></p>'
    ).format(where, hint, "/admin/login")
    return HTMLResponse(page("Sign-in is unavailable", body), status_code=503)


@router.get("/login")
async def login(request: Request, next: str | None = None) -> Response:
    """Sends the browser to the provider; the page asked for is kept for after the login."""
    client = _client(request)
    session = admin_session(request)
    session["next"] = safe_next(next)
    redirect_uri = _settings(request).public_url + CALLBACK_PATH
    try:
        response: Response = await client.authorize_redirect(request, redirect_uri)
    except httpx.HTTPError as exc:
        return _provider_down(request, exc)
    return response


@router.get("/auth/callback")
async def callback(request: Request) -> Response:
    """The provider's answer: state, nonce and the id token are checked, the role mapped from its claim."""
    client = _client(request)
    settings = _settings(request)
    config = settings.oidc()
    assert config is not None  # noqa: S101 narrows a type for mypy; the lines above establish it
    session = admin_session(request)
    try:
        token = await client.authorize_access_token(request)
    except OAuthError as exc:
        logger.info("login refused: {} ({})", exc.error, exc.description)
        session.clear()
        body = Markup(
            '<p>The sign-in did not complete: {}.</p><p><a href="/admin/login">Sign in again</a></p>'
        )
        return HTMLResponse(
            page("Sign-in failed", body.format(exc.description or exc.error)), status_code=400
        )
    except httpx.HTTPError as exc:
        return _provider_down(request, exc)
    claims: dict[str, Any] = dict(token.get("userinfo") or {})
    role = role_from_claims(claims, config.role_claim, config.role_map)
    if role is None and (await client.load_server_metadata()).get("userinfo_endpoint"):
        # Some providers (Keycloak without "add to ID token") give the roles only at the userinfo endpoint.
        try:
            claims = {**claims, **dict(await client.userinfo(token=token))}
        except httpx.HTTPError as exc:
            logger.warning("the userinfo endpoint does not answer: {!r}", exc)
        role = role_from_claims(claims, config.role_claim, config.role_map)
    subject = str(claims.get("sub", ""))
    name = str(claims.get("name") or claims.get("preferred_username") or claims.get("email") or subject)
    next_url = safe_next(session.get("next"))
    session.clear()
    if role is None or not subject:
        logger.info("login of {} refused: no known role in claim {}", subject, config.role_claim)
        body = Markup(
            "<p>You signed in as <strong>{}</strong>, but your account has no role in this service.</p>"
            "<p>Ask an administrator to give you one of the roles {} (claim <code>{}</code>).</p>"
            '<p><a href="/admin/login">Sign in as someone else</a></p>'
        ).format(name, ", ".join(sorted(config.role_map)), config.role_claim)
        return HTMLResponse(page("No access", body), status_code=403)
    begin_session(request, UiUser(subject, name, role), id_token=token.get("id_token"))
    request.state.actor = subject
    logger.bind(actor=subject).info("signed in to the admin UI: {} ({}) as {}", subject, name, role.value)
    return RedirectResponse(next_url, status_code=303)


@router.post("/logout")
async def logout(request: Request, db: SessionDep) -> Response:
    """Ends the session (recorded: a copy of its cookie is refused too), and at the provider when it
    supports RP-initiated logout."""
    session = admin_session(request)
    target = SIGNED_OUT_PATH
    user = session_user(request)
    ends_at = session_ends_at(request)
    if user is not None and ends_at is not None:
        await verify_csrf(request)
        try:
            await sessions.end(db, session[SESSION_ID], ends_at)
            await db.commit()
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            # This browser is signed out all the same; a copy of its cookie stays good until it expires.
            logger.bind(actor=user.subject).warning(
                "could not record the sign-out of {} (database unavailable: {!r})", user.subject, exc
            )
        id_token = session.get("id_token")
        session.clear()
        request.state.actor = user.subject
        logger.bind(actor=user.subject).info("signed out of the admin UI: {}", user.subject)
        client = _client(request)
        try:
            metadata = await client.load_server_metadata()
        except httpx.HTTPError as exc:
            logger.warning("cannot reach the provider to end its session too: {!r}", exc)
            metadata = {}
        end_session = metadata.get("end_session_endpoint")
        if end_session:
            settings = _settings(request)
            params = {
                "post_logout_redirect_uri": settings.public_url + SIGNED_OUT_PATH,
                "client_id": client.client_id,
                **({"id_token_hint": id_token} if id_token else {}),
            }
            target = f"{end_session}{'&' if '?' in end_session else '?'}{urlencode(params)}"
    session.clear()
    if request.headers.get("HX-Request"):
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


@router.get("/auth/signed-out")
async def signed_out() -> HTMLResponse:
    """Where the provider sends the browser after logout."""
    body = Markup('<p>You are signed out.</p><p><a href="{}">Sign in again</a></p>').format(
        "/admin/login?" + urlencode({"next": ADMIN_HOME})
    )
    return HTMLResponse(page("Signed out", body))


@router.get("/auth/me")
async def me(request: Request, db: SessionDep) -> JSONResponse:
    """Who is signed in (for scripts and the UI): subject, name, role; 401 when nobody is."""
    user = await signed_in_user(request, db)
    if user is None:
        return JSONResponse({"detail": "not signed in"}, status_code=401)
    return JSONResponse({"subject": user.subject, "name": user.name, "role": user.role.value})


__all__ = ["current_user", "oauth_client", "router"]
