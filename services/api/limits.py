"""Request bodies are limited before anything reads them: a pure ASGI middleware refuses an oversize body
with 413 from its Content-Length, before a byte of it is read, or, for a chunked body, as soon as the
bytes received pass the limit. Nothing behind it (parsing, authentication) ever sees more.

It is pure ASGI, not BaseHTTPMiddleware, so that it sits on the receive channel itself: uvicorn stops
reading the socket while a body waits unread, so an oversize request costs a few socket buffers."""

from __future__ import annotations

import json
from dataclasses import dataclass

from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAYLOAD_TOO_LARGE = 413


@dataclass(frozen=True)
class BodyLimits:
    default_bytes: int
    # Paths whose bodies may be larger (the CSV import), with their own limit.
    by_path: dict[str, int]

    def for_path(self, path: str) -> int:
        return self.by_path.get(path.rstrip("/"), self.default_bytes)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


def too_large_body(limit: int) -> bytes:
    return json.dumps({"detail": f"the request body is larger than the limit of {limit} bytes"}).encode()


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            _log(scope, limit)
            await _refuse(send, limit)
            return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app answers to the interrupted body, the answer is our 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            _log(scope, limit)
            await _refuse(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _log(scope: Scope, limit: int) -> None:
    logger.info("413 on {} {}: body over {} bytes", scope["method"], scope["path"], limit)


async def _refuse(send: Send, limit: int) -> None:
    body = too_large_body(limit)
    await send(
        {
            "type": "http.response.start",
            "status": PAYLOAD_TOO_LARGE,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
