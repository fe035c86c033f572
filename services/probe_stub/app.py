"""The stand-in for the external sending API: its contract, switchable faults, a record of what came in."""

import asyncio
import json
import random
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final
from urllib.parse import parse_qsl

import jwt
from jwt.warnings import InsecureKeyLengthWarning
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from services.probe_stub.contract import InvalidSendRequest, parse_send_request
from services.probe_stub.faults import Faults
from services.probe_stub.metrics import ProbeStubMetrics, Result
from services.probe_stub.recorder import Recorder
from services.probe_stub.server import (
    JSON,
    Exchange,
    HttpServer,
    Request,
    Response,
    error_response,
    json_response,
)
from services.probe_stub.settings import ProbeStubSettings
from shared.domain.statuses import Health, MessageStatus

# A "timeout" never answers; the wait ends earlier when the client hangs up or the server stops.
HANG_SECONDS: Final = 3600.0
TOKEN_CACHE_SIZE: Final = 1024
SHUTDOWN_GRACE_SECONDS: Final = 5.0
SEND_PREFIX: Final = "/v1/send/"


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
    (JSON, json.dumps({"status": MessageStatus.SENT, "result": True}).encode()),
    (JSON, b'{"code": 1, "message": "internal"}'),
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
    stopping: bool = field(default=False, init=False)
    hanging: set["_Call"] = field(default_factory=set, init=False)
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

    def wake_hanging(self) -> None:
        """Drop the connections of the "timeout" calls: the server is stopping."""
        self.stopping = True
        for call in list(self.hanging):
            call.drop()

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


_OK_RESPONSE: Final = Response(200, _OK)
_RATE_LIMITED_RESPONSE: Final = Response(429, _RATE_LIMITED, JSON, (("Retry-After", "1"),))
_REJECTED_RESPONSE: Final = Response(400, _REJECTED)
_ERROR_RESPONSES: Final = tuple(Response(status, body) for status, body in _ERRORS)
_MALFORMED_RESPONSES: Final = tuple(Response(200, body, content_type) for content_type, body in _MALFORMED)


class _Call:
    """One send request from its arrival to its record: answered at once, after the latency (a timer,
    not a task), left hanging, or dropped; recorded as "abandoned" when the client hangs up first."""

    __slots__ = ("arrived_at", "exchange", "msg_id", "result", "stub", "timer")

    def __init__(self, stub: ProbeStub, exchange: Exchange, msg_id: str) -> None:
        self.stub = stub
        self.exchange = exchange
        self.msg_id = msg_id
        self.arrived_at = stub.clocks.wall()
        self.result: Result | None = None
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        stub = self.stub
        stub.recorder.requests += 1
        if stub.outage_until is not None and stub.in_outage():
            self.answered(Result.OUTAGE)
            self.drop()
            return
        faults = stub.faults
        delay_ms = faults.latency_ms
        if faults.latency_jitter_ms:
            delay_ms += stub.rng.uniform(0, faults.latency_jitter_ms)
        if delay_ms > 0:
            self.exchange.hung_up = self._hung_up
            self.timer = asyncio.get_running_loop().call_later(delay_ms / 1000, self.decide)
        else:
            self.decide()

    def decide(self) -> None:
        self.timer = None
        stub = self.stub
        faults = stub.faults
        if faults.timeout_rate and stub.rng.random() < faults.timeout_rate:
            self.answered(Result.TIMEOUT)
            self.hang()
            return
        self.finish(self._answer(stub, faults))

    def _answer(self, stub: ProbeStub, faults: Faults) -> Response:
        request = self.exchange.request
        problem = stub.token_problem(request.authorization)
        if problem is not None:
            self.answered(Result.UNAUTHORIZED)
            return error_response(401, problem)
        try:
            message = parse_send_request(self.msg_id, request.body)
        except InvalidSendRequest as exc:
            self.answered(Result.REJECTED)
            return error_response(400, str(exc))

        rng = stub.rng
        if faults.error_rate and rng.random() < faults.error_rate:
            self.answered(Result.ERROR)
            return rng.choice(_ERROR_RESPONSES)
        if faults.rate_limit_rate and rng.random() < faults.rate_limit_rate:
            self.answered(Result.RATE_LIMITED)
            return _RATE_LIMITED_RESPONSE
        if faults.reject_rate and rng.random() < faults.reject_rate:
            self.answered(Result.REJECTED)
            return _REJECTED_RESPONSE
        if faults.malformed_rate and rng.random() < faults.malformed_rate:
            self.answered(Result.MALFORMED)
            return rng.choice(_MALFORMED_RESPONSES)

        self.answered(Result.ACCEPTED)
        stub.recorder.record_accepted(message.msg_id, message.phone, message.text, stub.clocks.wall())
        return _OK_RESPONSE

    def answered(self, result: Result) -> None:
        self.result = result
        self.stub.metrics.count(result)

    def finish(self, response: Response) -> None:
        self.exchange.answer(response)
        self.record()

    def hang(self) -> None:
        stub = self.stub
        if stub.stopping:
            self.drop()
            return
        stub.hanging.add(self)
        self.exchange.hung_up = self._hung_up
        self.timer = asyncio.get_running_loop().call_later(HANG_SECONDS, self.drop)

    def drop(self) -> None:
        self._settle()
        self.exchange.drop()
        self.record()

    def _hung_up(self) -> None:
        # The client went away during the latency (result still None: "abandoned") or while left hanging.
        self._settle()
        self.record()

    def _settle(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.stub.hanging.discard(self)

    def record(self) -> None:
        stub = self.stub
        stub.recorder.record_request(self.msg_id, self.arrived_at, stub.clocks.wall(), self.result)


def get_faults(stub: ProbeStub, request: Request) -> Response:
    return json_response(200, stub.faults_view())


def put_faults(stub: ProbeStub, request: Request) -> Response:
    try:
        update = Faults.model_validate_json(request.body)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
            for error in exc.errors()
        ]
        message = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
        return json_response(422, {"code": 422, "message": message, "errors": errors})
    stub.set_faults(update)
    return json_response(200, stub.faults_view())


def get_stats(stub: ProbeStub, request: Request) -> Response:
    return json_response(200, stub.recorder.stats())


def _query_msg_id(request: Request) -> str | None:
    for name, value in parse_qsl(request.query, keep_blank_values=True):
        if name == "msg_id":
            return value
    return None


def get_accepted(stub: ProbeStub, request: Request) -> Response:
    raw = _query_msg_id(request)
    msg_id: int | None = None
    if raw is not None:
        try:
            msg_id = int(raw)
        except ValueError:
            return error_response(400, f"msg_id must be an integer, got {raw!r}")
    return json_response(200, stub.recorder.accepted(msg_id))


def get_requests(stub: ProbeStub, request: Request) -> Response:
    raw = _query_msg_id(request)
    if raw is not None and _INTEGER_ID.fullmatch(raw) is None:
        return error_response(400, f"msg_id must be an integer, got {raw!r}")
    return json_response(200, stub.recorder.requests_seen(raw))


def reset(stub: ProbeStub, request: Request) -> Response:
    stub.reset()
    return json_response(200, {"status": Health.OK})


def healthz(stub: ProbeStub, request: Request) -> Response:
    return json_response(200, {"status": Health.OK})


def metrics(stub: ProbeStub, request: Request) -> Response:
    return Response(200, generate_latest(stub.metrics.registry), CONTENT_TYPE_LATEST)


Route = Callable[[ProbeStub, Request], Response]

# Besides these, POST /v1/send/{msg_id}. A GET route answers HEAD too.
ROUTES: Final[dict[str, dict[str, Route]]] = {
    "/_stub/faults": {"GET": get_faults, "PUT": put_faults},
    "/_stub/stats": {"GET": get_stats},
    "/_stub/accepted": {"GET": get_accepted},
    "/_stub/requests": {"GET": get_requests},
    "/_stub/reset": {"POST": reset},
    "/healthz": {"GET": healthz},
    "/readyz": {"GET": healthz},
    "/metrics": {"GET": metrics},
}


def _allow(methods: set[str]) -> str:
    return ",".join(sorted(methods | {"HEAD"} if "GET" in methods else methods))


_NOT_FOUND: Final = error_response(404, "not found")
_SEND_NOT_ALLOWED: Final = error_response(405, "method not allowed", (("Allow", "POST"),))
_NOT_ALLOWED: Final = {
    path: error_response(405, "method not allowed", (("Allow", _allow(set(methods))),))
    for path, methods in ROUTES.items()
}


def route(stub: ProbeStub, exchange: Exchange) -> None:
    """Answer `exchange` from the route its path and method name."""
    request = exchange.request
    path = request.path
    if path.startswith(SEND_PREFIX):
        msg_id = path[len(SEND_PREFIX) :]
        if not msg_id or "/" in msg_id:
            exchange.answer(_NOT_FOUND)
        elif request.method != "POST":
            exchange.answer(_SEND_NOT_ALLOWED)
        else:
            _Call(stub, exchange, msg_id).start()
        return
    methods = ROUTES.get(path)
    if methods is None:
        exchange.answer(_NOT_FOUND)
        return
    handler = methods.get("GET" if request.head else request.method)
    exchange.answer(_NOT_ALLOWED[path] if handler is None else handler(stub, request))


class ProbeStubService:
    """The stand-in as a process: `start()` listens on the configured address (port 0: a free one, then
    read `port`), `stop()` stops listening, wakes the hanging calls and gives the others 5 s."""

    def __init__(self, settings: ProbeStubSettings, stub: ProbeStub) -> None:
        self.settings = settings
        self.stub = stub
        self.server = HttpServer(partial(route, stub))

    @property
    def port(self) -> int:
        """The port it listens on, once started."""
        return self.server.port

    async def start(self) -> None:
        self.stub.stopping = False
        await self.server.start(self.settings.host, self.settings.port)
        logger.bind(host=self.settings.host, port=self.port).info(
            "probe stub listening on http://{}:{}", self.settings.host, self.port
        )

    async def stop(self) -> None:
        """Stop listening, wake the hanging "timeout" requests, give the others 5 s to finish."""
        self.stub.wake_hanging()
        await self.server.stop(SHUTDOWN_GRACE_SECONDS)
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
