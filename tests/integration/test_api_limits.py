"""Request bodies are limited before they are parsed or authenticated: 413 in the API's shape, from the
declared length or while a chunked body streams; a live API's memory stays flat under oversize requests."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from services.api.app import build_api
from services.api.settings import ApiSettings
from shared.models import Client

from .conftest import ADMIN_HEADERS, LiveApi

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def limited_settings(api_settings: ApiSettings) -> ApiSettings:
    return api_settings.model_copy(
        update={"max_json_body_bytes": 4096, "csv_import_max_bytes": 64 * 1024, "csv_import_max_rows": 5}
    )


@pytest.fixture
async def limited(limited_settings: ApiSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = build_api(limited_settings).app
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
    ):
        yield app, client


def _assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert "larger than the limit" in response.json()["detail"]


async def test_an_oversize_json_body_is_refused_before_authentication(
    limited: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = limited
    body = b'{"text": "' + b"x" * 8192 + b'"}'
    for headers in ({}, {"Authorization": "Bearer wrong"}, ADMIN_HEADERS):
        response = await client.post(
            "/api/v1/mailings", content=body, headers={**headers, "Content-Type": "application/json"}
        )
        _assert_too_large(response)


async def test_a_chunked_oversize_body_is_refused_while_it_streams(
    limited: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = limited
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1024
            yield b" " * 1024

    response = await client.post(
        "/api/v1/mailings", content=chunks(), headers={"Content-Type": "application/json"}
    )
    _assert_too_large(response)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert sent < 100 * 1024  # the rest was never asked for


async def test_a_body_under_the_limit_still_reaches_authentication(
    limited: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = limited
    response = await client.post("/api/v1/mailings", json={"text": "hi"})
    assert response.status_code == 401


async def test_an_oversize_csv_file_is_refused_before_authentication(
    limited: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = limited
    data = b"phone,timezone\n" + b"79001234567,Europe/Moscow\n" * 4000
    response = await client.post("/api/v1/clients/import", files={"file": ("c.csv", data, "text/csv")})
    _assert_too_large(response)


async def test_a_csv_import_over_the_row_limit_is_refused_whole(
    limited: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = limited
    rows = "".join(f"7900123456{i},Europe/Moscow\n" for i in range(6))
    response = await client.post(
        "/api/v1/clients/import",
        files={"file": ("c.csv", b"phone,timezone\n" + rows.encode(), "text/csv")},
        headers=ADMIN_HEADERS,
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "the file has more than 5 rows, the most one import takes"}
    async with app.state.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Client)) == 0
    five = "".join(f"7900123456{i},Europe/Moscow\n" for i in range(5))
    accepted = await client.post(
        "/api/v1/clients/import",
        files={"file": ("c.csv", b"phone,timezone\n" + five.encode(), "text/csv")},
        headers=ADMIN_HEADERS,
    )
    assert accepted.status_code == 200 and accepted.json()["created"] == 5


def _memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {name: int(value) for name, value in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}


async def _oversize_request(port: int, size: int, *, chunked: bool) -> int:
    """Sends a request announcing (or streaming) size bytes; the status of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = f"POST /api/v1/mailings HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n{framing}\r\n"
    writer.write(head.encode() + b"\r\n")
    block = b"x" * (256 * 1024)

    async def pour() -> None:
        sent = 0
        while sent < size:
            writer.write(f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block)
            await writer.drain()
            sent += len(block)

    pouring = asyncio.create_task(pour())
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout=60)
        return int(status_line.split()[1])
    finally:
        pouring.cancel()
        await asyncio.gather(pouring, return_exceptions=True)
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_ten_concurrent_40_mb_bodies_raise_the_live_apis_memory_by_less_than_50_mb(
    live_api: LiveApi, chunked: bool
) -> None:
    before = _memory_kib(live_api.pid)
    statuses = await asyncio.gather(
        *(_oversize_request(live_api.port, 40 * MIB, chunked=chunked) for _ in range(10))
    )
    after = _memory_kib(live_api.pid)
    assert statuses == [413] * 10
    assert after["VmHWM"] - before["VmRSS"] < 50 * 1024, (before, after)
