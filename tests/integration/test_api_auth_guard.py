"""Authentication that costs an attacker: repeated failures are slowed, then refused with 429; known and
unknown keys are answered from a short cache without a database round trip; revocation still bites."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from services.api.app import build_api
from services.api.settings import ApiSettings

from .conftest import ADMIN_HEADERS

pytestmark = pytest.mark.integration

WRONG = {"Authorization": "Bearer mk_guessed"}


@pytest.fixture
def guarded_app(api_settings: ApiSettings) -> FastAPI:
    return build_api(
        api_settings.model_copy(
            update={
                "auth_failures_before_delay": 2,
                "auth_failures_before_refusal": 4,
                "auth_failure_delay_step_seconds": 0.2,
                "auth_failure_max_delay_seconds": 0.4,
                "trusted_proxy_hops": 1,
            }
        )
    ).app


@pytest.fixture
async def guarded(guarded_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        guarded_app.router.lifespan_context(guarded_app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded_app), base_url="http://api") as client,
    ):
        yield client


class Statements:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_: Any) -> None:
        self.count += 1


@pytest.fixture
def statements(guarded_app: FastAPI, guarded: httpx.AsyncClient) -> Iterator[Statements]:
    counter = Statements()
    engine = guarded_app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", counter)
    yield counter
    event.remove(engine, "before_cursor_execute", counter)


async def test_repeated_failures_are_slowed_then_refused_with_retry_after(guarded: httpx.AsyncClient) -> None:
    assert (await guarded.get("/api/v1/mailings", headers=ADMIN_HEADERS)).status_code == 200  # warm
    took = []
    for _ in range(4):
        started = time.perf_counter()
        assert (await guarded.get("/api/v1/mailings", headers=WRONG)).status_code == 401
        took.append(time.perf_counter() - started)
    assert max(took[:2]) < 0.2 <= took[2] and took[3] >= 0.4
    refused = await guarded.get("/api/v1/mailings", headers=ADMIN_HEADERS)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "too many failed authentications" in refused.json()["detail"]


async def test_the_refusal_is_per_client_address_behind_the_trusted_proxy(guarded: httpx.AsyncClient) -> None:
    attacker = {**WRONG, "X-Forwarded-For": "203.0.113.7"}
    for _ in range(4):
        await guarded.get("/api/v1/mailings", headers=attacker)
    assert (await guarded.get("/api/v1/mailings", headers=attacker)).status_code == 429
    # The attacker cannot choose another address by writing left of what the proxy appended.
    spoofed = {**WRONG, "X-Forwarded-For": "1.2.3.4, 203.0.113.7"}
    assert (await guarded.get("/api/v1/mailings", headers=spoofed)).status_code == 429
    other = {**ADMIN_HEADERS, "X-Forwarded-For": "198.51.100.1"}
    assert (await guarded.get("/api/v1/mailings", headers=other)).status_code == 200


async def test_requests_without_credentials_and_repeated_keys_cost_no_database_round_trip(
    guarded: httpx.AsyncClient, statements: Statements
) -> None:
    assert (await guarded.get("/api/v1/api-keys", headers={"Authorization": ""})).status_code == 401
    assert statements.count == 0
    await guarded.get("/api/v1/api-keys", headers=WRONG)
    after_first_wrong = statements.count
    await guarded.get("/api/v1/api-keys", headers=WRONG)
    assert statements.count == after_first_wrong
    await guarded.get("/api/v1/api-keys", headers=ADMIN_HEADERS)
    after_first_right = statements.count
    await guarded.get("/api/v1/api-keys", headers=ADMIN_HEADERS)
    # The second request runs only its own query (the key list), not the authentication.
    assert statements.count - after_first_right == after_first_right - after_first_wrong - 1


async def test_a_revoked_key_stops_working_at_once_despite_the_cache(guarded: httpx.AsyncClient) -> None:
    created = (
        await guarded.post(
            "/api/v1/api-keys", json={"name": "cached", "role": "viewer"}, headers=ADMIN_HEADERS
        )
    ).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert (await guarded.get("/api/v1/mailings", headers=headers)).status_code == 200
    assert (
        await guarded.delete(f"/api/v1/api-keys/{created['id']}", headers=ADMIN_HEADERS)
    ).status_code == 204
    assert (await guarded.get("/api/v1/mailings", headers=headers)).status_code == 401


async def test_last_use_is_still_recorded_with_the_cache(guarded: httpx.AsyncClient) -> None:
    created = (
        await guarded.post("/api/v1/api-keys", json={"name": "used", "role": "viewer"}, headers=ADMIN_HEADERS)
    ).json()
    await guarded.get("/api/v1/mailings", headers={"Authorization": f"Bearer {created['key']}"})
    keys = (await guarded.get("/api/v1/api-keys", headers=ADMIN_HEADERS)).json()
    assert next(k["last_used_at"] for k in keys if k["id"] == created["id"]) is not None
