"""A signed-in admin UI session for tests that are about the pages, not the sign-in (tests of the sign-in
itself go through the development provider): a session cookie signed as Starlette's SessionMiddleware signs
it, holding what the callback stores."""

from __future__ import annotations

import json
import secrets
import time
from base64 import b64encode

from itsdangerous import TimestampSigner

from services.api.app import SESSION_COOKIE

SESSION_SECRET = "test-admin-session-secret-0123456789abcdef"
CSRF = "test-csrf-token"
COOKIE_NAME = SESSION_COOKIE


def session_data(role: str, *, csrf: str = CSRF, signed_in_at: float | None = None) -> dict[str, object]:
    """What the callback stores for a user of `role` who signed in at `signed_in_at` (by default now)."""
    return {
        "sub": f"test-{role}",
        "name": f"Test {role.capitalize()}",
        "role": role,
        "csrf": csrf,
        "sid": secrets.token_urlsafe(32),
        "signed_in_at": time.time() if signed_in_at is None else signed_in_at,
    }


def signed(data: dict[str, object], *, secret: str = SESSION_SECRET) -> str:
    return TimestampSigner(secret).sign(b64encode(json.dumps(data).encode())).decode()


def session_cookie(role: str, *, secret: str = SESSION_SECRET, csrf: str = CSRF) -> str:
    return signed(session_data(role, csrf=csrf), secret=secret)
