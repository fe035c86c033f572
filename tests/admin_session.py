"""A logged-in admin UI session for tests, until the login work lands: a session cookie signed as
Starlette's SessionMiddleware signs it, with the user and CSRF token the identity module reads."""

from __future__ import annotations

import json
from base64 import b64encode

from itsdangerous import TimestampSigner

SESSION_SECRET = "test-admin-session-secret"
CSRF = "test-csrf-token"


def session_cookie(role: str, *, secret: str = SESSION_SECRET, csrf: str = CSRF) -> str:
    data = {"user": {"sub": f"test-{role}", "name": f"Test {role.capitalize()}", "role": role}, "csrf": csrf}
    return TimestampSigner(secret).sign(b64encode(json.dumps(data).encode())).decode()
