"""Security headers on every answer, added by a pure ASGI middleware where the route did not set its own.

The admin UI loads its scripts and styles from /admin/static only and runs no inline script; htmx is told
not to evaluate code (allowEval) nor to insert its own <style> (includeIndicatorStyles). Styles keep
'unsafe-inline': the status bars are sized with style attributes and the error pages carry a small
<style>; a style cannot run code. Swagger UI (/docs/) is FastAPI's page: its bundle comes from
cdn.jsdelivr.net and it starts with an inline script, so it gets a policy of its own."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_COMMON = "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
APP_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; " + _COMMON
)
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com; " + _COMMON
)


def form_action(targets: Sequence[str]) -> str:
    """Forms post to us only; the logout form's answer redirects to the provider's end-session page,
    and a browser holds a form's redirects to the same directive."""
    return "; form-action " + " ".join(["'self'", *targets])


HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, docs_path: str = "/docs", form_targets: Sequence[str] = ()) -> None:
        self.app = app
        self.docs_path = docs_path
        self.policies = (
            (APP_POLICY + form_action(form_targets)).encode(),
            (DOCS_POLICY + form_action(())).encode(),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policies[1] if scope["path"].startswith(self.docs_path) else self.policies[0]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in HEADERS if name not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", policy))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
