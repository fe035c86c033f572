"""A mailing's parked messages over the API: counted by reason, and sent back for delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.api.mailings_service import PARKED_REASONS_SHOWN, REQUEUED_PREFIX
from services.api.settings import ApiSettings
from services.scheduler.store import claim_due
from shared.db import make_engine

from .test_api_mailings import MAILINGS, add_messages, create, db, outbox, set_status

pytestmark = pytest.mark.integration


async def running_mailing(api: httpx.AsyncClient, settings: ApiSettings) -> int:
    mailing_id = int((await create(api))["id"])
    await set_status(settings, mailing_id, "running")
    return mailing_id


async def fail(settings: ApiSettings, ids: list[int], reason: str, *, attempts: int = 8) -> None:
    async with await db(settings) as conn:
        await conn.execute(
            "UPDATE messages SET status = 'failed', last_error = %s, attempts = %s WHERE id = ANY(%s)",
            (reason, attempts, ids),
        )


async def messages(settings: ApiSettings, ids: list[int]) -> list[tuple[Any, ...]]:
    async with await db(settings) as conn:
        cur = await conn.execute(
            "SELECT status, attempts, last_error, next_attempt_at, not_before <= now() FROM messages"
            " WHERE id = ANY(%s) ORDER BY id",
            (ids,),
        )
        return await cur.fetchall()


async def record_outcomes(settings: ApiSettings, ids: list[int], status: str) -> None:
    async with await db(settings) as conn:
        await conn.execute(
            "INSERT INTO report_outcomes (message_id, mailing_id, client_id, status, attempts, occurred_at)"
            " SELECT id, mailing_id, client_id, %s, attempts, now() FROM messages WHERE id = ANY(%s)",
            (status, ids),
        )


async def recorded_outcomes(settings: ApiSettings) -> set[int]:
    async with await db(settings) as conn:
        cur = await conn.execute("SELECT message_id FROM report_outcomes")
        return {row[0] for row in await cur.fetchall()}


async def test_the_parked_view_counts_a_mailings_failed_messages_by_reason(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing_id = await running_mailing(api, api_settings)
    other_id = await running_mailing(api, api_settings)
    rejected = await add_messages(api_settings, mailing_id, ["queued"] * 3)
    exhausted = await add_messages(api_settings, mailing_id, ["queued"] * 2)
    await add_messages(api_settings, mailing_id, ["sent", "pending", "expired", "cancelled"])
    await fail(api_settings, rejected, "http 400", attempts=1)
    await fail(api_settings, exhausted, "attempts exhausted (8): http 500")
    await fail(api_settings, await add_messages(api_settings, other_id, ["queued"]), "http 400")

    parked = (await api.get(f"{MAILINGS}/{mailing_id}/parked")).json()
    stats = (await api.get(f"{MAILINGS}/{mailing_id}/stats")).json()

    assert parked == {
        "mailing_id": mailing_id,
        "count": 5,
        "reasons": [
            {"reason": "http 400", "count": 3},
            {"reason": "attempts exhausted (8): http 500", "count": 2},
        ],
    }
    assert stats["counts"]["failed"] == parked["count"]


async def test_the_parked_view_shows_the_most_frequent_reasons_and_still_counts_them_all(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing_id = await running_mailing(api, api_settings)
    ids = await add_messages(api_settings, mailing_id, ["queued"] * (PARKED_REASONS_SHOWN + 2))
    await fail(api_settings, ids[:2], "http 400")
    for n, message_id in enumerate(ids[2:]):
        await fail(api_settings, [message_id], f"provider code {n}")

    parked = (await api.get(f"{MAILINGS}/{mailing_id}/parked")).json()

    assert parked["count"] == PARKED_REASONS_SHOWN + 2
    assert len(parked["reasons"]) == PARKED_REASONS_SHOWN
    assert parked["reasons"][0] == {"reason": "http 400", "count": 2}


async def test_a_mailing_with_nothing_parked_shows_an_empty_lot_and_an_unknown_one_is_not_found(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing_id = await running_mailing(api, api_settings)
    await add_messages(api_settings, mailing_id, ["sent"])

    empty = await api.get(f"{MAILINGS}/{mailing_id}/parked")
    unknown = await api.get(f"{MAILINGS}/999999/parked")
    requeue_unknown = await api.post(f"{MAILINGS}/999999/parked/requeue")

    assert empty.json() == {"mailing_id": mailing_id, "count": 0, "reasons": []}
    assert unknown.status_code == requeue_unknown.status_code == 404


async def test_requeueing_a_running_mailing_sends_its_failed_messages_back_as_pending_from_scratch(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing_id = await running_mailing(api, api_settings)
    failed = await add_messages(api_settings, mailing_id, ["queued"] * 3)
    await fail(api_settings, failed, "http 400", attempts=3)
    untouched = await add_messages(api_settings, mailing_id, ["sent", "expired", "cancelled", "retrying"])
    events_before = await outbox(api_settings)

    response = await api.post(f"{MAILINGS}/{mailing_id}/parked/requeue")

    assert response.status_code == 200, response.text
    assert response.json() == {"mailing_id": mailing_id, "requeued": 3}
    assert (
        await messages(api_settings, failed) == [("pending", 0, f"{REQUEUED_PREFIX}http 400", None, True)] * 3
    )
    assert [row[0] for row in await messages(api_settings, untouched)] == [
        "sent",
        "expired",
        "cancelled",
        "retrying",
    ]
    assert await outbox(api_settings) == [*events_before, ("mailing.updated", mailing_id)]
    assert (await api.get(f"{MAILINGS}/{mailing_id}/parked")).json()["count"] == 0


async def test_the_scheduler_dispatches_the_requeued_messages(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing_id = await running_mailing(api, api_settings)
    failed = await add_messages(api_settings, mailing_id, ["queued"] * 2)
    await fail(api_settings, failed, "http 400")
    await api.post(f"{MAILINGS}/{mailing_id}/parked/requeue")

    engine = make_engine(api_settings)
    try:
        async with engine.begin() as conn:
            claimed = await claim_due(conn, [mailing_id], datetime.now(UTC) + timedelta(seconds=1), 100)
    finally:
        await engine.dispose()

    assert sorted(c.message_id for c in claimed) == failed


async def test_a_failed_message_of_a_deleted_client_stays_failed(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing_id = await running_mailing(api, api_settings)
    kept, gone = await add_messages(api_settings, mailing_id, ["queued", "queued"])
    await fail(api_settings, [kept, gone], "http 400")
    async with await db(api_settings) as conn:
        await conn.execute(
            "UPDATE clients SET deleted_at = now() WHERE id = (SELECT client_id FROM messages WHERE id = %s)",
            (gone,),
        )

    response = await api.post(f"{MAILINGS}/{mailing_id}/parked/requeue")

    assert response.json()["requeued"] == 1
    assert [row[0] for row in await messages(api_settings, [kept, gone])] == ["pending", "failed"]


async def test_requeueing_forgets_the_reporters_record_of_the_failures_so_the_next_outcome_counts(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing_id = await running_mailing(api, api_settings)
    failed = await add_messages(api_settings, mailing_id, ["queued", "queued"])
    await fail(api_settings, failed, "http 400")
    sent = await add_messages(api_settings, mailing_id, ["sent"])
    await record_outcomes(api_settings, failed, "failed")
    await record_outcomes(api_settings, sent, "sent")

    await api.post(f"{MAILINGS}/{mailing_id}/parked/requeue")

    assert await recorded_outcomes(api_settings) == set(sent)


@pytest.mark.parametrize("status", ["scheduled", "paused", "finished", "cancelled"])
async def test_only_a_running_mailings_parked_messages_can_be_requeued(
    api: httpx.AsyncClient, api_settings: ApiSettings, status: str
) -> None:
    mailing_id = int((await create(api))["id"])
    failed = await add_messages(api_settings, mailing_id, ["queued"])
    await fail(api_settings, failed, "http 400")
    await record_outcomes(api_settings, failed, "failed")
    await set_status(api_settings, mailing_id, status)
    events_before = await outbox(api_settings)

    response = await api.post(f"{MAILINGS}/{mailing_id}/parked/requeue")

    assert response.status_code == 409
    assert response.json()["detail"][0]["loc"] == ["body", "status"]
    assert status in response.json()["detail"][0]["msg"]
    assert await messages(api_settings, failed) == [("failed", 8, "http 400", None, True)]
    assert await recorded_outcomes(api_settings) == set(failed)
    assert await outbox(api_settings) == events_before


async def test_an_operator_key_may_requeue_and_a_request_without_a_key_may_not(
    api: httpx.AsyncClient, api_settings: ApiSettings
) -> None:
    mailing_id = await running_mailing(api, api_settings)
    failed = await add_messages(api_settings, mailing_id, ["queued"])
    await fail(api_settings, failed, "http 400")
    created = await api.post("/api/v1/api-keys", json={"name": "call centre", "role": "operator"})
    operator = {"Authorization": f"Bearer {created.json()['key']}"}

    anonymous = await api.post(f"{MAILINGS}/{mailing_id}/parked/requeue", headers={"Authorization": ""})
    as_operator = await api.post(f"{MAILINGS}/{mailing_id}/parked/requeue", headers=operator)

    assert anonymous.status_code == 401
    assert as_operator.json() == {"mailing_id": mailing_id, "requeued": 1}
