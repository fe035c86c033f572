"""Signing in to the admin UI through the real development OpenID Connect provider (oidc-provider-mock,
in process on a free port): Authorization Code with PKCE, roles from the claim, the session cookie,
CSRF, logout, expiry, and the provider's access tokens on the REST API."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import itsdangerous
import psycopg
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import SecretStr

from scripts.dev_oidc import running
from scripts.dev_token import access_token
from services.api.admin import sessions
from services.api.admin.identity import Role, UiUser, csrf_token, current_user, require_role, verify_csrf
from services.api.app import SESSION_COOKIE, build_api
from services.api.settings import DEV_OIDC_CLIENT_ID, ApiSettings
from tests.admin_session import session_data, signed

from .test_api_mailings import mailing_body

pytestmark = pytest.mark.integration

PUBLIC_URL = "http://testserver"
SESSION_SECRET = "a-test-session-secret-that-is-long-enough"
PAGE = "/admin/_test/page"

# Pages of the test's own, built only with the identity API the UI's pages use.
pages = APIRouter(prefix="/admin/_test", dependencies=[Depends(verify_csrf)])


@pages.get("/page")
async def any_user(user: Annotated[UiUser, Depends(current_user)], request: Request) -> dict[str, str]:
    return {"subject": user.subject, "role": user.role.value, "csrf": csrf_token(request)}


@pages.get("/keys")
async def admin_only(user: Annotated[UiUser, Depends(require_role(Role.ADMIN))]) -> dict[str, str]:
    return {"subject": user.subject}


@pages.post("/change")
async def change(user: Annotated[UiUser, Depends(require_role(Role.OPERATOR))]) -> dict[str, str]:
    return {"changed_by": user.subject}


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with running(port=0) as issuer:
        yield issuer


def login_settings(api_settings: ApiSettings, issuer: str, **changes: Any) -> ApiSettings:
    values = {
        **api_settings.model_dump(),
        "oidc_issuer": issuer,
        "oidc_client_id": DEV_OIDC_CLIENT_ID,
        "oidc_client_secret": SecretStr("any"),
        "session_secret": SecretStr(SESSION_SECRET),
        "public_url": PUBLIC_URL,
        **changes,
    }
    return ApiSettings(**values, _env_file=None)


def ui_app(settings: ApiSettings) -> FastAPI:
    app = build_api(settings).app
    app.include_router(pages)
    return app


@pytest.fixture
async def ui(api_settings: ApiSettings, provider: str) -> AsyncIterator[httpx.AsyncClient]:
    app = ui_app(login_settings(api_settings, provider))
    async with app.router.lifespan_context(app), browser(app) as client:
        yield client


def browser(app: FastAPI) -> httpx.AsyncClient:
    """Keeps cookies like a browser; redirects are followed by hand so each step can be looked at."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL)


async def sign_in(ui: httpx.AsyncClient, user: str, next_page: str = PAGE) -> httpx.Response:
    """The whole flow: the API sends the browser to the provider, the user enters a name on its page,
    the provider sends the browser back with a code; the API's answer to the callback is returned."""
    start = await ui.get("/admin/login", params={"next": next_page})
    assert start.status_code == 302
    authorize = start.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["nonce"][0] and query["state"][0]
    assert query["redirect_uri"] == [f"{PUBLIC_URL}/admin/auth/callback"]
    async with httpx.AsyncClient() as at_provider:
        form = await at_provider.get(authorize)
        assert form.status_code == 200
        assert "Development only" in form.text and 'name="sub"' in form.text
        answer = await at_provider.post(authorize, data={"sub": user})
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    assert f"{back.scheme}://{back.netloc}" == PUBLIC_URL
    return await ui.get(f"{back.path}?{back.query}")


async def test_an_admin_signs_in_and_comes_back_to_the_page_asked_for(ui: httpx.AsyncClient) -> None:
    first = await ui.get(PAGE)
    assert first.status_code == 303
    assert first.headers["location"] == "/admin/login?next=%2Fadmin%2F_test%2Fpage"
    done = await sign_in(ui, "admin")
    assert done.status_code == 303 and done.headers["location"] == PAGE
    page = await ui.get(PAGE)
    assert page.status_code == 200
    assert page.json()["subject"] == "admin" and page.json()["role"] == "admin"
    assert (await ui.get("/admin/_test/keys")).status_code == 200
    me = (await ui.get("/admin/auth/me")).json()
    assert me == {"subject": "admin", "name": "Development admin", "role": "admin"}


async def test_the_session_cookie_is_signed_httponly_lax_scoped_and_expiring(ui: httpx.AsyncClient) -> None:
    done = await sign_in(ui, "operator")
    cookie = done.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert {"httponly", "path", "max-age", "samesite"} <= attributes
    assert "samesite=lax" in cookie.lower() and "path=/admin" in cookie.lower()
    assert "max-age=28800" in cookie.lower()
    assert "secure" not in attributes  # http:// public URL; https:// gives Secure (next test)
    stored = json.loads(base64.b64decode(cookie.split("=", 1)[1].split(".")[0] + "=="))
    assert set(stored) == {"sub", "name", "role", "id_token", "csrf", "sid", "signed_in_at"}


async def test_an_https_public_url_makes_the_cookie_secure(api_settings: ApiSettings, provider: str) -> None:
    app = ui_app(login_settings(api_settings, provider, public_url="https://mailing.example.com"))
    async with app.router.lifespan_context(app), browser(app) as client:
        start = await client.get("/admin/login")
    assert "secure" in start.headers["set-cookie"].lower()
    assert (
        "redirect_uri=https%3A%2F%2Fmailing.example.com%2Fadmin%2Fauth%2Fcallback"
        in start.headers["location"]
    )


async def test_a_viewer_may_look_but_not_open_an_admin_page_or_change_anything(ui: httpx.AsyncClient) -> None:
    await sign_in(ui, "viewer")
    page = await ui.get(PAGE)
    assert page.status_code == 200 and page.json()["role"] == "viewer"
    denied = await ui.get("/admin/_test/keys")
    assert denied.status_code == 403
    assert "text/html" in denied.headers["content-type"] and "needs the admin role" in denied.text
    change = await ui.post("/admin/_test/change", data={"csrf_token": page.json()["csrf"]})
    assert change.status_code == 403


async def test_a_user_without_a_known_role_gets_a_clear_403_and_no_session(ui: httpx.AsyncClient) -> None:
    done = await sign_in(ui, "somebody")
    assert done.status_code == 403
    assert "has no role in this service" in done.text and "roles" in done.text
    assert (await ui.get("/admin/auth/me")).status_code == 401


async def test_a_change_needs_the_sessions_csrf_token_in_the_form_or_the_header(
    ui: httpx.AsyncClient,
) -> None:
    await sign_in(ui, "operator")
    token = (await ui.get(PAGE)).json()["csrf"]
    assert (await ui.post("/admin/_test/change")).status_code == 403
    assert (await ui.post("/admin/_test/change", data={"csrf_token": "forged"})).status_code == 403
    assert (await ui.post("/admin/_test/change", headers={"X-CSRF-Token": "forged"})).status_code == 403
    by_form = await ui.post("/admin/_test/change", data={"csrf_token": token})
    assert by_form.status_code == 200 and by_form.json() == {"changed_by": "operator"}
    by_header = await ui.post("/admin/_test/change", headers={"X-CSRF-Token": token, "HX-Request": "true"})
    assert by_header.status_code == 200


async def test_logout_clears_the_session_and_ends_it_at_the_provider(
    ui: httpx.AsyncClient, provider: str
) -> None:
    await sign_in(ui, "admin")
    token = (await ui.get(PAGE)).json()["csrf"]
    assert (await ui.post("/admin/logout")).status_code == 403  # no CSRF token: a forged logout
    out = await ui.post("/admin/logout", data={"csrf_token": token})
    assert out.status_code == 303
    target = urlsplit(out.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{provider}/oauth2/end_session"
    params = parse_qs(target.query)
    assert params["post_logout_redirect_uri"] == [f"{PUBLIC_URL}/admin/auth/signed-out"]
    assert params["id_token_hint"][0].count(".") == 2
    async with httpx.AsyncClient() as at_provider:
        # The provider's own page, then its confirmation, which sends the browser back to the API.
        ending = await at_provider.get(out.headers["location"])
        assert ending.status_code == 200, ending.text
        assert "Development only" in ending.text
        ended = await at_provider.post(
            f"{provider}/oauth2/end_session/confirm",
            data={"redirect_uri": params["post_logout_redirect_uri"][0]},
        )
        assert ended.status_code == 302
        assert ended.headers["location"] == f"{PUBLIC_URL}/admin/auth/signed-out"
    assert (await ui.get("/admin/auth/me")).status_code == 401
    assert (await ui.get(PAGE)).status_code == 303
    assert (await ui.get("/admin/auth/signed-out")).status_code == 200


async def test_a_copy_of_the_session_cookie_is_refused_after_the_sign_out(ui: httpx.AsyncClient) -> None:
    await sign_in(ui, "operator")
    token = (await ui.get(PAGE)).json()["csrf"]
    kept = ui.cookies.get(SESSION_COOKIE, path="/admin")
    assert kept
    assert (await ui.post("/admin/logout", data={"csrf_token": token})).status_code == 303
    ui.cookies.set(SESSION_COOKIE, kept, path="/admin")  # replayed from elsewhere
    assert (await ui.get(PAGE)).status_code == 303
    assert (await ui.get("/admin/auth/me")).status_code == 401
    change = await ui.post("/admin/_test/change", data={"csrf_token": token})
    assert change.status_code == 303 and change.headers["location"].startswith("/admin/login")


async def test_a_sign_out_while_the_database_is_away_still_signs_this_browser_out(
    ui: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sign_in(ui, "operator")
    token = (await ui.get(PAGE)).json()["csrf"]

    async def unreachable(*args: object) -> None:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(sessions, "end", unreachable)
    assert (await ui.post("/admin/logout", data={"csrf_token": token})).status_code == 303
    assert (await ui.get("/admin/auth/me")).status_code == 401


async def test_a_session_ends_its_lifetime_after_the_sign_in_however_often_it_is_used(
    ui: httpx.AsyncClient,
) -> None:
    # Renewed on every answer, the cookie's own stamp is always fresh: the sign-in's time is what ends it.
    for signed_in_at, expected in ((time.time() - 8 * 3600 + 60, 200), (time.time() - 8 * 3600 - 1, 303)):
        ui.cookies.clear()
        ui.cookies.set(
            SESSION_COOKIE,
            signed(session_data("admin", signed_in_at=signed_in_at), secret=SESSION_SECRET),
            path="/admin",
        )
        assert (await ui.get(PAGE)).status_code == expected


async def test_an_expired_session_goes_back_to_the_login(ui: httpx.AsyncClient) -> None:
    session = session_data("admin")
    data = base64.b64encode(json.dumps(session).encode())

    class EightHoursAgo(itsdangerous.TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 8 * 3600 - 1

    fresh = itsdangerous.TimestampSigner(SESSION_SECRET).sign(data).decode()
    old = EightHoursAgo(SESSION_SECRET).sign(data).decode()
    ui.cookies.set(SESSION_COOKIE, fresh, path="/admin")
    assert (await ui.get(PAGE)).status_code == 200
    ui.cookies.clear()
    ui.cookies.set(SESSION_COOKIE, old, path="/admin")
    expired = await ui.get(PAGE)
    assert expired.status_code == 303 and expired.headers["location"].startswith("/admin/login?next=")
    htmx = await ui.get(
        PAGE, headers={"HX-Request": "true", "HX-Current-URL": f"{PUBLIC_URL}/admin/mailings/7"}
    )
    assert htmx.status_code == 401
    assert htmx.headers["hx-redirect"] == "/admin/login?next=%2Fadmin%2Fmailings%2F7"


async def test_the_page_to_come_back_to_is_never_another_site(ui: httpx.AsyncClient) -> None:
    done = await sign_in(ui, "admin", next_page="https://evil.example/admin")
    assert done.headers["location"] == "/admin/"
    done = await sign_in(ui, "admin", next_page="//evil.example/admin")
    assert done.headers["location"] == "/admin/"


async def test_a_callback_with_a_forged_state_is_refused(ui: httpx.AsyncClient) -> None:
    await ui.get("/admin/login")
    refused = await ui.get("/admin/auth/callback", params={"code": "stolen", "state": "forged"})
    assert refused.status_code == 400
    assert (await ui.get("/admin/auth/me")).status_code == 401


async def test_production_without_a_provider_has_no_sign_in_but_api_keys_work(
    api_settings: ApiSettings,
) -> None:
    key = "production-admin-key-" + "x" * 20
    settings = ApiSettings(
        **{**api_settings.model_dump(), "environment": "production", "bootstrap_api_key": key}, _env_file=None
    )
    app = ui_app(settings)
    async with app.router.lifespan_context(app), browser(app) as client:
        page = await client.get("/admin/login")
        assert page.status_code == 503 and "not configured" in page.text
        assert (await client.get(PAGE)).status_code == 503
        keys = await client.get("/api/v1/api-keys", headers={"Authorization": f"Bearer {key}"})
        assert keys.status_code == 200
        jwt_like = await client.get("/api/v1/mailings", headers={"Authorization": "Bearer a.b.c"})
        assert jwt_like.status_code == 401


async def _token_without_verifier(provider: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=provider) as http:
        answer = await http.post(
            "/oauth2/authorize",
            params={
                "client_id": DEV_OIDC_CLIENT_ID,
                "response_type": "code",
                "redirect_uri": "http://127.0.0.1/cb",
                "scope": "openid",
                "state": "s",
                "nonce": "n",
                "code_challenge": "a" * 43,
                "code_challenge_method": "S256",
            },
            data={"sub": "admin"},
        )
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        return await http.post(
            "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": "http://127.0.0.1/cb",
                "client_id": DEV_OIDC_CLIENT_ID,
                "client_secret": "any",
                "code_verifier": "not-the-one" * 5,
            },
        )


async def test_the_development_providers_access_tokens_carry_roles_the_api_honours(
    api_settings: ApiSettings, provider: str
) -> None:
    app = ui_app(login_settings(api_settings, provider))
    async with app.router.lifespan_context(app), browser(app) as api:
        viewer = await asyncio.to_thread(access_token, provider, "viewer")
        headers = {"Authorization": f"Bearer {viewer}"}
        assert (await api.get("/api/v1/mailings", headers=headers)).status_code == 200
        assert (await api.post("/api/v1/mailings", json=mailing_body(), headers=headers)).status_code == 403
        operator = await asyncio.to_thread(access_token, provider, "operator")
        headers = {"Authorization": f"Bearer {operator}"}
        assert (await api.post("/api/v1/mailings", json=mailing_body(), headers=headers)).status_code == 201


async def test_the_development_provider_refuses_a_code_without_its_pkce_verifier(provider: str) -> None:
    refused = await _token_without_verifier(provider)
    assert refused.status_code == 400
    async with httpx.AsyncClient() as http:
        plain = await http.get(
            f"{provider}/oauth2/authorize",
            params={
                "client_id": "x",
                "response_type": "code",
                "redirect_uri": "http://a/cb",
                "scope": "openid",
            },
        )
    assert plain.status_code == 400
