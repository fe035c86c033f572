"""Every operator endpoint needs an API key; admins manage keys; revoked keys stop working."""

from __future__ import annotations

import httpx
import pytest

from .conftest import LiveApi

pytestmark = pytest.mark.integration


async def test_service_endpoints_answer_without_a_key(api: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs/"):
        response = await api.get(path, headers={"Authorization": ""})
        assert response.status_code == 200, path


async def test_the_bootstrap_key_is_an_admin_key(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/api-keys")
    assert response.status_code == 200
    assert [k["role"] for k in response.json()] == ["admin"]


def test_the_live_api_starts_and_accepts_the_bootstrap_key(live_api: LiveApi) -> None:
    response = httpx.get(
        f"{live_api.base_url}/api/v1/api-keys", headers={"Authorization": "Bearer test-admin-key"}
    )
    assert response.status_code == 200
