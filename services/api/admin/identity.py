"""Who uses the admin UI: the signed-in user from the session, role checks and CSRF protection.

Pages use exactly these names: `UiUser`, `Role`, `current_user`, `require_role`, `csrf_token`,
`verify_csrf`. The session (a signed cookie) holds only `sub`, `name`, `role`, `id_token` (the logout
hint) and `csrf`, plus Authlib's state while a login is under way."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, Request
from loguru import logger

from shared.domain.roles import Role

__all__ = [
    "AccessDenied",
    "LoginRequired",
    "LoginUnavailable",
    "Role",
    "UiUser",
    "admin_session",
    "csrf_token",
    "current_user",
    "login_url",
    "require_role",
    "safe_next",
    "session_user",
    "verify_csrf",
]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
ADMIN_HOME = "/admin/"
LOGIN_PATH = "/admin/login"


@dataclass(frozen=True)
class UiUser:
    subject: str
    name: str
    role: Role


class LoginRequired(Exception):
    """No session (or an expired one): the browser goes to the login, then back to `next_url`."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class AccessDenied(Exception):
    """Signed in, but not allowed: answered with a 403 page that says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoginUnavailable(Exception):
    """No OpenID Connect provider (or no session secret) is configured: the UI cannot be signed into."""


def safe_next(value: str | None) -> str:
    """A page of the admin UI to return to after login; anything else (another site) is the home page."""
    if not value or not value.startswith("/admin") or value.startswith("//") or "\\" in value:
        return ADMIN_HOME
    return value


def login_url(next_url: str) -> str:
    return f"{LOGIN_PATH}?{urlencode({'next': safe_next(next_url)})}"


def admin_session(request: Request) -> dict[str, Any]:
    if "session" not in request.scope:
        raise LoginUnavailable
    session: dict[str, Any] = request.session
    return session


def session_user(request: Request) -> UiUser | None:
    """The signed-in user, or None (no login yet, expired or cleared session)."""
    session = admin_session(request)
    try:
        return UiUser(subject=session["sub"], name=session["name"], role=Role(session["role"]))
    except (KeyError, ValueError):
        return None


def _page_of(request: Request) -> str:
    """The page to come back to: for an htmx request the page it was made from, not the fragment."""
    current = request.headers.get("HX-Current-URL") or (
        request.headers.get("Referer") if request.method != "GET" else None
    )
    if current:
        parts = urlsplit(current)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


async def current_user(request: Request) -> AsyncIterator[UiUser]:
    """The signed-in user (a dependency); without a session the browser is sent to the login. Binds the
    user's subject as `actor` to every log line of the request."""
    user = session_user(request)
    if user is None:
        raise LoginRequired(_page_of(request))
    request.state.actor = user.subject
    with logger.contextualize(actor=user.subject):
        yield user


def require_role(*roles: Role) -> Callable[[UiUser], Awaitable[UiUser]]:
    """A dependency admitting a user whose role is one of `roles` or includes one of them
    (admin ⊇ operator ⊇ viewer): `require_role(Role.OPERATOR)` admits operators and admins."""

    async def check(user: Annotated[UiUser, Depends(current_user)]) -> UiUser:
        if not any(user.role.includes(role) for role in roles):
            logger.info("403 in the admin UI: {} has role {}, needs {}", user.subject, user.role, roles)
            needed = " or ".join(role.value for role in roles)
            raise AccessDenied(f"This page needs the {needed} role; you are signed in as {user.role.value}.")
        return user

    return check


def csrf_token(request: Request) -> str:
    """The session's CSRF token, for a hidden `csrf_token` field of every form and the `X-CSRF-Token`
    header htmx sends (hx-headers)."""
    session = admin_session(request)
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


async def verify_csrf(request: Request) -> None:
    """A dependency refusing (403) a POST, PUT, PATCH or DELETE without the session's CSRF token in the
    `csrf_token` form field or the `X-CSRF-Token` header; other methods pass."""
    if request.method not in WRITE_METHODS:
        return
    if session_user(request) is None:
        raise LoginRequired(_page_of(request))
    expected = admin_session(request).get("csrf")
    supplied = request.headers.get(CSRF_HEADER)
    if supplied is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        supplied = value if isinstance(value, str) else None
    if not isinstance(expected, str) or supplied is None or not secrets.compare_digest(expected, supplied):
        logger.info("403 in the admin UI: {} {} without a valid CSRF token", request.method, request.url.path)
        raise AccessDenied(
            "The form was refused: its security token is missing or out of date. "
            "Reload the page and try again."
        )
