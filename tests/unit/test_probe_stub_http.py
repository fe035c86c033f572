"""The stand-in's HTTP layer, spoken to over raw sockets: connections, pipelining, bad requests, limits."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from services.probe_stub.app import ProbeStubService, build_probe_stub
from services.probe_stub.server import MAX_BODY_BYTES, Exchange, HttpServer, json_response
from services.probe_stub.settings import ProbeStubSettings
from services.probe_stub.token import make_token

pytestmark = pytest.mark.unit

SECRET = "test-secret-long-enough-for-hmac-sha256"
PHONE = 79_001_234_567


class Answer(NamedTuple):
    status_line: str
    headers: dict[str, str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self, head_only: bool = False) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout=5)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = 0 if head_only else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout=5)
        return Answer(status_line, headers, body)

    async def closed_by_the_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout=5) == b""

    def close(self) -> None:
        self.writer.close()


def send_request(msg_id: int, *, extra: str = "", version: str = "1.1") -> bytes:
    body = json.dumps({"id": msg_id, "phone": PHONE, "text": "hello"}).encode()
    return (
        f"POST /v1/send/{msg_id} HTTP/{version}\r\nHost: stub\r\n"
        f"Authorization: Bearer {make_token(SECRET)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def get_request(path: str, *, extra: str = "", version: str = "1.1", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: stub\r\n{extra}\r\n".encode()


@pytest.fixture
async def service() -> AsyncIterator[ProbeStubService]:
    service = build_probe_stub(
        ProbeStubSettings.model_construct(jwt_secret=SECRET, host="127.0.0.1", port=0),
        registry=CollectorRegistry(),
    )
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def connect(service: ProbeStubService) -> AsyncIterator[Any]:
    opened: list[Connection] = []

    async def open_connection() -> Connection:
        connection = Connection(*await asyncio.open_connection("127.0.0.1", service.port))
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()


async def eventually(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 the stand-in has no event to wait on
            await asyncio.sleep(0.01)


def requests_recorded(service: ProbeStubService) -> list[tuple[int | None, str]]:
    return [(r["msg_id"], r["result"]) for r in service.stub.recorder.requests_seen()]


async def test_a_keep_alive_connection_serves_one_request_after_another(connect: Any) -> None:
    connection = await connect()

    for msg_id in (1, 2, 3):
        connection.send(send_request(msg_id))
        answer = await connection.answer()
        assert answer.status == 200
        assert answer.json() == {"code": 0, "message": "OK"}
        assert "connection" not in answer.headers
        assert answer.headers["content-type"] == "application/json"
        assert "date" in answer.headers


async def test_connection_close_is_answered_then_the_connection_ends(connect: Any) -> None:
    connection = await connect()

    connection.send(send_request(1, extra="Connection: close\r\n"))
    answer = await connection.answer()

    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    assert await connection.closed_by_the_server()


async def test_http_1_0_is_answered_in_1_0_and_closed_unless_kept_alive(connect: Any) -> None:
    connection = await connect()
    connection.send(get_request("/healthz", version="1.0"))
    answer = await connection.answer()
    assert answer.status_line == "HTTP/1.0 200 OK"
    assert await connection.closed_by_the_server()

    kept = await connect()
    for _ in range(2):
        kept.send(get_request("/healthz", version="1.0", extra="Connection: keep-alive\r\n"))
        answer = await kept.answer()
        assert answer.headers["connection"] == "keep-alive"
        assert answer.json() == {"status": "ok"}


async def test_pipelined_requests_are_answered_in_order(service: ProbeStubService, connect: Any) -> None:
    service.stub.set_faults(service.stub.faults.model_validate({"latency_ms": 50}))
    connection = await connect()

    connection.send(send_request(1) + get_request("/_stub/stats") + send_request(2) + get_request("/healthz"))

    answers = [await connection.answer() for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 200]
    assert answers[0].json() == {"code": 0, "message": "OK"}
    # The stats were read only once the first send had been answered.
    assert answers[1].json()["accepted"] == 1
    assert answers[2].json() == {"code": 0, "message": "OK"}
    assert answers[3].json() == {"status": "ok"}


async def test_a_chunked_body_is_read_whole(service: ProbeStubService, connect: Any) -> None:
    body = json.dumps({"id": 4, "phone": PHONE, "text": "hello"}).encode()
    half = len(body) // 2
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:half], body[half:]))
    connection = await connect()

    connection.send(
        f"POST /v1/send/4 HTTP/1.1\r\nHost: stub\r\nAuthorization: Bearer {make_token(SECRET)}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + chunks
        + b"0\r\n\r\n"
    )

    assert (await connection.answer()).status == 200
    assert service.stub.recorder.accepted_count(4) == 1


async def test_a_malformed_request_is_answered_400_and_closed(connect: Any) -> None:
    connection = await connect()

    connection.send(b"GARBAGE\r\n\r\n")
    answer = await connection.answer()

    assert answer.status == 400
    assert answer.json()["code"] == 400
    assert answer.headers["connection"] == "close"
    assert await connection.closed_by_the_server()


async def test_an_unknown_path_is_404_and_a_wrong_method_405_naming_the_allowed(connect: Any) -> None:
    connection = await connect()

    connection.send(get_request("/nowhere"))
    missing = await connection.answer()
    connection.send(get_request("/_stub/faults", method="DELETE"))
    wrong_method = await connection.answer()
    connection.send(get_request("/v1/send/1"))
    send_by_get = await connection.answer()
    connection.send(get_request("/v1/send/1/2", method="POST", extra="Content-Length: 0\r\n"))
    send_too_deep = await connection.answer()

    assert missing.status == 404
    assert missing.json() == {"code": 404, "message": "not found"}
    assert wrong_method.status == 405
    assert wrong_method.headers["allow"] == "GET,HEAD,PUT"
    assert wrong_method.json()["code"] == 405
    assert send_by_get.status == 405
    assert send_by_get.headers["allow"] == "POST"
    assert send_too_deep.status == 404


async def test_head_answers_the_headers_of_get_without_the_body(connect: Any) -> None:
    connection = await connect()

    connection.send(get_request("/healthz", method="HEAD"))
    answer = await connection.answer(head_only=True)
    connection.send(get_request("/healthz"))

    assert answer.status == 200
    assert answer.headers["content-length"] == str(len(b'{"status": "ok"}'))
    assert (await connection.answer()).json() == {"status": "ok"}


async def test_a_body_over_the_limit_is_refused_with_413(service: ProbeStubService, connect: Any) -> None:
    declared = await connect()
    declared.send(
        f"POST /v1/send/1 HTTP/1.1\r\nHost: stub\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
    )
    chunked = await connect()
    chunk = b"x" * 65536
    chunked.send(b"POST /v1/send/1 HTTP/1.1\r\nHost: stub\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(MAX_BODY_BYTES // len(chunk) + 1):
        chunked.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")

    for connection in (declared, chunked):
        answer = await connection.answer()
        assert answer.status == 413
        assert answer.json()["code"] == 413
        assert await connection.closed_by_the_server()
    assert service.stub.recorder.requests == 0


async def test_expect_100_continue_is_answered_before_the_body(connect: Any) -> None:
    body = json.dumps({"id": 5, "phone": PHONE, "text": "hello"}).encode()
    connection = await connect()

    connection.send(
        f"POST /v1/send/5 HTTP/1.1\r\nHost: stub\r\nAuthorization: Bearer {make_token(SECRET)}\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    interim = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), timeout=5)
    connection.send(body)

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert (await connection.answer()).status == 200


async def test_a_client_hanging_up_during_the_latency_is_recorded_as_abandoned(
    service: ProbeStubService, connect: Any
) -> None:
    service.stub.set_faults(service.stub.faults.model_validate({"latency_ms": 300}))
    connection = await connect()
    connection.send(send_request(8))
    await eventually(lambda: service.stub.recorder.requests)

    connection.close()
    await eventually(lambda: requests_recorded(service))

    assert requests_recorded(service) == [(8, "abandoned")]
    assert service.stub.recorder.stats()["accepted"] == 0
    await asyncio.sleep(0.4)
    assert requests_recorded(service) == [(8, "abandoned")]


async def test_stop_lets_an_answer_under_way_finish(service: ProbeStubService, connect: Any) -> None:
    service.stub.set_faults(service.stub.faults.model_validate({"latency_ms": 200}))
    connection = await connect()
    idle = await connect()
    connection.send(send_request(3))
    await eventually(lambda: service.stub.recorder.requests)

    await service.stop()

    answer = await connection.answer()
    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    assert await idle.closed_by_the_server()
    assert requests_recorded(service) == [(3, "accepted")]
    with pytest.raises(OSError):
        await connect()


async def test_metrics_are_prometheus_text_and_readiness_is_ok(connect: Any) -> None:
    connection = await connect()

    connection.send(get_request("/metrics"))
    metrics = await connection.answer()
    connection.send(get_request("/readyz"))
    ready = await connection.answer()

    assert metrics.headers["content-type"] == CONTENT_TYPE_LATEST
    assert b'mailing_probe_stub_requests_total{result="accepted"} 0.0' in metrics.body
    assert ready.json() == {"status": "ok"}


async def test_a_connection_idle_past_the_limit_is_closed_and_a_busy_one_is_not() -> None:
    held: list[Exchange] = []

    def handle(exchange: Exchange) -> None:
        if exchange.request.path == "/hold":
            held.append(exchange)  # answered later: its connection is busy, not idle
        else:
            exchange.answer(json_response(200, {"ok": True}))

    server = HttpServer(handle, idle_seconds=0.2, sweep_seconds=0.05)
    await server.start("127.0.0.1", 0)
    try:
        idle = Connection(*await asyncio.open_connection("127.0.0.1", server.port))
        busy = Connection(*await asyncio.open_connection("127.0.0.1", server.port))
        idle.send(get_request("/"))
        assert (await idle.answer()).status_line == "HTTP/1.1 200 OK"
        busy.send(get_request("/hold"))
        await eventually(lambda: held)

        assert await idle.closed_by_the_server()
        # Something that must not happen takes time to show: several more sweeps past the idle limit.
        await asyncio.sleep(0.3)
        assert not busy.reader.at_eof()
        held[0].answer(json_response(200, {"ok": True}))
        assert (await busy.answer()).status_line == "HTTP/1.1 200 OK"
        idle.close()
        busy.close()
    finally:
        await server.stop(1.0)
