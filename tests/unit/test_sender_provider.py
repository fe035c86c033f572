"""The external API's client: the request it puts on the wire, and the body payload it builds."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.sender.checks import Claim
from services.sender.provider import ProbeClient, make_session
from shared.domain.retry import FailureKind

pytestmark = pytest.mark.unit


async def test_a_call_puts_the_documented_request_on_the_wire() -> None:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def send(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, dict(request.headers), await request.read()))
        return web.json_response({"code": 0, "message": "OK"})

    app = web.Application()
    app.router.add_post("/prefix/v1/send/{id}", send)
    async with TestServer(app) as server, make_session("token-1", 5.0, 10) as session:
        client = ProbeClient(session, str(server.make_url("/prefix/")))
        claim = Claim(42, 7, 9, 1, "79001234567", "UTC")
        first = await client.send(claim, 'say "hi"\n')
        second = await client.send(claim._replace(message_id=43), 'say "hi"\n', limit_seconds=1.0)

    assert first.ok and second.ok
    (method, path, headers, body), (_, second_path, _, second_body) = seen
    assert (method, path, second_path) == ("POST", "/prefix/v1/send/42", "/prefix/v1/send/43")
    assert headers["Authorization"] == "Bearer token-1"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"id": 42, "phone": 79001234567, "text": 'say "hi"\n'}
    assert json.loads(second_body)["id"] == 43


async def test_an_unreachable_api_is_a_failure_not_an_error() -> None:
    async with make_session("t", 1.0, 1) as session:
        result = await ProbeClient(session, "http://127.0.0.1:9").send(Claim(1, 1, 1, 1, "7900", "UTC"), "x")
    assert (result.ok, result.kind) == (False, FailureKind.TRANSIENT)
