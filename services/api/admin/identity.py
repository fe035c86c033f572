"""Who uses the admin UI: the signed-in user from the session, role checks and CSRF protection.

Pages use exactly these names: `UiUser`, `Role`, `current_user`, `require_role`, `csrf_token`,
`verify_csrf`. The session (a signed cookie) holds only `sub`, `name`, `role`, `id_token` (the logout
hint), `csrf`, `sid` (the session's own id) and `signed_in_at`, plus Authlib's state while a login is
under way. A session ends at its sign-out (its id is recorded as ended: a copy of the cookie is refused
too) or `MAILING_SESSION_MAX_AGE_SECONDS` after its sign-in, however often it is used."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, Request
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.admin import sessions
from services.api.deps import SessionDep
from shared.domain.roles import Role

__all__ = [
    "AccessDenied",
    "LoginRequired",
    "LoginUnavailable",
    "Role",
    "UiUser",
    "admin_session",
    "begin_session",
    "csrf_token",
    "current_user",
    "login_url",
    "require_role",
    "safe_next",
    "session_ends_at",
    "session_user",
    "signed_in_user",
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


SESSION_ID = "sid"
SIGNED_IN_AT = "signed_in_at"


def begin_session(request: Request, user: UiUser, **kept: Any) -> None:
    """A new session for `user` (after the session was cleared): its own id, its sign-in time, a CSRF
    token, and `kept` (the provider's id token)."""
    admin_session(request).update(
        sub=user.subject,
        name=user.name,
        role=user.role.value,
        csrf=secrets.token_urlsafe(32),
        **{SESSION_ID: secrets.token_urlsafe(32), SIGNED_IN_AT: time.time()},
        **kept,
    )


def session_ends_at(request: Request) -> float | None:
    """When the session ends at the latest (epoch seconds): its sign-in plus the session's lifetime."""
    signed_in_at = admin_session(request).get(SIGNED_IN_AT)
    if not isinstance(signed_in_at, int | float):
        return None
    max_age: int = request.app.state.settings.session_max_age_seconds
    return float(signed_in_at) + max_age


def session_user(request: Request) -> UiUser | None:
    """The signed-in user, or None (no login yet, a cleared session, one older than its lifetime, or one
    from before sessions had an id). Whether its sign-out ended it is `current_user`'s check."""
    session = admin_session(request)
    ends_at = session_ends_at(request)
    if ends_at is None or time.time() >= ends_at or not isinstance(session.get(SESSION_ID), str):
        return None
    try:
        return UiUser(subject=session["sub"], name=session["name"], role=Role(session["role"]))
    except (KeyError, ValueError):
        return None


async def signed_in_user(request: Request, db: AsyncSession) -> UiUser | None:
    """`session_user`, unless a sign-out ended the session (a copy of its cookie kept somewhere)."""
    user = session_user(request)
    if user is None or await sessions.is_ended(db, admin_session(request)[SESSION_ID]):
        return None
    return user


def _page_of(request: Request) -> str:
    """The page to come back to: for an htmx request the page it was made from, not the fragment."""
    current = request.headers.get("HX-Current-URL") or (
        request.headers.get("Referer") if request.method != "GET" else None
    )
    if current:
        parts = urlsplit(current)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


async def current_user(request: Request, db: SessionDep) -> AsyncIterator[UiUser]:
    """The signed-in user (a dependency); without a session the browser is sent to the login. Binds the
    user's subject as `actor` to every log line of the request."""
    user = await signed_in_user(request, db)
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
