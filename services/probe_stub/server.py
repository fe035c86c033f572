"""The stand-in's HTTP/1.1 server: an `asyncio.Protocol` per connection with httptools' parser.

In the end-to-end benchmark the stand-in shares the machine with the system it stands in front of, and a
general framework's per-request work was a fifth of that system's CPU (docs/benchmarks.md). It serves one
`handle(exchange)` callable: keep-alive, HTTP/1.0, `Connection: close`, pipelined requests answered one
at a time in order, chunked bodies, `Expect: 100-continue`, HEAD, a bound on the head and the body, and
idle connections closed after `IDLE_SECONDS`.
An exchange is answered now or later (`loop.call_later`, no task), or its connection is dropped; when the
client hangs up first, the exchange's `hung_up` callback runs.
"""

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, cast
from urllib.parse import unquote

import httptools
from loguru import logger

MAX_BODY_BYTES: Final = 1024 * 1024
MAX_HEAD_BYTES: Final = 64 * 1024
# Pipelined requests read ahead of the one being answered; past this, reading waits.
MAX_PIPELINED: Final = 32
# A connection with nothing to answer that has sent nothing for this long is closed (aiohttp's 75 s);
# they are looked over every `IDLE_SWEEP_SECONDS`, not timed one by one.
IDLE_SECONDS: Final = 75.0
IDLE_SWEEP_SECONDS: Final = 15.0

JSON: Final = "application/json"
_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class Response:
    """A status, a body and its type, and any other headers; the head is built once per HTTP version and
    keep-alive, so the constant answers of the hot path cost a lookup."""

    __slots__ = ("_heads", "body", "content_type", "headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str = JSON, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self._heads: dict[tuple[str, bool], bytes] = {}

    def head(self, http_version: str, keep_alive: bool) -> bytes:
        """The status line and the headers but `Date` and the blank line."""
        key = (http_version, keep_alive)
        head = self._heads.get(key)
        if head is None:
            lines = [
                f"HTTP/{http_version} {self.status} {_REASONS.get(self.status, '')}\r\n",
                f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n",
                *(f"{name}: {value}\r\n" for name, value in self.headers),
            ]
            if not keep_alive:
                lines.append("Connection: close\r\n")
            elif http_version == "1.0":
                lines.append("Connection: keep-alive\r\n")
            head = self._heads[key] = "".join(lines).encode("latin-1")
        return head


def json_response(status: int, payload: object) -> Response:
    return Response(status, json.dumps(payload).encode())


def error_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps({"code": status, "message": message}).encode(), JSON, headers)


class Request:
    __slots__ = ("authorization", "body", "head", "http_version", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        authorization: str | None,
        body: bytes,
        http_version: str,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.authorization = authorization
        self.body = body
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.head = method == "HEAD"


class Exchange:
    """One request and its one answer: `answer`, or `drop` the connection; `hung_up` runs instead when
    the client goes away before either."""

    __slots__ = ("_connection", "done", "error", "hung_up", "request")

    def __init__(self, connection: "_Connection", request: Request, error: Response | None = None) -> None:
        self._connection = connection
        self.request = request
        self.error = error
        self.done = False
        self.hung_up: Callable[[], None] | None = None

    def answer(self, response: Response) -> None:
        if not self.done:
            self.done = True
            self._connection.answered(self, response)

    def drop(self) -> None:
        if not self.done:
            self.done = True
            self._connection.drop()


Handler = Callable[[Exchange], None]


class _DateLine:
    """The `Date` header line, formatted once a second for every connection."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._line


_date: Final = _DateLine()


_BROKEN: Final = Request("", "", "", None, b"", "1.1", keep_alive=False)


class _Connection(asyncio.Protocol):
    def __init__(self, server: "HttpServer") -> None:
        self._server = server
        self._handle = server.handle
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[Exchange] = deque()
        self._current: Exchange | None = None
        self._advancing = False
        self._paused = False
        self._broken = False
        self._stopping = False
        self.last_heard = time.monotonic()
        self._next_message()

    def _next_message(self) -> None:
        self._url = b""
        self._authorization: bytes | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_size = 0
        self._continue = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        self.last_heard = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades are not served: the request is answered as plain HTTP/1.1, then the connection ends.
            self._refuse_more()
        except httptools.HttpParserError:
            self._fail(error_response(400, "malformed HTTP request"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._broken = True
        current = self._current
        self._current = None
        self._pending.clear()
        if current is not None and not current.done:
            current.done = True
            if current.hung_up is not None:
                current.hung_up()
        self._server.forget(self)

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_BYTES:
            self._fail(error_response(431, "request head too large"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD_BYTES:
            self._fail(error_response(431, "request head too large"))
            return
        lowered = name.lower()
        if lowered == b"authorization":
            self._authorization = value
        elif lowered == b"content-length":
            try:
                too_large = int(value) > MAX_BODY_BYTES
            except ValueError:
                too_large = False
            if too_large:
                self._fail(_too_large())
        elif lowered == b"expect" and value.lower() == b"100-continue":
            self._continue = True

    def on_headers_complete(self) -> None:
        if self._continue:
            self._continue = False
            transport = self._transport
            # A "100 Continue" may go out only while no earlier answer is owed on the connection.
            if (
                transport is not None
                and not self._broken
                and self._current is None
                and not self._pending
                and self._parser.get_http_version() == "1.1"
            ):
                transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._broken:
            return
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            self._fail(_too_large())
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._broken:
            return
        parser = self._parser
        url = self._url
        if url.startswith(b"/"):
            raw_path, _, raw_query = url.partition(b"?")
        else:
            parsed = httptools.parse_url(url)
            raw_path, raw_query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        authorization = self._authorization
        body = self._body
        request = Request(
            parser.get_method().decode("latin-1"),
            path,
            raw_query.decode("latin-1"),
            None if authorization is None else authorization.decode("latin-1"),
            body[0] if len(body) == 1 else b"".join(body),
            parser.get_http_version(),
            parser.should_keep_alive(),
        )
        self._next_message()
        exchange = Exchange(self, request)
        if self._current is None and not self._pending and not self._advancing:
            self._current = exchange
            self._dispatch(exchange)
        else:
            self._queue(exchange)

    # answering, one exchange at a time and in order

    def _queue(self, exchange: Exchange) -> None:
        self._pending.append(exchange)
        if self._current is None and not self._advancing:
            self._advance()
        elif len(self._pending) > MAX_PIPELINED and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _dispatch(self, exchange: Exchange) -> None:
        try:
            self._handle(exchange)
        except Exception:
            logger.exception("probe stub: a handler failed")
            exchange.answer(error_response(500, "internal server error"))

    def _advance(self) -> None:
        self._advancing = True
        try:
            pending = self._pending
            while self._current is None and pending:
                exchange = self._current = pending.popleft()
                if exchange.error is not None:
                    exchange.answer(exchange.error)
                else:
                    self._dispatch(exchange)
            if self._paused and len(pending) <= MAX_PIPELINED // 2 and self._transport is not None:
                self._paused = False
                self._transport.resume_reading()
        finally:
            self._advancing = False

    def answered(self, exchange: Exchange, response: Response) -> None:
        transport = self._transport
        if exchange is not self._current:
            return
        if transport is None or transport.is_closing():
            # The client is gone and connection_lost is on its way: the answer has nowhere to go.
            self._current = None
            return
        request = exchange.request
        keep_alive = request.keep_alive and not self._stopping
        head = response.head(request.http_version, keep_alive) + _date() + b"\r\n"
        transport.write(head if request.head else head + response.body)
        self._current = None
        if not keep_alive:
            self._close()
        elif self._pending and not self._advancing:
            self._advance()

    def drop(self) -> None:
        self._current = None
        self._close()

    def _close(self) -> None:
        self._broken = True
        self._pending.clear()
        if self._transport is not None:
            self._transport.close()

    def _refuse_more(self) -> None:
        """Answer what was read, then close: nothing after it is read."""
        self._broken = True
        if self._pending:
            self._pending[-1].request.keep_alive = False
        elif self._current is not None:
            self._current.request.keep_alive = False
        else:
            self._close()

    def _fail(self, response: Response) -> None:
        """Answer `response` after the answers owed, then close; nothing more is read."""
        if self._broken:
            return
        self._broken = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()
        self._pending.append(Exchange(self, _BROKEN, response))
        if self._current is None and not self._advancing:
            self._advance()

    def close_if_idle_since(self, since: float) -> None:
        """Close when nothing is to be answered and the client has sent nothing since `since`."""
        if self._current is None and not self._pending and self.last_heard < since:
            self._close()

    def stop(self) -> None:
        """Close now when idle, else after the answer under way."""
        self._stopping = True
        if self._current is None:
            self._close()
        else:
            self._pending.clear()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _too_large() -> Response:
    return error_response(413, f"the request body is over {MAX_BODY_BYTES} bytes")


class HttpServer:
    """Listens on `start(host, port)` (port 0: any free one, then read `port`) and serves `handle`."""

    def __init__(
        self,
        handle: Handler,
        *,
        idle_seconds: float = IDLE_SECONDS,
        sweep_seconds: float = IDLE_SWEEP_SECONDS,
    ) -> None:
        self.handle = handle
        self.idle_seconds = idle_seconds
        self.sweep_seconds = sweep_seconds
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._all_closed: asyncio.Event | None = None
        self._port: int | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=1024)
        self._port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(self.sweep_seconds, self._sweep)

    def _sweep(self) -> None:
        since = time.monotonic() - self.idle_seconds
        for connection in list(self.connections):
            connection.close_if_idle_since(since)
        self._sweeper = asyncio.get_running_loop().call_later(self.sweep_seconds, self._sweep)

    @property
    def port(self) -> int:
        """The port it listens on (or last listened on)."""
        if self._port is None:
            raise RuntimeError("the server has not started")
        return self._port

    def forget(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def stop(self, grace_seconds: float) -> None:
        """Stop listening, close idle connections, give answers under way `grace_seconds`, then cut."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._all_closed = asyncio.Event()
        for connection in list(self.connections):
            connection.stop()
        if self.connections:
            try:
                async with asyncio.timeout(grace_seconds):
                    await self._all_closed.wait()
            except TimeoutError:
                for connection in list(self.connections):
                    connection.abort()
        await server.wait_closed()
