"""Hostile input over the whole API: injection strings, Unicode edge cases, huge numbers, edge dates.
Every one is a clear 4xx (or accepted and stored exactly), never a 5xx, and nothing is stored half-way."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

HOSTILE_TEXT = [
    "'; DROP TABLE clients; --",
    "1 OR 1=1",
    "{{ 7*7 }}",
    "${7*7}",
    "{% raw %}{{ config }}{% endraw %}",
    "<script>alert(1)</script>",
    "nul\x00inside",
    "lone \ud800 surrogate",
    "right\u202eto-left\u200f mark",
    "emoji 😀🧪",
    "\x1b[31mred\x1b[0m",
    "",
    " ",
]
MAILING = {
    "text": "hello",
    "start_at": "2030-01-01T09:00:00+00:00",
    "end_at": "2030-01-02T09:00:00+00:00",
    "filter": {"tags": [], "operator_codes": []},
}


def _check(response: httpx.Response, *allowed: int) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    assert response.status_code in allowed, (response.status_code, response.text[:300])


async def _post_json(api: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    # json= would refuse a lone surrogate; a client can still send one, escaped, as any JSON may.
    return await api.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("value", HOSTILE_TEXT)
async def test_hostile_text_in_a_client_is_refused_or_stored_exactly(
    api: httpx.AsyncClient, value: str
) -> None:
    for field in ("tag", "timezone", "phone", "operator_code"):
        body = {"phone": "79001234567", "timezone": "UTC", field: value}
        response = await _post_json(api, "/api/v1/clients", body)
        _check(response, 201, 422)
        if response.status_code == 201:
            assert response.json()[field] == value.strip() or field != "tag"
            await api.delete(f"/api/v1/clients/{response.json()['id']}")


@pytest.mark.parametrize("value", HOSTILE_TEXT)
async def test_hostile_text_in_a_mailing_is_refused_or_stored_exactly(
    api: httpx.AsyncClient, value: str
) -> None:
    for body in (
        {**MAILING, "text": value},
        {**MAILING, "filter": {"tags": [value], "operator_codes": []}},
        {**MAILING, "filter": {"tags": [], "operator_codes": [value]}},
    ):
        response = await _post_json(api, "/api/v1/mailings", body)
        _check(response, 201, 422)
        if response.status_code == 201 and body["text"] == value:
            assert (await api.get(f"/api/v1/mailings/{response.json()['id']}")).json()["text"] == value


@pytest.mark.parametrize("value", HOSTILE_TEXT)
async def test_hostile_text_in_query_filters_is_answered_plainly(api: httpx.AsyncClient, value: str) -> None:
    value = value.encode("utf-8", "replace").decode()  # what any client can put in a URL
    for params in ({"tag": value}, {"phone_prefix": value}, {"timezone": value}, {"operator_code": value}):
        _check(await api.get("/api/v1/clients", params=params), 200, 422)
    _check(await api.get("/api/v1/mailings", params={"status": value}), 200, 422)


@pytest.mark.parametrize("raw", ["%ED%A0%80", "%FF%FE", "%00", "%C0%AF"])
async def test_invalid_utf8_in_a_query_is_answered_plainly(api: httpx.AsyncClient, raw: str) -> None:
    # A lone surrogate reaches a URL only as the bytes of its would-be UTF-8 form, which is not UTF-8.
    for name in ("tag", "phone_prefix", "timezone"):
        _check(await api.get(f"/api/v1/clients?{name}={raw}"), 200, 422)


@pytest.mark.parametrize(
    "ident", ["9223372036854775808", "-9223372036854775809", "99999999999999999999999", "-1", "0"]
)
async def test_ids_beyond_bigint_are_not_found_or_invalid(api: httpx.AsyncClient, ident: str) -> None:
    for method, path in (
        ("GET", f"/api/v1/clients/{ident}"),
        ("DELETE", f"/api/v1/clients/{ident}"),
        ("GET", f"/api/v1/mailings/{ident}"),
        ("GET", f"/api/v1/mailings/{ident}/stats"),
        ("GET", f"/api/v1/mailings/{ident}/messages"),
        ("POST", f"/api/v1/mailings/{ident}/pause"),
        ("DELETE", f"/api/v1/api-keys/{ident}"),
    ):
        _check(await api.request(method, path), 404, 422)


@pytest.mark.parametrize("limit", ["0", "-1", "501", "9223372036854775808", "1e9", "NaN"])
async def test_page_sizes_out_of_range_are_refused(api: httpx.AsyncClient, limit: str) -> None:
    for path in ("/api/v1/clients", "/api/v1/mailings", "/api/v1/stats/mailings"):
        _check(await api.get(path, params={"limit": limit}), 422)
        _check(await api.get(path, params={"offset": limit}), 200, 422)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("0001-01-01T00:00:00+00:00", "0001-01-02T00:00:00+00:00"),
        ("9999-12-30T00:00:00+00:00", "9999-12-31T23:59:59+00:00"),
        ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"),
        ("2030-01-01T09:00:00", "2030-01-02T09:00:00"),
        ("2030-02-30T09:00:00+00:00", "2030-03-01T09:00:00+00:00"),
        ("2030-01-01T09:00:00+25:00", "2030-01-02T09:00:00+00:00"),
        ("-2030-01-01T09:00:00+00:00", "2030-01-02T09:00:00+00:00"),
    ],
)
async def test_dates_at_the_edges_are_clear_answers(api: httpx.AsyncClient, start: str, end: str) -> None:
    response = await _post_json(api, "/api/v1/mailings", {**MAILING, "start_at": start, "end_at": end})
    _check(response, 201, 422)
    if response.status_code == 201:
        mailing_id = response.json()["id"]
        _check(await api.get(f"/api/v1/mailings/{mailing_id}"), 200)
        _check(await api.patch(f"/api/v1/mailings/{mailing_id}", json={"text": "x"}), 200, 409, 422)


async def test_a_bad_row_in_an_import_stores_nothing_of_a_refused_file(api: httpx.AsyncClient) -> None:
    data = b"phone,tag,timezone\n79001234567,ok,UTC\n79001234568,\x00nul,UTC\n\xff\xfe,bad,UTC\n"
    response = await api.post("/api/v1/clients/import", files={"file": ("c.csv", data, "text/csv")})
    _check(response, 200, 422)
    listed = (await api.get("/api/v1/clients")).json()
    if response.status_code == 422:
        assert listed["items"] == [] if "items" in listed else listed == []
