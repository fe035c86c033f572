"""Mailings over the API: validation naming the field, status rules, cancellations and the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from services.api.settings import ApiSettings

pytestmark = pytest.mark.integration

MAILINGS = "/api/v1/mailings"


def mailing_body(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "text": "Spring sale",
        "start_at": (now + timedelta(hours=1)).isoformat(),
        "end_at": (now + timedelta(days=1)).isoformat(),
        "filter": {"tags": ["vip"], "operator_codes": ["916"]},
        "window": {"start": "09:00", "end": "21:00"},
    }
    body.update(overrides)
    return body


async def create(api: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await api.post(MAILINGS, json=mailing_body(**overrides))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def error_fields(response: httpx.Response) -> set[str]:
    return {str(part) for item in response.json()["detail"] for part in item["loc"][1:]}


async def db(settings: ApiSettings) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    return await psycopg.AsyncConnection.connect(settings.psycopg_dsn, autocommit=True)


async def add_messages(
    settings: ApiSettings, mailing_id: int, statuses: Sequence[str], *, attempts: int = 0
) -> list[int]:
    """Clients and messages written directly, as the scheduler and sender would."""
    async with await db(settings) as conn:
        ids = []
        for status in statuses:
            cur = await conn.execute(
                "INSERT INTO clients (phone, operator_code, tag, timezone) "
                "VALUES ('79' || lpad((nextval(pg_get_serial_sequence('clients', 'id')))::text, 9, '0'),"
                " '900', '', 'Europe/Moscow') RETURNING id"
            )
            client = await cur.fetchone()
            assert client is not None
            cur = await conn.execute(
                "INSERT INTO messages"
                " (mailing_id, client_id, status, not_before, queued_at, attempts, sent_at) "
                "VALUES (%s, %s, %s, now(), now(), %s, CASE WHEN %s = 'sent' THEN now() END) RETURNING id",
                (mailing_id, client[0], status, attempts, status),
            )
            row = await cur.fetchone()
            assert row is not None
            ids.append(row[0])
        return ids


async def set_status(settings: ApiSettings, mailing_id: int, status: str) -> None:
    async with await db(settings) as conn:
        await conn.execute("UPDATE mailings SET status = %s WHERE id = %s", (status, mailing_id))


async def outbox(settings: ApiSettings) -> list[tuple[str, int]]:
    async with await db(settings) as conn:
        cur = await conn.execute(
            "SELECT routing_key, (payload->>'mailing_id')::bigint FROM outbox ORDER BY id"
        )
        return [(key, mailing_id) for key, mailing_id in await cur.fetchall()]


async def test_a_new_mailing_is_scheduled_and_reads_back_as_created(api: httpx.AsyncClient) -> None:
    created = await create(
        api,
        start_at="2030-03-01T09:00:00+03:00",
        end_at="2030-03-02T21:00:00+03:00",
        filter={"tags": ["vip", "vip", "a"], "operator_codes": ["916"]},
    )
    assert created["status"] == "scheduled"
    assert created["filter"] == {"tags": ["a", "vip"], "operator_codes": ["916"]}
    assert created["window"] == {"start": "09:00", "end": "21:00"}
    fetched = await api.get(f"{MAILINGS}/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created
    assert datetime.fromisoformat(created["start_at"]) == datetime(2030, 3, 1, 6, tzinfo=UTC)


async def test_a_mailing_without_filter_or_window_targets_everyone_at_any_time(
    api: httpx.AsyncClient,
) -> None:
    body = mailing_body()
    del body["filter"], body["window"]
    response = await api.post(MAILINGS, json=body)
    assert response.status_code == 201
    assert response.json()["filter"] == {"tags": [], "operator_codes": []}
    assert response.json()["window"] is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"start_at": "2030-01-01T10:00:00"}, "start_at"),
        ({"end_at": "2030-01-01T10:00:00"}, "end_at"),
        ({"start_at": "2030-01-02T10:00:00+03:00", "end_at": "2030-01-01T10:00:00+03:00"}, "end_at"),
        ({"start_at": "2030-01-01T10:00:00+03:00", "end_at": "2030-01-01T07:00:00Z"}, "end_at"),
        ({"window": {"start": "9am", "end": "21:00"}}, "window"),
        ({"window": {"start": "25:00", "end": "21:00"}}, "window"),
        ({"window": {"start": "10:00", "end": "10:00"}}, "window"),
        ({"filter": {"tags": [], "operator_codes": ["91"]}}, "operator_codes"),
        ({"filter": {"tags": ["x" * 65], "operator_codes": []}}, "tags"),
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "nul\x00byte"}, "text"),
        ({"start_at": "0001-01-01T00:00:00+05:00"}, "start_at"),
    ],
)
async def test_bad_mailing_input_is_refused_naming_the_field(
    api: httpx.AsyncClient, overrides: dict[str, Any], field: str
) -> None:
    response = await api.post(MAILINGS, json=mailing_body(**overrides))
    assert response.status_code == 422, response.text
    assert field in error_fields(response)


async def test_mailings_are_listed_page_by_page_and_by_status(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    ids = [(await create(api, text=f"m{i}"))["id"] for i in range(5)]
    await set_status(api_settings, ids[1], "running")
    page = (await api.get(MAILINGS, params={"limit": 2, "offset": 2})).json()
    assert [m["id"] for m in page["items"]] == ids[2:4]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 2)
    running = (await api.get(MAILINGS, params={"status": "running"})).json()
    assert [m["id"] for m in running["items"]] == [ids[1]]
    assert (await api.get(MAILINGS, params={"status": "sleeping"})).status_code == 422


async def test_unknown_and_out_of_range_ids_are_not_found(api: httpx.AsyncClient) -> None:
    for ident in (0, -1, 999_999, 2**63, 10**30):
        assert (await api.get(f"{MAILINGS}/{ident}")).status_code == 404
        assert (await api.post(f"{MAILINGS}/{ident}/pause")).status_code == 404
        assert (await api.delete(f"{MAILINGS}/{ident}")).status_code == 404


async def test_pause_resume_and_cancel_follow_the_status_rules(api: httpx.AsyncClient) -> None:
    mailing = await create(api)
    url = f"{MAILINGS}/{mailing['id']}"
    assert (await api.post(f"{url}/resume")).status_code == 409
    assert (await api.post(f"{url}/pause")).json()["status"] == "paused"
    refused = await api.post(f"{url}/pause")
    assert refused.status_code == 409
    assert error_fields(refused) == {"status"}
    assert (await api.post(f"{url}/resume")).json()["status"] == "scheduled"
    assert (await api.post(f"{url}/cancel")).json()["status"] == "cancelled"
    for action in ("pause", "resume", "cancel"):
        assert (await api.post(f"{url}/{action}")).status_code == 409
    assert (await api.patch(url, json={"text": "too late"})).status_code == 409


async def test_resuming_after_the_start_runs_the_mailing(api: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    mailing = await create(api, start_at=(now - timedelta(minutes=1)).isoformat())
    url = f"{MAILINGS}/{mailing['id']}"
    await api.post(f"{url}/pause")
    assert (await api.post(f"{url}/resume")).json()["status"] == "running"


async def test_cancelling_cancels_every_message_not_yet_final_and_keeps_the_rest(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing = await create(api)
    await set_status(api_settings, mailing["id"], "running")
    await add_messages(
        api_settings, mailing["id"], ["pending", "queued", "retrying", "sent", "failed", "expired"]
    )
    assert (await api.post(f"{MAILINGS}/{mailing['id']}/cancel")).status_code == 200
    async with await db(api_settings) as conn:
        cur = await conn.execute(
            "SELECT status, last_error, count(*) FROM messages"
            " WHERE mailing_id = %s GROUP BY 1, 2 ORDER BY 1",
            (mailing["id"],),
        )
        rows = await cur.fetchall()
    assert rows == [
        ("cancelled", "mailing cancelled", 3),
        ("expired", None, 1),
        ("failed", None, 1),
        ("sent", None, 1),
    ]


async def test_a_deleted_mailing_is_gone_and_its_pending_messages_are_cancelled(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing = await create(api)
    kept = await create(api)
    await add_messages(api_settings, mailing["id"], ["pending", "sent"])
    url = f"{MAILINGS}/{mailing['id']}"
    assert (await api.delete(url)).status_code == 204
    assert (await api.get(url)).status_code == 404
    assert (await api.delete(url)).status_code == 404
    assert (await api.patch(url, json={"text": "x"})).status_code == 404
    assert [m["id"] for m in (await api.get(MAILINGS)).json()["items"]] == [kept["id"]]
    async with await db(api_settings) as conn:
        cur = await conn.execute(
            "SELECT status, last_error FROM messages WHERE mailing_id = %s ORDER BY id", (mailing["id"],)
        )
        assert await cur.fetchall() == [("cancelled", "mailing deleted"), ("sent", None)]


async def test_a_running_mailing_takes_a_new_filter_and_window(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing = await create(api)
    await set_status(api_settings, mailing["id"], "running")
    await add_messages(api_settings, mailing["id"], ["sent"], attempts=1)
    response = await api.patch(
        f"{MAILINGS}/{mailing['id']}",
        json={"filter": {"tags": [], "operator_codes": ["900"]}, "window": None},
    )
    assert response.status_code == 200
    assert response.json()["filter"] == {"tags": [], "operator_codes": ["900"]}
    assert response.json()["window"] is None
    assert response.json()["status"] == "running"


async def test_a_running_mailing_cannot_start_later_but_may_take_an_earlier_start(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing = await create(api, start_at=(datetime.now(UTC) - timedelta(minutes=5)).isoformat())
    await set_status(api_settings, mailing["id"], "running")
    url = f"{MAILINGS}/{mailing['id']}"
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    refused = await api.patch(url, json={"start_at": later})
    assert refused.status_code == 409
    assert error_fields(refused) == {"start_at"}
    assert (await api.get(url)).json()["start_at"] == mailing["start_at"]

    earlier = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    moved = await api.patch(url, json={"start_at": earlier.isoformat()})
    assert moved.status_code == 200, moved.text
    assert datetime.fromisoformat(moved.json()["start_at"]) == earlier
    assert moved.json()["status"] == "running"


async def test_the_text_may_change_only_while_nothing_was_sent(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing = await create(api)
    url = f"{MAILINGS}/{mailing['id']}"
    assert (await api.patch(url, json={"text": "Better text"})).json()["text"] == "Better text"
    await add_messages(api_settings, mailing["id"], ["retrying"], attempts=1)
    refused = await api.put(url, json=mailing_body(text="Another text"))
    assert refused.status_code == 409
    assert error_fields(refused) == {"text"}
    assert (await api.get(url)).json()["text"] == "Better text"


async def test_a_patch_keeps_the_fields_it_does_not_name_and_refuses_nulls(api: httpx.AsyncClient) -> None:
    mailing = await create(api)
    url = f"{MAILINGS}/{mailing['id']}"
    end = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    patched = (await api.patch(url, json={"end_at": end})).json()
    assert {k: v for k, v in patched.items() if k not in ("end_at", "updated_at")} == {
        k: v for k, v in mailing.items() if k not in ("end_at", "updated_at")
    }
    for field in ("text", "start_at", "end_at", "filter"):
        response = await api.patch(url, json={field: None})
        assert response.status_code == 422
        assert field in error_fields(response)
    early_end = await api.patch(url, json={"end_at": "2000-01-01T00:00:00Z"})
    assert early_end.status_code == 422
    assert "end_at" in error_fields(early_end)
    assert (await api.patch(url, json={"filters": {}})).status_code == 422


async def test_a_finished_mailing_cannot_be_changed(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing = await create(api)
    await set_status(api_settings, mailing["id"], "finished")
    refused = await api.put(f"{MAILINGS}/{mailing['id']}", json=mailing_body())
    assert refused.status_code == 409
    assert error_fields(refused) == {"status"}


async def test_every_change_writes_its_event_to_the_outbox_in_order(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    first = (await create(api))["id"]
    second = (await create(api))["id"]
    await api.patch(f"{MAILINGS}/{first}", json={"text": "changed"})
    await api.patch(f"{MAILINGS}/{first}", json={"text": "changed"})
    await api.post(f"{MAILINGS}/{first}/pause")
    await api.post(f"{MAILINGS}/{first}/pause")
    await api.post(f"{MAILINGS}/{first}/resume")
    await api.post(f"{MAILINGS}/{first}/cancel")
    await api.delete(f"{MAILINGS}/{second}")
    await api.post(MAILINGS, json=mailing_body(end_at="2000-01-01T00:00:00Z"))
    assert await outbox(api_settings) == [
        ("mailing.created", first),
        ("mailing.created", second),
        ("mailing.updated", first),
        ("mailing.paused", first),
        ("mailing.resumed", first),
        ("mailing.cancelled", first),
        ("mailing.deleted", second),
    ]


async def test_cancelling_leaves_a_message_whose_call_is_under_way_to_its_sender(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing = await create(api)
    await set_status(api_settings, mailing["id"], "running")
    held, free = await add_messages(api_settings, mailing["id"], ["queued", "queued"])
    async with await db(api_settings) as conn:
        await conn.execute("UPDATE messages SET lease_until = now() + interval '1 min' WHERE id=%s", (held,))
    assert (await api.post(f"{MAILINGS}/{mailing['id']}/cancel")).status_code == 200
    async with await db(api_settings) as conn:
        cur = await conn.execute("SELECT id, status FROM messages WHERE mailing_id = %s", (mailing["id"],))
        statuses = dict(await cur.fetchall())
    # If the call under way succeeds the client has the SMS, and `sent` must still be recordable.
    assert statuses == {held: "queued", free: "cancelled"}


async def test_a_mailing_whose_end_has_passed_is_refused(api: httpx.AsyncClient) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    response = await api.post(
        MAILINGS,
        json=mailing_body(start_at=(past - timedelta(hours=1)).isoformat(), end_at=past.isoformat()),
    )
    assert response.status_code == 422
    assert error_fields(response) == {"end_at"}
