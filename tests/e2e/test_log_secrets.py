"""A short run of every service as a process (clients created and imported, a mailing sent through some
provider failures, wrong keys tried): no service's log holds a whole phone number or a secret."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from services.probe_stub.token import make_token

from .test_delivery_e2e import API_KEY, Processes, get_json, poll, processes, stub_faults, wait_http_ok

pytestmark = pytest.mark.e2e

__all__ = ["processes"]  # the fixture, imported to be used here

CLIENTS = 40


def _read_logs(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in directory.glob("*.log")}


async def test_no_service_logs_a_phone_number_or_a_secret(
    processes: tuple[Processes, dict[str, int]], tmp_path: Path
) -> None:
    procs, ports = processes
    api = f"http://127.0.0.1:{ports['api']}"
    stub = f"http://127.0.0.1:{ports['stub']}"
    for name, module in (
        ("stub", "services.probe_stub"),
        ("api", "services.api"),
        ("scheduler", "services.scheduler"),
        ("sender", "services.sender"),
    ):
        await procs.start(name, module)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    phones = [f"7902{n:07d}" for n in range(CLIENTS)]
    async with aiohttp.ClientSession() as http:
        for url in (f"{stub}/healthz", f"{api}/healthz", f"http://127.0.0.1:{ports['sender']}/readyz"):
            await wait_http_ok(http, url)
        single = {"phone": phones[0], "tag": "leak", "timezone": "UTC"}
        async with http.post(f"{api}/api/v1/clients", json=single, headers=auth) as response:
            assert response.status == 201, await response.text()
        async with http.post(f"{api}/api/v1/clients", json=single, headers=auth) as response:
            assert response.status == 409  # the conflict names the phone to the caller, not to the log
        rows = "\n".join(["phone,tag,timezone", *(f"{p},leak,UTC" for p in phones[1:])])
        form = aiohttp.FormData()
        form.add_field("file", rows.encode(), filename="clients.csv", content_type="text/csv")
        async with http.post(f"{api}/api/v1/clients/import", data=form, headers=auth) as response:
            assert response.status == 200, await response.text()
        for wrong in ("Bearer mk_wrong", "Bearer a.b.c", f"Bearer {API_KEY[:-1]}"):
            async with http.get(f"{api}/api/v1/clients", headers={"Authorization": wrong}) as response:
                assert response.status == 401

        await stub_faults(http, stub, error_rate=0.3)
        now = datetime.now(UTC)
        body = {
            "text": "no leaks",
            "start_at": now.isoformat(),
            "end_at": (now + timedelta(minutes=10)).isoformat(),
            "filter": {"tags": ["leak"], "operator_codes": []},
        }
        async with http.post(f"{api}/api/v1/mailings", json=body, headers=auth) as response:
            assert response.status == 201, await response.text()
            mailing_id = (await response.json())["id"]

        async def all_sent() -> bool:
            stats = await get_json(http, f"{api}/api/v1/mailings/{mailing_id}/stats", headers=auth)
            return bool(stats["counts"].get("sent", 0) == CLIENTS)

        await poll(all_sent, 60, "every message sent")
    await procs.stop_all()

    logs = _read_logs(tmp_path)
    assert set(logs) >= {"api.log", "scheduler.log", "sender.log", "stub.log"}
    assert "*******" in logs["api.log"]  # the client lines are there, masked
    secrets = [API_KEY, make_token("local-probe-secret"), "local-probe-secret", "postgres:postgres"]
    for name, text in logs.items():
        found = [p for p in phones if p[1:] in text]
        assert not found, f"{name} logs phone numbers: {found[:3]}"
        assert not re.search(r"(?<![0-9])7902[0-9]{7}", text), name
        for secret in secrets:
            assert secret not in text, f"{name} logs a secret"
