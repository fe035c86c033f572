"""The API as a service: `start()` serves HTTP until `stop()`, which lets requests under way finish, and
neither touches the process's signal handlers (`shared.service.serve` owns them)."""

from __future__ import annotations

import asyncio
import signal
import socket

import httpx
import pytest

from bench.chaos import free_port
from services.api.app import build_api
from services.api.settings import ApiSettings

pytestmark = pytest.mark.integration

SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handlers = dict[signal.Signals, object]


@pytest.fixture
def served_settings(api_settings: ApiSettings) -> ApiSettings:
    return api_settings.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port()})


def handlers() -> Handlers:
    return {sig: signal.getsignal(sig) for sig in SIGNALS}


async def test_the_api_serves_from_start_until_stop_without_taking_the_signals(
    served_settings: ApiSettings,
) -> None:
    before = handlers()
    api = build_api(served_settings)
    base_url = f"http://127.0.0.1:{served_settings.api_port}"
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            response = await http.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert handlers() == before
    finally:
        await api.stop()
    assert handlers() == before
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=base_url) as http:
            await http.get("/healthz")


async def test_a_request_under_way_finishes_before_the_api_stops(served_settings: ApiSettings) -> None:
    api = build_api(served_settings)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow() -> dict[str, str]:
        entered.set()
        await release.wait()
        return {"done": "yes"}

    api.app.add_api_route("/slow", slow)
    await api.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served_settings.api_port}") as http:
        request = asyncio.create_task(http.get("/slow"))
        await asyncio.wait_for(entered.wait(), timeout=5)
        stopping = asyncio.create_task(api.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done()
        release.set()
        response = await asyncio.wait_for(request, timeout=5)
        await asyncio.wait_for(stopping, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"done": "yes"}


async def test_a_taken_port_fails_the_start_with_an_error(served_settings: ApiSettings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", served_settings.api_port))
        taken.listen()
        with pytest.raises(RuntimeError, match="could not start"):
            await build_api(served_settings).start()
