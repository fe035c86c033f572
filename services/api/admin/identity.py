"""STAND-IN for the login work of issue 10 (OIDC, sessions, roles, CSRF), replaced at merge.

Same names and signatures as the real module; it reads the user from the signed Starlette session
(`request.session["user"] = {"sub", "name", "role"}`) and the CSRF token from `request.session["csrf"]`.
Nothing else belongs here."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from fastapi import HTTPException, Request, status


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


@dataclass(frozen=True)
class UiUser:
    subject: str
    name: str
    role: Role


class LoginRequired(HTTPException):
    def __init__(self) -> None:
        super().__init__(status.HTTP_303_SEE_OTHER, "login required", headers={"Location": "/admin/login"})


def current_user(request: Request) -> UiUser:
    user = request.session.get("user")
    if not isinstance(user, dict):
        raise LoginRequired()
    try:
        return UiUser(str(user["sub"]), str(user["name"]), Role(user["role"]))
    except (KeyError, ValueError):
        raise LoginRequired() from None


def require_role(*roles: Role) -> Callable[[Request], UiUser]:
    def dependency(request: Request) -> UiUser:
        user = current_user(request)
        if user.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "your role may not do this")
        return user

    return dependency


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def verify_csrf(request: Request) -> None:
    expected = request.session.get("csrf")
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        sent = str((await request.form()).get("csrf_token") or "") or None
    if not isinstance(expected, str) or sent is None or not secrets.compare_digest(expected, sent):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
