"""The client directory over HTTP: validation, conflicts, soft deletion, messages of a client."""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import pytest
from loguru import logger

from services.api.settings import ApiSettings

pytestmark = pytest.mark.integration

CLIENT = {"phone": "79001234567", "tag": "vip", "timezone": "Europe/Moscow"}


def _locs(response: httpx.Response) -> list[list[str | int]]:
    return [e["loc"] for e in response.json()["detail"]]


async def test_a_new_client_gets_its_operator_code_from_the_phone(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/clients", json=CLIENT)
    assert response.status_code == 201
    body = response.json()
    assert body["operator_code"] == "900"
    assert body["phone"] == "79001234567"
    assert (await api.get(f"/api/v1/clients/{body['id']}")).json() == body


async def test_a_given_operator_code_is_kept(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/clients", json={**CLIENT, "operator_code": "916"})
    assert response.json()["operator_code"] == "916"


async def test_every_bad_field_is_named_in_the_error(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/clients",
        json={"phone": "89001234567", "operator_code": "9a0", "tag": "x" * 65, "timezone": "Mars/Olympus"},
    )
    assert response.status_code == 422
    assert sorted(_locs(response)) == [
        ["body", "operator_code"],
        ["body", "phone"],
        ["body", "tag"],
        ["body", "timezone"],
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"phone": "7900123456"},
        {"phone": "+79001234567"},
        {"phone": "7\uff19\uff10\uff101234567"},
        {"phone": 7.9},
        {"phone": True},
        {"timezone": "Local"},
        {"timezone": "../etc/passwd"},
        {"tag": "a\x00b"},
        {"tag": 5},
    ],
)
async def test_bad_values_are_rejected_with_the_field_named(
    api: httpx.AsyncClient, change: dict[str, object]
) -> None:
    response = await api.post("/api/v1/clients", json={**CLIENT, **change})
    assert response.status_code == 422
    assert _locs(response) == [["body", next(iter(change))]]


async def test_a_phone_given_as_a_number_is_accepted(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/clients", json={**CLIENT, "phone": 79001234567})
    assert response.status_code == 201
    assert response.json()["phone"] == "79001234567"


async def test_a_duplicate_phone_is_a_conflict(api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/v1/clients", json=CLIENT)).status_code == 201
    response = await api.post("/api/v1/clients", json={**CLIENT, "tag": "other"})
    assert response.status_code == 409
    assert _locs(response) == [["body", "phone"]]


async def test_a_deleted_clients_phone_can_be_used_again(api: httpx.AsyncClient) -> None:
    first = (await api.post("/api/v1/clients", json=CLIENT)).json()
    assert (await api.delete(f"/api/v1/clients/{first['id']}")).status_code == 204
    second = await api.post("/api/v1/clients", json=CLIENT)
    assert second.status_code == 201
    assert second.json()["id"] != first["id"]


async def test_deleting_a_client_moves_its_updated_at_so_the_scheduler_sees_the_change(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    created = (await api.post("/api/v1/clients", json=CLIENT)).json()
    assert (await api.delete(f"/api/v1/clients/{created['id']}")).status_code == 204
    with psycopg.connect(api_settings.psycopg_dsn) as conn:
        row = conn.execute(
            "SELECT updated_at > created_at, updated_at = deleted_at FROM clients WHERE id = %s",
            (created["id"],),
        ).fetchone()
    assert row == (True, True)


async def test_a_deleted_client_is_gone_from_reads_and_lists(api: httpx.AsyncClient) -> None:
    client_id = (await api.post("/api/v1/clients", json=CLIENT)).json()["id"]
    await api.delete(f"/api/v1/clients/{client_id}")
    assert (await api.get(f"/api/v1/clients/{client_id}")).status_code == 404
    assert (await api.patch(f"/api/v1/clients/{client_id}", json={"tag": "x"})).status_code == 404
    assert (await api.delete(f"/api/v1/clients/{client_id}")).status_code == 404
    assert (await api.get(f"/api/v1/clients/{client_id}/messages")).status_code == 404
    assert (await api.get("/api/v1/clients")).json()["total"] == 0


@pytest.mark.parametrize("client_id", ["0", "-1", "9223372036854775808", "99999999999999999999999999"])
async def test_ids_outside_the_bigint_range_are_not_found(api: httpx.AsyncClient, client_id: str) -> None:
    for method in ("GET", "DELETE"):
        assert (await api.request(method, f"/api/v1/clients/{client_id}")).status_code == 404
    assert (await api.put(f"/api/v1/clients/{client_id}", json=CLIENT)).status_code == 404
    assert (await api.get(f"/api/v1/clients/{client_id}/messages")).status_code == 404


async def test_a_put_replaces_every_attribute(api: httpx.AsyncClient) -> None:
    created = (await api.post("/api/v1/clients", json={**CLIENT, "operator_code": "111"})).json()
    response = await api.put(
        f"/api/v1/clients/{created['id']}", json={"phone": "79161112233", "timezone": "Asia/Vladivostok"}
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["phone"], body["operator_code"], body["tag"], body["timezone"]) == (
        "79161112233",
        "916",
        "",
        "Asia/Vladivostok",
    )
    assert body["updated_at"] > created["updated_at"]


async def test_a_patch_changes_only_the_given_fields(api: httpx.AsyncClient) -> None:
    created = (await api.post("/api/v1/clients", json=CLIENT)).json()
    response = await api.patch(f"/api/v1/clients/{created['id']}", json={"tag": "churned"})
    body = response.json()
    assert body["tag"] == "churned"
    assert body["timezone"] == CLIENT["timezone"]
    assert body["updated_at"] > created["updated_at"]


async def test_a_patched_phone_brings_its_operator_code_unless_one_is_given(api: httpx.AsyncClient) -> None:
    client_id = (await api.post("/api/v1/clients", json=CLIENT)).json()["id"]
    url = f"/api/v1/clients/{client_id}"
    assert (await api.patch(url, json={"phone": "79261112233"})).json()["operator_code"] == "926"
    patched = await api.patch(url, json={"phone": "79031112233", "operator_code": "555"})
    assert patched.json()["operator_code"] == "555"
    assert (await api.patch(url, json={"operator_code": None})).json()["operator_code"] == "903"


async def test_a_patch_cannot_null_the_phone_or_timezone(api: httpx.AsyncClient) -> None:
    client_id = (await api.post("/api/v1/clients", json=CLIENT)).json()["id"]
    response = await api.patch(f"/api/v1/clients/{client_id}", json={"phone": None, "timezone": None})
    assert response.status_code == 422
    assert sorted(_locs(response)) == [["body", "phone"], ["body", "timezone"]]


async def test_changing_the_phone_to_a_taken_one_is_a_conflict(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/clients", json=CLIENT)
    other = (await api.post("/api/v1/clients", json={**CLIENT, "phone": "79160000000"})).json()
    response = await api.patch(f"/api/v1/clients/{other['id']}", json={"phone": CLIENT["phone"]})
    assert response.status_code == 409
    assert (await api.get(f"/api/v1/clients/{other['id']}")).json()["phone"] == "79160000000"


async def test_the_list_filters_by_tag_operator_code_and_phone_prefix(api: httpx.AsyncClient) -> None:
    for phone, tag in [
        ("79001110000", "a"),
        ("79001120000", "b"),
        ("79161110000", "a"),
        ("79261110000", "a"),
    ]:
        await api.post("/api/v1/clients", json={**CLIENT, "phone": phone, "tag": tag})

    async def phones(**params: str) -> list[str]:
        page = (await api.get("/api/v1/clients", params=params)).json()
        return [c["phone"] for c in page["items"]]

    assert await phones(tag="a") == ["79001110000", "79161110000", "79261110000"]
    assert await phones(operator_code="900") == ["79001110000", "79001120000"]
    assert await phones(phone_prefix="7900111") == ["79001110000"]
    assert await phones(tag="a", operator_code="916") == ["79161110000"]


async def test_the_list_is_paginated(api: httpx.AsyncClient) -> None:
    for n in range(5):
        await api.post("/api/v1/clients", json={**CLIENT, "phone": f"7900000000{n}"})
    page = (await api.get("/api/v1/clients", params={"limit": 2, "offset": 1})).json()
    assert [c["phone"] for c in page["items"]] == ["79000000001", "79000000002"]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
    assert (await api.get("/api/v1/clients")).json()["limit"] == 50


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "9223372036854775808"}, "offset"),
        ({"operator_code": "12"}, "operator_code"),
        ({"phone_prefix": "7a"}, "phone_prefix"),
        ({"tag": "a\x00"}, "tag"),
    ],
)
async def test_bad_list_parameters_are_named(
    api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await api.get("/api/v1/clients", params=params)
    assert response.status_code == 422
    assert _locs(response) == [["query", field]]


async def test_a_huge_offset_gives_an_empty_page(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/clients", params={"offset": str(2**63 - 1)})
    assert response.status_code == 200
    assert response.json()["items"] == []


def _add_messages(settings: ApiSettings, client_id: int, statuses: list[str]) -> None:
    with psycopg.connect(settings.psycopg_dsn) as conn:
        for status in statuses:
            mailing = conn.execute(
                "INSERT INTO mailings (text, start_at, end_at) VALUES ('hi', now(), now() + interval '1 day')"
                " RETURNING id"
            ).fetchone()
            assert mailing is not None
            conn.execute(
                "INSERT INTO messages (mailing_id, client_id, status, not_before, queued_at)"
                " VALUES (%s, %s, %s, now(), now())",
                (mailing[0], client_id, status),
            )


async def test_a_clients_messages_are_listed_and_filtered_by_status(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    client_id = (await api.post("/api/v1/clients", json=CLIENT)).json()["id"]
    _add_messages(api_settings, client_id, ["sent", "pending", "sent"])
    page = (await api.get(f"/api/v1/clients/{client_id}/messages")).json()
    assert page["total"] == 3
    assert set(page["items"][0]) == {
        "id",
        "mailing_id",
        "client_id",
        "status",
        "created_at",
        "sent_at",
        "attempts",
        "last_error",
    }
    sent = (await api.get(f"/api/v1/clients/{client_id}/messages", params={"status": "sent"})).json()
    assert [m["status"] for m in sent["items"]] == ["sent", "sent"]
    bad = await api.get(f"/api/v1/clients/{client_id}/messages", params={"status": "lost"})
    assert _locs(bad) == [["query", "status"]]


async def test_deleting_a_client_cancels_its_unsent_messages_only(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    client_id = (await api.post("/api/v1/clients", json=CLIENT)).json()["id"]
    _add_messages(api_settings, client_id, ["pending", "queued", "retrying", "sent", "failed"])
    await api.delete(f"/api/v1/clients/{client_id}")
    with psycopg.connect(api_settings.psycopg_dsn) as conn:
        rows = conn.execute(
            "SELECT status, last_error FROM messages WHERE client_id = %s ORDER BY id", (client_id,)
        ).fetchall()
    assert rows == [
        ("cancelled", "client deleted"),
        ("cancelled", "client deleted"),
        ("cancelled", "client deleted"),
        ("sent", None),
        ("failed", None),
    ]


async def test_client_routes_need_an_api_key(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/clients", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    response = await api.post("/api/v1/clients", json=CLIENT, headers={"Authorization": ""})
    assert response.status_code == 401


async def test_an_unknown_field_is_refused_so_a_typo_never_passes_silently(api: httpx.AsyncClient) -> None:
    client_id = (await api.post("/api/v1/clients", json=CLIENT)).json()["id"]
    response = await api.patch(f"/api/v1/clients/{client_id}", json={"timzone": "Asia/Omsk"})
    assert response.status_code == 422
    assert _locs(response) == [["body", "timzone"]]


async def test_concurrent_creates_of_one_phone_give_one_client_and_conflicts(api: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(*(api.post("/api/v1/clients", json=CLIENT) for _ in range(6)))
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409, 409, 409]


async def test_every_change_of_a_client_is_logged_with_its_id(api: httpx.AsyncClient) -> None:
    records: list[dict[str, object]] = []
    sink = logger.add(lambda m: records.append(m.record["extra"] | {"text": m.record["message"]}))
    try:
        client_id = (await api.post("/api/v1/clients", json=CLIENT)).json()["id"]
        await api.patch(f"/api/v1/clients/{client_id}", json={"tag": "x"})
        await api.delete(f"/api/v1/clients/{client_id}")
    finally:
        logger.remove(sink)
    mine = [str(r["text"]) for r in records if r.get("client_id") == client_id]
    operations = [m.split(",")[0].split(":")[0] for m in mine if m.startswith("client ")]
    assert operations == [
        f"client {client_id} created",
        f"client {client_id} updated",
        f"client {client_id} deleted",
    ]
    # The request lines of calls that name the client in their path carry its id too.
    assert any(m.startswith(f"PATCH /api/v1/clients/{client_id} -> 200") for m in mine)
    assert any(m.startswith(f"DELETE /api/v1/clients/{client_id} -> 204") for m in mine)
