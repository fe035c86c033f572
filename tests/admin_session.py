"""A signed-in admin UI session for tests that are about the pages, not the sign-in (tests of the sign-in
itself go through the development provider): a session cookie signed as Starlette's SessionMiddleware signs
it, holding what the callback stores."""

from __future__ import annotations

import json
from base64 import b64encode

from itsdangerous import TimestampSigner

from services.api.app import SESSION_COOKIE

SESSION_SECRET = "test-admin-session-secret-0123456789abcdef"
CSRF = "test-csrf-token"
COOKIE_NAME = SESSION_COOKIE


def session_cookie(role: str, *, secret: str = SESSION_SECRET, csrf: str = CSRF) -> str:
    data = {"sub": f"test-{role}", "name": f"Test {role.capitalize()}", "role": role, "csrf": csrf}
    return TimestampSigner(secret).sign(b64encode(json.dumps(data).encode())).decode()
