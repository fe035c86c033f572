"""The stand-in for the external sending API: its contract, switchable faults, a record of what came in."""

import asyncio
import json
import random
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from aiohttp import web
from jwt.warnings import InsecureKeyLengthWarning
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from services.probe_stub.contract import InvalidSendRequest, parse_send_request
from services.probe_stub.faults import Faults
from services.probe_stub.metrics import ProbeStubMetrics, Result
from services.probe_stub.recorder import Recorder
from services.probe_stub.settings import ProbeStubSettings
from shared.domain.statuses import Health, MessageStatus

# A "timeout" never answers; the wait ends earlier when the client hangs up or the server stops.
HANG_SECONDS: Final = 3600.0
HANG_POLL_SECONDS: Final = 1.0
TOKEN_CACHE_SIZE: Final = 1024

_JSON: Final = "application/json"
_INTEGER_ID: Final = re.compile(r"-?[0-9]{1,19}")
_OK: Final = b'{"code": 0, "message": "OK"}'
_RATE_LIMITED: Final = b'{"code": 429, "message": "too many requests"}'
_REJECTED: Final = b'{"code": 400, "message": "request rejected"}'
_ERRORS: Final = (
    (500, b'{"code": 500, "message": "internal server error"}'),
    (502, b'{"code": 502, "message": "bad gateway"}'),
    (503, b'{"code": 503, "message": "service unavailable"}'),
)
_MALFORMED: Final = (
    ("text/html", b"<html><body>OK</body></html>"),
    (_JSON, json.dumps({"status": MessageStatus.SENT, "result": True}).encode()),
    (_JSON, b'{"code": 1, "message": "internal"}'),
)


@dataclass(frozen=True)
class Clocks:
    """`monotonic` times outages and hangs; `wall` stamps what the stand-in records and checks tokens."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


@dataclass
class ProbeStub:
    secret: str
    faults: Faults
    metrics: ProbeStubMetrics
    clocks: Clocks
    rng: random.Random
    recorder: Recorder = field(default_factory=Recorder)
    outage_until: float | None = field(default=None, init=False)
    stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _tokens: dict[str, float | None] = field(default_factory=dict, init=False)

    def set_faults(self, update: Faults) -> None:
        changes = update.model_dump(exclude_unset=True)
        self.faults = self.faults.model_copy(update=changes)
        if "outage_seconds" in changes:
            self.start_outage(self.faults.outage_seconds)

    def start_outage(self, seconds: float) -> None:
        self.outage_until = self.clocks.monotonic() + seconds if seconds > 0 else None

    def in_outage(self) -> bool:
        if self.outage_until is None:
            return False
        if self.clocks.monotonic() < self.outage_until:
            return True
        self.outage_until = None
        return False

    def faults_view(self) -> dict[str, Any]:
        until = self.outage_until
        remaining = 0.0 if until is None else max(0.0, until - self.clocks.monotonic())
        return {**self.faults.model_dump(), "outage_remaining_seconds": remaining}

    def reset(self) -> None:
        self.faults = Faults()
        self.outage_until = None
        self.recorder.reset()

    def token_problem(self, authorization: str | None) -> str | None:
        if authorization is None:
            return "missing Authorization header"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "Authorization must be 'Bearer <JWT>'"
        if token not in self._tokens:
            # Decoding a JWT costs more than the rest of a request; the sender reuses one token.
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                    claims = jwt.decode(
                        token, self.secret, algorithms=["HS256"], options={"verify_exp": False}
                    )
            except jwt.InvalidTokenError as exc:
                return f"invalid token: {exc}"
            claimed = claims.get("exp")
            if claimed is not None and (isinstance(claimed, bool) or not isinstance(claimed, int | float)):
                return "invalid token: exp must be a number"
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens.clear()
            self._tokens[token] = claimed
        exp = self._tokens[token]
        if exp is not None and self.clocks.wall() >= exp:
            return "token expired"
        return None


STUB: Final = web.AppKey("probe_stub", ProbeStub)


def _json(status: int, payload: object) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type=_JSON)


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"code": status, "message": message})


def _drop(request: web.Request) -> web.Response:
    # Closing the transport is what the client sees as a refused/reset connection; the
    # returned response is never written.
    request.protocol.force_close()
    return web.Response()


async def _hang(stub: ProbeStub, request: web.Request) -> None:
    deadline = stub.clocks.monotonic() + HANG_SECONDS
    while not stub.stopping.is_set() and stub.clocks.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        try:
            async with asyncio.timeout(HANG_POLL_SECONDS):
                await stub.stopping.wait()
        except TimeoutError:
            pass


async def send(request: web.Request) -> web.Response:
    stub = request.app[STUB]
    call = _Call(stub, request.match_info["msg_id"], stub.clocks.wall())
    stub.recorder.requests += 1
    try:
        return await _answer(stub, request, call)
    finally:
        # Also when the handler is cancelled because the client hung up: the call happened all the same.
        stub.recorder.record_request(call.msg_id, call.arrived_at, stub.clocks.wall(), call.result)


@dataclass
class _Call:
    stub: ProbeStub
    msg_id: str
    arrived_at: float
    result: Result | None = None

    def answered(self, result: Result) -> None:
        self.result = result
        self.stub.metrics.count(result)


async def _answer(stub: ProbeStub, request: web.Request, call: _Call) -> web.Response:
    if stub.outage_until is not None and stub.in_outage():
        call.answered(Result.OUTAGE)
        return _drop(request)

    faults = stub.faults
    rng = stub.rng
    delay_ms = faults.latency_ms
    if faults.latency_jitter_ms:
        delay_ms += rng.uniform(0, faults.latency_jitter_ms)
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    if faults.timeout_rate and rng.random() < faults.timeout_rate:
        call.answered(Result.TIMEOUT)
        await _hang(stub, request)
        return _drop(request)

    problem = stub.token_problem(request.headers.get("Authorization"))
    if problem is not None:
        call.answered(Result.UNAUTHORIZED)
        return _error(401, problem)
    try:
        message = parse_send_request(request.match_info["msg_id"], await request.read())
    except InvalidSendRequest as exc:
        call.answered(Result.REJECTED)
        return _error(400, str(exc))

    if faults.error_rate and rng.random() < faults.error_rate:
        call.answered(Result.ERROR)
        status, body = rng.choice(_ERRORS)
        return web.Response(status=status, body=body, content_type=_JSON)
    if faults.rate_limit_rate and rng.random() < faults.rate_limit_rate:
        call.answered(Result.RATE_LIMITED)
        return web.Response(status=429, body=_RATE_LIMITED, content_type=_JSON, headers={"Retry-After": "1"})
    if faults.reject_rate and rng.random() < faults.reject_rate:
        call.answered(Result.REJECTED)
        return web.Response(status=400, body=_REJECTED, content_type=_JSON)
    if faults.malformed_rate and rng.random() < faults.malformed_rate:
        call.answered(Result.MALFORMED)
        content_type, body = rng.choice(_MALFORMED)
        return web.Response(status=200, body=body, content_type=content_type)

    call.answered(Result.ACCEPTED)
    stub.recorder.record_accepted(message.msg_id, message.phone, message.text, stub.clocks.wall())
    return web.Response(status=200, body=_OK, content_type=_JSON)


async def get_faults(request: web.Request) -> web.Response:
    return _json(200, request.app[STUB].faults_view())


async def put_faults(request: web.Request) -> web.Response:
    stub = request.app[STUB]
    try:
        update = Faults.model_validate_json(await request.read())
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
            for error in exc.errors()
        ]
        message = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
        return _json(422, {"code": 422, "message": message, "errors": errors})
    stub.set_faults(update)
    return _json(200, stub.faults_view())


async def get_stats(request: web.Request) -> web.Response:
    return _json(200, request.app[STUB].recorder.stats())


async def get_accepted(request: web.Request) -> web.Response:
    raw = request.query.get("msg_id")
    msg_id: int | None = None
    if raw is not None:
        try:
            msg_id = int(raw)
        except ValueError:
            return _error(400, f"msg_id must be an integer, got {raw!r}")
    return _json(200, request.app[STUB].recorder.accepted(msg_id))


async def get_requests(request: web.Request) -> web.Response:
    raw = request.query.get("msg_id")
    if raw is not None and _INTEGER_ID.fullmatch(raw) is None:
        return _error(400, f"msg_id must be an integer, got {raw!r}")
    return _json(200, request.app[STUB].recorder.requests_seen(raw))


async def reset(request: web.Request) -> web.Response:
    request.app[STUB].reset()
    return _json(200, {"status": Health.OK})


async def healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": Health.OK})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STUB].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _wake_hanging_requests(app: web.Application) -> None:
    app[STUB].stopping.set()


def _routes(app: web.Application) -> None:
    app.router.add_post("/v1/send/{msg_id}", send)
    app.router.add_get("/_stub/faults", get_faults)
    app.router.add_put("/_stub/faults", put_faults)
    app.router.add_get("/_stub/stats", get_stats)
    app.router.add_get("/_stub/accepted", get_accepted)
    app.router.add_get("/_stub/requests", get_requests)
    app.router.add_post("/_stub/reset", reset)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", healthz)
    app.router.add_get("/metrics", metrics)


class ProbeStubService:
    """The stand-in as a process: `app` is its aiohttp application (tests serve it themselves);
    `start()` listens on the configured address, `stop()` wakes hanging calls and closes."""

    def __init__(self, settings: ProbeStubSettings, stub: ProbeStub) -> None:
        self.settings = settings
        self.stub = stub
        self.app = web.Application()
        self.app[STUB] = stub
        self.app.on_shutdown.append(_wake_hanging_requests)
        _routes(self.app)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # handler_cancellation stops the sleeps of requests whose client has already given up.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0, handler_cancellation=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.settings.host, self.settings.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.bind(host=self.settings.host, port=self.settings.port).info(
            "probe stub listening on http://{}:{}", self.settings.host, self.settings.port
        )

    async def stop(self) -> None:
        """Stop listening, wake the hanging "timeout" requests, give the others 5 s to finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        logger.info("probe stub stopped")


def build_probe_stub(
    settings: ProbeStubSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    registry: CollectorRegistry | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> ProbeStubService:
    stub = ProbeStub(
        secret=settings.jwt_secret,
        faults=Faults.from_settings(settings),
        metrics=ProbeStubMetrics(registry if registry is not None else CollectorRegistry()),
        clocks=Clocks(monotonic=clock, wall=wall_clock),
        rng=rng if rng is not None else random.Random(),  # noqa: S311 simulated faults, not security
        recorder=Recorder(request_log_size=settings.request_log_size),
    )
    stub.start_outage(settings.outage_seconds)
    return ProbeStubService(settings, stub)
