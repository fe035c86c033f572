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


OPERATOR_ROUTES = [
    ("GET", "/api/v1/clients"),
    ("POST", "/api/v1/clients"),
    ("GET", "/api/v1/clients/1"),
    ("PUT", "/api/v1/clients/1"),
    ("PATCH", "/api/v1/clients/1"),
    ("DELETE", "/api/v1/clients/1"),
    ("POST", "/api/v1/clients/import"),
    ("GET", "/api/v1/clients/1/messages"),
    ("GET", "/api/v1/mailings"),
    ("POST", "/api/v1/mailings"),
    ("GET", "/api/v1/mailings/1"),
    ("DELETE", "/api/v1/mailings/1"),
    ("POST", "/api/v1/mailings/1/pause"),
    ("GET", "/api/v1/mailings/1/stats"),
    ("GET", "/api/v1/mailings/1/messages"),
    ("GET", "/api/v1/stats/mailings"),
    ("GET", "/api/v1/api-keys"),
    ("POST", "/api/v1/api-keys"),
    ("DELETE", "/api/v1/api-keys/1"),
]


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer not-a-key", "Basic dGVzdDp0ZXN0", "test-admin-key"])
async def test_every_operator_route_refuses_a_request_without_a_valid_key(
    api: httpx.AsyncClient, header: str
) -> None:
    for method, path in OPERATOR_ROUTES:
        response = await api.request(method, path, headers={"Authorization": header})
        assert response.status_code == 401, (method, path, header)
        assert response.headers["www-authenticate"] == "Bearer"


async def test_every_operation_in_the_openapi_needs_a_key_except_the_service_ones(
    api: httpx.AsyncClient,
) -> None:
    schema = (await api.get("/openapi.json")).json()
    open_paths = {"/healthz", "/readyz", "/metrics"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path in open_paths:
                continue
            assert operation.get("security") == [{"HTTPBearer": []}], (method, path)


async def _new_key(api: httpx.AsyncClient, role: str) -> tuple[int, str]:
    response = await api.post("/api/v1/api-keys", json={"name": f"{role} key", "role": role})
    assert response.status_code == 201
    body = response.json()
    return body["id"], body["key"]


async def test_an_operator_key_works_on_operator_routes_but_not_on_admin_ones(api: httpx.AsyncClient) -> None:
    _, key = await _new_key(api, "operator")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/api/v1/clients", headers=headers)).status_code == 200
    assert (await api.get("/api/v1/api-keys", headers=headers)).status_code == 403
    created = await api.post("/api/v1/api-keys", json={"name": "x"}, headers=headers)
    assert created.status_code == 403
    assert (await api.delete("/api/v1/api-keys/1", headers=headers)).status_code == 403


async def test_an_admin_key_created_by_the_bootstrap_key_can_manage_keys(api: httpx.AsyncClient) -> None:
    _, key = await _new_key(api, "admin")
    response = await api.get("/api/v1/api-keys", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert "key" not in response.json()[0]


async def test_a_keys_last_use_is_recorded_and_shown_to_admins(api: httpx.AsyncClient) -> None:
    key_id, key = await _new_key(api, "operator")

    def last_used(keys: list[dict[str, object]]) -> object:
        return next(k["last_used_at"] for k in keys if k["id"] == key_id)

    assert last_used((await api.get("/api/v1/api-keys")).json()) is None
    assert (await api.get("/api/v1/clients", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    assert last_used((await api.get("/api/v1/api-keys")).json()) is not None


async def test_a_revoked_key_stops_working_at_once(api: httpx.AsyncClient) -> None:
    key_id, key = await _new_key(api, "operator")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/api/v1/clients", headers=headers)).status_code == 200
    assert (await api.delete(f"/api/v1/api-keys/{key_id}")).status_code == 204
    assert (await api.get("/api/v1/clients", headers=headers)).status_code == 401
    assert (await api.delete(f"/api/v1/api-keys/{key_id}")).status_code == 404


async def test_an_unknown_role_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/api-keys", json={"name": "x", "role": "root"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "role"]


async def test_revoking_a_key_id_beyond_the_bigint_range_is_not_found(api: httpx.AsyncClient) -> None:
    assert (await api.delete(f"/api/v1/api-keys/{2**63}")).status_code == 404
