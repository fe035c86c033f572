"""A lean HTTP/1.1 client for one origin: POST over a pool of keep-alive connections, parsed by httptools.

The sender calls one API thousands of times a second with the same small request, and a general client
(aiohttp) cost it more CPU than the rest of its work together (docs/benchmarks.md, "The sender's HTTP
client"). This one does only what those calls need: one origin, POST with a body, the status, the
headers and the body of the answer, a total timeout per call. It raises `TimeoutError`, `OSError`s
(refused, reset, TLS) and `HttpClientError`s, which `shared.domain.retry.classify_exception` labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

CONNECT_TIMEOUT_SECONDS: Final = 3.0
# What each of a host's addresses gets of it at least: a connect and TLS handshake to a distant host.
MIN_CONNECT_SHARE_SECONDS: Final = 1.0
KEEPALIVE_SECONDS: Final = 30.0
# An answer is a short JSON object; anything near this is a misbehaving server, not an answer to buffer.
MAX_RESPONSE_BYTES: Final = 1 << 20
CLOSE_WAIT_SECONDS: Final = 1.0
# A host name is looked up again after this long, or at once when none of its addresses took a connection.
DNS_TTL_SECONDS: Final = 300.0
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HttpClientError(Exception):
    """What this client raises besides `TimeoutError` and the `OSError`s of connecting."""


class ServerDisconnectedError(HttpClientError, ConnectionError):
    """The server closed or reset the connection before a complete answer."""


class InvalidResponseError(HttpClientError):
    """The server's bytes are not an HTTP/1.x answer (or far too many); the connection is closed."""


class ClientClosedError(HttpClientError, ConnectionError):
    """The client was closed before or during the call."""


class Response:
    """An answer: its status, its headers by lower-case name (the last of repeated ones), its body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode("ascii"))
        return None if value is None else value.decode("latin-1")


class _Connection(asyncio.Protocol):
    """One connection: at most one call at a time; the pool hears when it is free again or gone."""

    def __init__(self, pool: HttpClient, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.dropped = False
        self.idle = False
        self.idle_since = 0.0
        self.received = 0
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.headers_done = False
        self.framed = False

    def request(self, data: bytes) -> asyncio.Future[Response]:
        self.waiter = waiter = self.loop.create_future()
        self.received = 0
        cast(asyncio.Transport, self.transport).write(data)
        return waiter

    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def time_out(self, waiter: asyncio.Future[Response], seconds: float) -> None:
        if waiter is self.waiter:
            self.fail(TimeoutError(f"no complete answer within {seconds:g} s"))

    def fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        # The answer may still come: the connection's state is unknown, so it is never reused.
        self.pool._drop(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def eof_received(self) -> None:
        # Out of the pool before the transport closes, so that no call picks it up in between.
        self.pool._drop(self, lost=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._drop(self, lost=True)
        if not self.closed.done():
            self.closed.set_result(None)
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if self.headers_done and not self.framed and exc is None:
            # Neither Content-Length nor chunked: the body ends where the connection does (cleanly).
            waiter.set_result(Response(self.parser.get_status_code(), self.headers, b"".join(self.body)))
            return
        where = "mid-answer" if self.received else "before answering"
        detail = f": {exc}" if exc is not None else ""
        error = ServerDisconnectedError(f"the server closed the connection {where}{detail}")
        error.__cause__ = exc
        waiter.set_exception(error)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for: what comes next on this connection could not be trusted.
            self.pool._drop(self)
            return
        self.received += len(data)
        if self.received > MAX_RESPONSE_BYTES:
            self.fail(InvalidResponseError(f"answer longer than {MAX_RESPONSE_BYTES} bytes"))
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.fail(InvalidResponseError(f"not an HTTP/1.1 answer: {type(exc).__name__}: {exc}"))

    def on_message_begin(self) -> None:
        self.headers = {}
        self.body = []
        self.headers_done = self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers[name] = value
        if name == b"content-length" or (
            name == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked")
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows; a close before it
            # is a connection error, not an answer.
            self.headers_done = False
            return
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            self.pool._drop(self)  # a second answer to one request
            return
        waiter.set_result(Response(status, self.headers, b"".join(self.body)))
        if self.parser.should_keep_alive():
            self.pool._release(self)
        else:
            self.pool._drop(self, graceful=True)


class HttpClient:
    """POSTs to one origin (scheme, host and port of `base_url`; paths go after its own path) over at
    most `max_connections` keep-alive connections, reused last-in first-out and closed after
    `keepalive_seconds` idle. A call that times out or fails closes its connection; one the server
    closed leaves the pool at once. `headers` go into every request."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        timeout_seconds: float,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
    ) -> None:
        url = urlsplit(base_url)
        if (
            url.scheme not in _DEFAULT_PORTS
            or not url.hostname
            or url.query
            or url.fragment
            or not base_url.isascii()
        ):
            raise ValueError(f"not an http(s) base URL without query: {base_url!r}")
        if timeout_seconds <= 0 or max_connections < 1:
            raise ValueError("timeout_seconds must be positive and max_connections at least 1")
        self.host = url.hostname
        self.port = url.port or _DEFAULT_PORTS[url.scheme]
        self._ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        self._timeout = timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._keepalive = keepalive_seconds
        self._max = max_connections
        lines = [f"Host: {url.netloc.rpartition('@')[2]}", *(f"{k}: {v}" for k, v in headers.items())]
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a header holds a line break")
        # Everything of a request but the path, the length and the body, encoded once.
        self._prefix = b"POST " + url.path.rstrip("/").encode("ascii")
        self._head = (" HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines) + "Content-Length: ").encode(
            "latin-1"
        )
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._literal = [self.host] if _is_address(self.host) else None
        self._addresses: list[str] | None = None
        self._addresses_until = 0.0
        self._lookup: asyncio.Task[list[str]] | None = None

    @property
    def connections(self) -> int:
        """Connections open or being opened."""
        return self._open

    async def post(self, path: str, body: bytes, timeout_seconds: float | None = None) -> Response:
        """POST `body` to the base URL's path + `path`; `timeout_seconds` may shorten the client's own."""
        if not path.startswith("/") or not path.isascii() or not path.isprintable() or " " in path:
            raise ValueError(f"not a request path: {path!r}")
        loop = asyncio.get_running_loop()
        total = (
            self._timeout if timeout_seconds is None or timeout_seconds > self._timeout else timeout_seconds
        )
        deadline = loop.time() + total
        data = b"%b%b%b%d\r\n\r\n%b" % (self._prefix, path.encode("ascii"), self._head, len(body), body)
        while True:
            # An idle connection without the await of `_connection`: the common case, once warm.
            conn = self._take_idle() or await self._connection(loop, deadline, total)
            if not conn.closing():
                break
            # Closed under us, its connection_lost not yet delivered: nothing was sent, take another.
            self._drop(conn, lost=True)
        # A kept-alive connection the server closes as this request goes out fails the call like any
        # other close before an answer: the server may have read the request, so it is not sent again
        # here but left to the message's retry, after its delay.
        waiter = conn.request(data)
        timer = loop.call_at(deadline, conn.time_out, waiter, total)
        try:
            return await waiter
        except asyncio.CancelledError:
            if conn.waiter is waiter:
                conn.fail(ClientClosedError("the call was cancelled"))
            raise
        finally:
            timer.cancel()

    async def close(self) -> None:
        """Close every connection; calls under way and later ones raise `ClientClosedError`."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ClientClosedError("the client is closed"))
        connections = list(self._all)
        for conn in connections:
            if conn.idle:
                self._drop(conn, graceful=True)
            else:
                conn.fail(ClientClosedError("the client was closed during the call"))
        if connections:
            await asyncio.wait([conn.closed for conn in connections], timeout=CLOSE_WAIT_SECONDS)

    async def _connection(
        self, loop: asyncio.AbstractEventLoop, deadline: float, total: float
    ) -> _Connection:
        while True:
            if self._closed:
                raise ClientClosedError("the client is closed")
            conn = self._take_idle()
            if conn is not None:
                return conn
            if self._open < self._max:
                return await self._connect(loop, deadline)
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except (TimeoutError, asyncio.CancelledError) as exc:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_one()  # the wake-up this call received (as its time ran out) is passed on
                if isinstance(exc, TimeoutError):
                    raise TimeoutError(f"no free connection within {total:g} s") from None
                raise
            finally:
                if not waiter.done():
                    with contextlib.suppress(ValueError):
                        self._slot_waiters.remove(waiter)

    def _take_idle(self) -> _Connection | None:
        """The connection idle the shortest time, out of the idle list; None when none is."""
        if not self._idle:
            return None
        conn = self._idle.pop()
        conn.idle = False
        return conn

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        self._open += 1
        limit = max(0.0, min(self._connect_timeout, deadline - loop.time()))
        try:
            conn = await self._open_connection(loop, loop.time() + limit)
        except BaseException as exc:
            self._open -= 1
            self._wake_one()
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"no connection to {self.host}:{self.port} within {limit:.3g} s") from None
            raise
        if conn.dropped:
            self._open -= 1
            self._wake_one()
            raise ServerDisconnectedError("the server closed the connection at once")
        self._all.add(conn)
        if self._closed:
            self._drop(conn)
            raise ClientClosedError("the client is closed")
        return conn

    async def _open_connection(self, loop: asyncio.AbstractEventLoop, until: float) -> _Connection:
        """A connection to the first address that takes one (the host's own name checked under TLS) by
        `until` (the loop's time). Each address gets an equal share of the time left (at least
        `MIN_CONNECT_SHARE_SECONDS`), so one that swallows its connects (a stale DNS answer, a dead route)
        leaves the next its own chance; when none takes one, the name is looked up again next time.
        `TimeoutError` (an `OSError`) when the time ran out."""
        async with asyncio.timeout_at(until):
            addresses = self._literal or await self._resolve(loop)
        error: OSError | None = None
        for tried, address in enumerate(addresses):
            left = until - loop.time()
            # An equal share, but never less than a healthy connect (and TLS handshake) needs.
            share = max(left / (len(addresses) - tried), min(left, MIN_CONNECT_SHARE_SECONDS))
            try:
                async with asyncio.timeout(share):
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self, loop),
                        address,
                        self.port,
                        ssl=self._ssl,
                        server_hostname=self.host if self._ssl is not None else None,
                    )
            except OSError as exc:  # TimeoutError too
                error = exc
            else:
                return conn
        self._addresses = None  # the name may point elsewhere by now
        raise error or OSError(f"no address for {self.host}")

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        if self._addresses is not None and loop.time() < self._addresses_until:
            return self._addresses
        if self._lookup is None or self._lookup.done():
            self._lookup = loop.create_task(self._look_up(loop))
        # Shielded: the connects waiting for one lookup time out on their own, the lookup goes on.
        return await asyncio.shield(self._lookup)

    async def _look_up(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self._addresses, self._addresses_until = addresses, loop.time() + DNS_TTL_SECONDS
        return addresses

    def _release(self, conn: _Connection) -> None:
        if self._closed or conn.dropped:
            self._drop(conn)
            return
        conn.idle = True
        conn.idle_since = now = conn.loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = conn.loop.call_at(now + self._keepalive, self._sweep_idle)
        if self._slot_waiters:
            self._wake_one()

    def _drop(self, conn: _Connection, *, lost: bool = False, graceful: bool = False) -> None:
        """Take `conn` out of the pool for good and close it (unless the transport is already gone)."""
        if not conn.dropped:
            conn.dropped = True
            # A connection still being opened holds its slot through `_connect`, not through `_all`.
            if conn in self._all:
                self._all.remove(conn)
                self._open -= 1
                if conn.idle:
                    conn.idle = False
                    self._idle.remove(conn)
                self._wake_one()
        if not lost and conn.transport is not None and not conn.transport.is_closing():
            if graceful:
                conn.transport.close()
            else:
                conn.transport.abort()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep_idle(self) -> None:
        self._sweep = None
        idle = self._idle
        if not idle:
            return
        loop = idle[0].loop
        expired = loop.time() - self._keepalive
        while idle and idle[0].idle_since <= expired:
            self._drop(idle[0], graceful=True)
        if idle:
            self._sweep = loop.call_at(idle[0].idle_since + self._keepalive, self._sweep_idle)
