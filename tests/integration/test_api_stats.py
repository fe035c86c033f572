"""Statistics over the API: counts by status per mailing in one query, and a mailing's messages."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from services.api.settings import ApiSettings

from .test_api_mailings import MAILINGS, add_messages, create

pytestmark = pytest.mark.integration

STATS = "/api/v1/stats/mailings"
ZEROS = dict.fromkeys(("pending", "queued", "retrying", "sent", "failed", "expired", "cancelled"), 0)


async def test_every_live_mailing_is_listed_with_its_counts_by_status(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    busy = await create(api, text="busy")
    idle = await create(api, text="idle")
    gone = await create(api, text="gone")
    await add_messages(api_settings, busy["id"], ["sent", "sent", "pending", "failed", "retrying"])
    await add_messages(api_settings, gone["id"], ["sent"])
    await api.delete(f"{MAILINGS}/{gone['id']}")
    page = (await api.get(STATS)).json()
    assert page["total"] == 2
    assert page["items"] == [
        {
            "id": busy["id"],
            "text": "busy",
            "start_at": busy["start_at"],
            "end_at": busy["end_at"],
            "status": "scheduled",
            "total": 5,
            "counts": {**ZEROS, "sent": 2, "pending": 1, "failed": 1, "retrying": 1},
        },
        {
            "id": idle["id"],
            "text": "idle",
            "start_at": idle["start_at"],
            "end_at": idle["end_at"],
            "status": "scheduled",
            "total": 0,
            "counts": ZEROS,
        },
    ]


async def test_the_overall_statistics_take_the_same_number_of_queries_for_any_number_of_mailings(
    api: httpx.AsyncClient, api_app: FastAPI, api_settings: ApiSettings
) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    engine = api_app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        await create(api)
        statements.clear()
        await api.get(STATS)
        with_one = len(statements)
        for _ in range(5):
            mailing = await create(api)
            await add_messages(api_settings, mailing["id"], ["sent", "pending"])
        statements.clear()
        page = (await api.get(STATS)).json()
        assert len(statements) == with_one
        assert len(page["items"]) == 6
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def test_the_statistics_page_through_mailings_and_filter_them_by_status(api: httpx.AsyncClient) -> None:
    ids = [(await create(api))["id"] for _ in range(3)]
    await api.post(f"{MAILINGS}/{ids[2]}/pause")
    page = (await api.get(STATS, params={"limit": 1, "offset": 1})).json()
    assert ([m["id"] for m in page["items"]], page["total"]) == ([ids[1]], 3)
    paused = (await api.get(STATS, params={"status": "paused"})).json()
    assert [m["id"] for m in paused["items"]] == [ids[2]]
    assert (await api.get(STATS, params={"status": "bogus"})).status_code == 422
    assert (await api.get(STATS, params={"limit": 0})).status_code == 422


async def test_one_mailings_statistics_count_its_messages_by_status(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing = await create(api)
    await add_messages(api_settings, mailing["id"], ["sent", "expired", "expired"])
    stats = (await api.get(f"{MAILINGS}/{mailing['id']}/stats")).json()
    assert stats["total"] == 3
    assert stats["counts"] == {**ZEROS, "sent": 1, "expired": 2}
    assert (await api.get(f"{MAILINGS}/{2**63}/stats")).status_code == 404
    await api.delete(f"{MAILINGS}/{mailing['id']}")
    assert (await api.get(f"{MAILINGS}/{mailing['id']}/stats")).status_code == 404


async def test_a_mailings_messages_are_listed_with_their_status_and_history(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing = await create(api)
    ids = await add_messages(api_settings, mailing["id"], ["sent", "pending", "sent"])
    url = f"{MAILINGS}/{mailing['id']}/messages"
    page = (await api.get(url)).json()
    assert page["total"] == 3
    first = page["items"][0]
    assert set(first) == {
        "id",
        "mailing_id",
        "client_id",
        "status",
        "created_at",
        "sent_at",
        "attempts",
        "last_error",
    }
    assert (first["id"], first["mailing_id"], first["status"]) == (ids[0], mailing["id"], "sent")
    assert first["sent_at"] is not None
    sent = (await api.get(url, params={"status": "sent", "offset": 1})).json()
    assert ([m["id"] for m in sent["items"]], sent["total"]) == ([ids[2]], 2)
    assert (await api.get(url, params={"status": "delivered"})).status_code == 422
    assert (await api.get(f"{MAILINGS}/999999/messages")).status_code == 404
