"""CSV import: valid rows kept (created or updated), invalid rows listed by line, file errors refused."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI
from loguru import logger

from services.api import clients_import
from services.api.clients_import import log_writers_done

from .conftest import ADMIN_HEADERS

pytestmark = pytest.mark.integration

HEADER = "phone,operator_code,tag,timezone\n"


async def _import(api: httpx.AsyncClient, text: str | bytes) -> httpx.Response:
    data = text.encode() if isinstance(text, str) else text
    return await api.post("/api/v1/clients/import", files={"file": ("clients.csv", data, "text/csv")})


async def _phones(api: httpx.AsyncClient) -> dict[str, dict[str, str]]:
    page = (await api.get("/api/v1/clients", params={"limit": 500})).json()
    return {c["phone"]: c for c in page["items"]}


async def test_valid_rows_are_created_and_invalid_ones_listed_by_line(api: httpx.AsyncClient) -> None:
    response = await _import(
        api,
        HEADER
        + "79001234567,,vip,Europe/Moscow\n"
        + "79161234567,555,,Asia/Vladivostok\n"
        + "89001234567,12,,Mars/Olympus\n"
        + "\n"
        + '79261234567,,"quoted, tag",Europe/London\n',
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["created"], body["updated"], body["rejected"]) == (3, 0, 1)
    assert body["errors"] == [
        {
            "line": 4,
            "field": "phone",
            "message": "phone must be 7 followed by 10 digits (7XXXXXXXXXX), got '89001234567'",
        },
        {"line": 4, "field": "operator_code", "message": "operator code must be exactly 3 digits, got '12'"},
        {
            "line": 4,
            "field": "timezone",
            "message": "unknown timezone 'Mars/Olympus'; use an IANA name such as Europe/Moscow",
        },
    ]
    clients = await _phones(api)
    assert clients["79001234567"]["operator_code"] == "900"
    assert clients["79161234567"]["operator_code"] == "555"
    assert clients["79261234567"]["tag"] == "quoted, tag"


async def test_a_known_phone_updates_that_client(api: httpx.AsyncClient) -> None:
    created = (
        await api.post("/api/v1/clients", json={"phone": "79001234567", "timezone": "Europe/Moscow"})
    ).json()
    body = (await _import(api, HEADER + "79001234567,,new,Asia/Omsk\n79001234568,,,Asia/Omsk\n")).json()
    assert (body["created"], body["updated"], body["rejected"]) == (1, 1, 0)
    updated = (await api.get(f"/api/v1/clients/{created['id']}")).json()
    assert (updated["tag"], updated["timezone"]) == ("new", "Asia/Omsk")
    assert updated["updated_at"] > created["updated_at"]


async def test_a_phone_repeated_in_the_file_is_rejected_after_its_first_row(api: httpx.AsyncClient) -> None:
    body = (await _import(api, HEADER + "79001234567,,a,UTC\n79001234567,,b,UTC\n")).json()
    assert (body["created"], body["rejected"]) == (1, 1)
    assert body["errors"] == [{"line": 3, "field": "phone", "message": "duplicate of line 2"}]
    assert (await _phones(api))["79001234567"]["tag"] == "a"


async def test_repeats_are_rejected_in_line_order_among_the_other_errors(api: httpx.AsyncClient) -> None:
    """Repeats are found in the database, other errors while parsing: the list is still in line order,
    a repeat of an invalid row is not a repeat, and the upsert's counts leave the repeats out."""
    await api.post("/api/v1/clients", json={"phone": "79001234568", "timezone": "UTC"})
    body = (
        await _import(
            api,
            HEADER
            + "79001234567,,a,UTC\n"  # 2
            + "8900,,,UTC\n"  # 3
            + "79001234567,,b,UTC\n"  # 4: repeat of 2
            + "79001234568,,c,Mars/Olympus\n"  # 5: invalid
            + "79001234568,,d,UTC\n"  # 6: first valid row of this phone: an update
            + "79001234567,,e,UTC\n"  # 7: repeat of 2
            + "79001234568,,f,UTC\n",  # 8: repeat of 6
        )
    ).json()
    assert (body["created"], body["updated"], body["rejected"]) == (1, 1, 5)
    assert [(e["line"], e["field"]) for e in body["errors"]] == [
        (3, "phone"),
        (4, "phone"),
        (5, "timezone"),
        (7, "phone"),
        (8, "phone"),
    ]
    assert [e["message"] for e in body["errors"] if e["line"] in (4, 7, 8)] == [
        "duplicate of line 2",
        "duplicate of line 2",
        "duplicate of line 6",
    ]
    clients = await _phones(api)
    assert (clients["79001234567"]["tag"], clients["79001234568"]["tag"]) == ("a", "d")


async def test_a_file_upserted_in_many_parts_counts_and_rejects_as_in_one(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big files are upserted a part at a time (parts by phone): a repeat is still found, wherever its
    first row is, and every client is written once."""
    monkeypatch.setattr(clients_import, "UPSERT_ROWS", 3)
    phones = [f"7900123456{i}" for i in range(10)]
    rows = [f"{p},,,UTC" for p in phones] + [f"{phones[7]},,x,UTC", f"{phones[0]},,y,UTC"]
    body = (await _import(api, HEADER + "\n".join(rows) + "\n")).json()
    assert (body["created"], body["updated"], body["rejected"]) == (10, 0, 2)
    assert body["errors"] == [
        {"line": 12, "field": "phone", "message": "duplicate of line 9"},
        {"line": 13, "field": "phone", "message": "duplicate of line 2"},
    ]
    again = (await _import(api, HEADER + "\n".join(rows[:10]) + "\n")).json()
    assert (again["created"], again["updated"], again["rejected"]) == (0, 10, 0)
    assert {c["tag"] for c in (await _phones(api)).values()} == {""}


async def test_the_error_list_keeps_the_first_errors_by_line_when_repeats_are_many(
    api: httpx.AsyncClient,
) -> None:
    rows = ["79001234567,,,UTC"] * 1200 + ["bad,,,UTC"] * 5
    body = (await _import(api, HEADER + "\n".join(rows) + "\n")).json()
    assert (body["created"], body["rejected"]) == (1, 1204)
    assert len(body["errors"]) == 1000
    assert [e["line"] for e in body["errors"]] == list(range(3, 1003))
    assert {e["message"] for e in body["errors"]} == {"duplicate of line 2"}


async def test_columns_may_come_in_any_order_and_optional_ones_may_be_missing(api: httpx.AsyncClient) -> None:
    body = (await _import(api, "\ufeffTimezone,Phone\r\nEurope/Moscow,79001234567\r\n")).json()
    assert (body["created"], body["rejected"]) == (1, 0)
    assert (await _phones(api))["79001234567"]["operator_code"] == "900"


async def test_an_existing_client_keeps_the_tag_and_code_a_file_without_those_columns_does_not_give(
    api: httpx.AsyncClient,
) -> None:
    client = {"phone": "79001234567", "operator_code": "999", "tag": "vip", "timezone": "Europe/Moscow"}
    assert (await api.post("/api/v1/clients", json=client)).status_code == 201
    body = (await _import(api, "phone,timezone\n79001234567,Asia/Omsk\n79001234568,Asia/Omsk\n")).json()
    assert (body["created"], body["updated"], body["rejected"]) == (1, 1, 0)
    phones = await _phones(api)
    kept = phones["79001234567"]
    assert (kept["operator_code"], kept["tag"], kept["timezone"]) == ("999", "vip", "Asia/Omsk")
    new = phones["79001234568"]
    assert (new["operator_code"], new["tag"]) == ("900", "")

    # A column the file has is written, an empty cell too (the rules' default, as in the API).
    body = (await _import(api, "phone,tag,timezone\n79001234567,,Asia/Omsk\n")).json()
    assert body["updated"] == 1
    again = (await _phones(api))["79001234567"]
    assert (again["operator_code"], again["tag"]) == ("999", "")


async def test_a_row_with_too_many_columns_is_rejected(api: httpx.AsyncClient) -> None:
    body = (await _import(api, HEADER + "79001234567,,a,UTC,extra\n")).json()
    assert body["errors"] == [{"line": 2, "field": "row", "message": "expected 4 columns, got 5"}]


async def test_the_error_list_is_capped_but_every_rejection_is_counted(api: httpx.AsyncClient) -> None:
    body = (await _import(api, HEADER + "bad,,,UTC\n" * 1500)).json()
    assert body["rejected"] == 1500
    assert len(body["errors"]) == 1000


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty"),
        (b"phone,tag\n79001234567,a\n", "timezone"),
        (b"phone,timezone,phone\n", "twice"),
        (HEADER.encode() + b"79001234567,,\xff\xfe,UTC\n", "UTF-8"),
    ],
)
async def test_a_file_that_is_not_a_client_csv_is_refused_and_nothing_is_written(
    api: httpx.AsyncClient, content: bytes, fragment: str
) -> None:
    response = await _import(api, content)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "file"]
    assert fragment in error["msg"]
    assert await _phones(api) == {}


async def test_an_import_without_a_file_names_the_missing_field(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/clients/import", data={"other": "x"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


async def test_imported_clients_are_counted_in_the_metrics(api: httpx.AsyncClient) -> None:
    await _import(api, HEADER + "79001234567,,,UTC\n79001234568,,,UTC\n")
    metrics = (await api.get("/metrics")).text
    assert "mailing_api_clients_imported_total 2.0" in metrics


async def test_every_imported_client_is_logged_with_its_id_and_line(api: httpx.AsyncClient) -> None:
    records: list[tuple[object, str]] = []
    sink = logger.add(lambda m: records.append((m.record["extra"].get("client_id"), m.record["message"])))
    try:
        await _import(api, HEADER + "79001234567,,,UTC\nbad,,,UTC\n79001234568,,,UTC\n")
        # Written while the answer goes out.
        await log_writers_done()
    finally:
        logger.remove(sink)
    logged = sorted((cid, text) for cid, text in records if cid is not None)
    ids = sorted(c["id"] for c in (await _phones(api)).values())
    assert logged == [
        (ids[0], f"client {ids[0]} created by CSV import (line 2)"),
        (ids[1], f"client {ids[1]} created by CSV import (line 4)"),
    ]


async def test_stopping_the_api_writes_the_per_client_lines_of_an_import_first(api_app: FastAPI) -> None:
    records: list[object] = []
    sink = logger.add(lambda m: records.append(m.record["extra"].get("client_id")))
    try:
        async with (
            api_app.router.lifespan_context(api_app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=api_app), base_url="http://api", headers=ADMIN_HEADERS
            ) as client,
        ):
            response = await _import(client, HEADER + "79001234567,,,UTC\n79001234568,,,UTC\n")
            assert response.json()["created"] == 2
        # The lifespan has ended: the lines are out, without anyone waiting for them.
        assert len([cid for cid in records if cid is not None]) == 2
    finally:
        logger.remove(sink)


def _big_csv(rows: int) -> bytes:
    zones = ("Europe/Moscow", "Asia/Omsk", "Europe/London", "UTC", "Asia/Vladivostok")
    lines = [f"7{9000000000 + i:010d},,{'vip' if i % 2 else ''},{zones[i % len(zones)]}" for i in range(rows)]
    return (HEADER + "\n".join(lines) + "\n").encode()


async def test_the_api_keeps_answering_while_a_big_file_is_imported(api: httpx.AsyncClient) -> None:
    """Parsing, validating and logging 50,000 rows must not hold the event loop: /healthz answers throughout.

    One /healthz request is always outstanding while the import runs, so any stretch the loop spends on
    the import without yielding shows up as the latency of the request waiting behind it.
    """
    rows = 50_000
    body = _big_csv(rows)
    started = time.perf_counter()
    importing = asyncio.create_task(_import(api, body))
    latencies: list[float] = []
    while True:
        sent = time.perf_counter()
        health = asyncio.create_task(api.get("/healthz"))
        done, _ = await asyncio.wait({importing, health}, return_when=asyncio.FIRST_COMPLETED)
        if importing in done:
            # The import finished first: this /healthz was stuck behind it (or the import is over).
            await health
            break
        assert health.result().status_code == 200
        latencies.append(time.perf_counter() - sent)
    took = time.perf_counter() - started
    response = importing.result()
    assert response.status_code == 200
    assert (response.json()["created"], response.json()["rejected"]) == (rows, 0)
    # Many answers came back while the import ran, and none waited long for the loop.
    assert len(latencies) >= 20, (len(latencies), took)
    assert max(latencies) < 0.5, (max(latencies), took)
