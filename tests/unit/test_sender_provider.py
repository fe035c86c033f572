"""The external API's client: the request it puts on the wire, and what each kind of answer becomes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench.chaos import free_port
from services.probe_stub.app import build_probe_stub
from services.probe_stub.settings import ProbeStubSettings
from services.probe_stub.token import make_token
from services.sender.checks import Claim
from services.sender.provider import ProbeClient, make_client, result_label
from shared.domain.retry import FailureKind, ProviderResult
from tests.raw_http import Server, answering, read_request

pytestmark = pytest.mark.unit

CLAIM = Claim(42, 7, 9, 1, "79001234567", "UTC")


@pytest.fixture
async def stand_in(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    """The stand-in on a free port, with the faults given as the fixture's parameter: (base URL, token)."""
    faults: dict[str, Any] = getattr(request, "param", {})
    settings = ProbeStubSettings(_env_file=None, port=free_port(), log_level="WARNING", **faults)
    service = build_probe_stub(settings)
    await service.start()
    try:
        yield f"http://127.0.0.1:{settings.port}", make_token(settings.jwt_secret)
    finally:
        await service.stop()


async def call(base_url: str, token: str = "", seconds: float = 5.0) -> tuple[ProviderResult, list[str]]:
    labels: list[str] = []
    client = make_client(base_url, token, seconds, 4)
    try:
        result = await ProbeClient(client, lambda label, _: labels.append(label)).send(CLAIM, "hi")
    finally:
        await client.close()
    return result, labels


async def test_a_call_puts_the_documented_request_on_the_wire() -> None:
    seen: list[tuple[bytes, dict[str, str], bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            seen.append(request)
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 28\r\n\r\n{"code": 0, "message": "OK"}')

    async with Server(handle) as server:
        client = make_client(server.url + "/prefix/", "token-1", 5.0, 10)
        probe = ProbeClient(client)
        try:
            first = await probe.send(CLAIM, 'say "hi"\n')
            second = await probe.send(CLAIM._replace(message_id=43), 'say "hi"\n', limit_seconds=1.0)
        finally:
            await client.close()

    assert first.ok and second.ok
    (line, headers, body), (second_line, _, second_body) = seen
    assert (line, second_line) == (b"POST /prefix/v1/send/42 HTTP/1.1", b"POST /prefix/v1/send/43 HTTP/1.1")
    assert headers["Authorization"] == "Bearer token-1"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"id": 42, "phone": 79001234567, "text": 'say "hi"\n'}
    assert json.loads(second_body)["id"] == 43


async def test_the_stand_in_accepts_a_call(stand_in: tuple[str, str]) -> None:
    result, labels = await call(*stand_in)
    assert (result.ok, labels) == (True, ["ok"])


@pytest.mark.parametrize("stand_in", [{"rate_limit_rate": 1.0}], indirect=True)
async def test_a_429_carries_its_retry_after(stand_in: tuple[str, str]) -> None:
    result, labels = await call(*stand_in)
    assert (result.ok, result.reason, result.retry_after, labels) == (False, "http 429", 1.0, ["http_429"])


@pytest.mark.parametrize("stand_in", [{"timeout_rate": 1.0}], indirect=True)
async def test_an_answer_that_never_comes_is_a_timeout(stand_in: tuple[str, str]) -> None:
    result, labels = await call(*stand_in, seconds=0.2)
    assert (result.kind, labels) == (FailureKind.TRANSIENT, ["timeout"])
    assert result.reason.startswith("timeout: TimeoutError")


@pytest.mark.parametrize("stand_in", [{"outage_seconds": 60.0}], indirect=True)
async def test_a_dropped_connection_is_a_connection_error(stand_in: tuple[str, str]) -> None:
    result, labels = await call(*stand_in)
    assert (result.kind, labels) == (FailureKind.TRANSIENT, ["connection_error"])
    assert result.reason.startswith(
        "connection error: ServerDisconnectedError: the server closed the connection"
    )


async def test_an_unreachable_api_is_a_refused_connection_not_an_error() -> None:
    result, labels = await call(f"http://127.0.0.1:{free_port()}")
    assert (result.ok, result.kind, labels) == (False, FailureKind.TRANSIENT, ["connection_refused"])


async def test_garbage_for_an_answer_is_a_failure_not_an_error() -> None:
    async with Server(answering(b"\x00\xff garbage\r\n\r\n")) as server:
        result, labels = await call(server.url)
    assert (result.kind, labels) == (FailureKind.TRANSIENT, ["error"])
    assert result.reason.startswith("error: InvalidResponseError: not an HTTP/1.1 answer")
    assert result_label(result, None) == "error"
