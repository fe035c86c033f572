"""The admin UI's pages over the same rules as the REST API: each page answers with its content, forms
show the API's own errors at their fields, roles and CSRF guard every write."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from loguru import logger
from pydantic import SecretStr

from services.api.admin import pages
from services.api.app import build_api
from services.api.clients_import import log_writers_done
from services.api.settings import ApiSettings
from tests.admin_session import COOKIE_NAME, CSRF, SESSION_SECRET, session_cookie
from tests.integration.test_api_mailings import add_messages, create, db, set_status

pytestmark = pytest.mark.integration

Login = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def ui_app(api_settings: ApiSettings) -> FastAPI:
    return build_api(api_settings.model_copy(update={"session_secret": SecretStr(SESSION_SECRET)})).app


@pytest.fixture
async def api(ui_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The REST API of the same app, with the bootstrap admin key."""
    async with (
        ui_app.router.lifespan_context(ui_app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=ui_app),
            base_url="http://api",
            headers={"Authorization": "Bearer test-admin-key"},
        ) as client,
    ):
        yield client


@pytest.fixture
def login(ui_app: FastAPI, api: httpx.AsyncClient) -> Login:
    @asynccontextmanager
    async def as_role(role: str) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=ui_app),
            base_url="http://api",
            cookies={COOKIE_NAME: session_cookie(role)},
        ) as client:
            yield client

    return as_role


def future_form(**overrides: str) -> dict[str, str]:
    start = datetime.now(UTC) + timedelta(hours=2)
    form = {
        "csrf_token": CSRF,
        "text": "Spring sale",
        "start_at": start.strftime("%Y-%m-%dT%H:%M"),
        "end_at": (start + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        "timezone": "UTC",
        "tags": "vip",
        "operator_codes": "916",
        "window_start": "09:00",
        "window_end": "21:00",
    }
    form.update(overrides)
    return form


def field_error(html: str, field: str) -> str:
    found = re.search(rf'<small id="e-{field}" class="error">([^<]*)</small>', html)
    assert found is not None, f"no error shown at {field}"
    return found.group(1)


async def add_client(api: httpx.AsyncClient, phone: str, tag: str = "", code: str | None = None) -> int:
    body = {"phone": phone, "tag": tag, "timezone": "Europe/Moscow", "operator_code": code}
    response = await api.post("/api/v1/clients", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def test_a_visitor_without_a_session_is_sent_to_login(ui_app: FastAPI, api: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ui_app), base_url="http://api") as anon:
        response = await anon.get("/admin/")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/login")


async def test_dashboard_shows_each_mailing_with_its_progress_and_polls_while_one_runs(
    api: httpx.AsyncClient, login: Login, api_settings: ApiSettings
) -> None:
    mailing = await create(api, text="Black Friday")
    await add_messages(api_settings, mailing["id"], ["sent", "sent", "failed", "pending"])
    async with login("viewer") as ui:
        page = await ui.get("/admin/")
        assert page.status_code == 200
        assert "Black Friday" in page.text
        assert "3 / 4 final (75%)" in page.text
        assert "Delivery path" in page.text and "Sent per minute, last hour" in page.text
        assert 'hx-trigger="every' not in page.text
        await set_status(api_settings, mailing["id"], "running")
        fragment = await ui.get("/admin/fragments/overview")
    assert fragment.status_code == 200
    assert 'hx-trigger="every' in fragment.text
    assert "<html" not in fragment.text
    parked = re.search(r"<dt>Parked</dt><dd>(\d+)</dd>", fragment.text)
    assert parked is not None and parked.group(1) == "1"


async def test_the_dashboard_shows_the_worst_circuit_of_the_senders_that_report(
    api: httpx.AsyncClient, login: Login, api_settings: ApiSettings
) -> None:
    async with login("viewer") as ui:
        assert "<dd>no sender reporting</dd>" in (await ui.get("/admin/fragments/overview")).text
        async with await db(api_settings) as conn:
            await conn.execute(
                "INSERT INTO sender_health (instance, circuit_state, calls_in_flight, fenced, reported_at)"
                " VALUES ('a:1', 0, 10, false, now()), ('b:2', 2, 0, true, now()),"
                " ('gone:3', 1, 0, false, now() - interval '10 minutes')"
            )
        fragment = (await ui.get("/admin/fragments/overview")).text
    assert "<dt>Circuit</dt><dd>open</dd>" in fragment
    assert "<dt>Senders</dt><dd>2 (1 fenced)</dd>" in fragment


async def test_mailing_page_filters_and_searches_its_messages(
    api: httpx.AsyncClient, login: Login, api_settings: ApiSettings
) -> None:
    mailing = await create(api, text="Autumn news")
    await add_messages(api_settings, mailing["id"], ["sent", "failed", "pending"])
    messages = (await api.get(f"/api/v1/mailings/{mailing['id']}/messages")).json()["items"]
    failed = next(m for m in messages if m["status"] == "failed")
    client = (await api.get(f"/api/v1/clients/{failed['client_id']}")).json()
    async with login("operator") as ui:
        page = await ui.get(f"/admin/mailings/{mailing['id']}")
        assert page.status_code == 200
        assert "Autumn news" in page.text and "2 of 3 messages final" in page.text
        assert f'href="/admin/mailings/{mailing["id"]}/pause"' in page.text
        only_failed = await ui.get(
            f"/admin/mailings/{mailing['id']}/messages",
            params={"status": "failed"},
            headers={"HX-Request": "true"},
        )
        by_phone = await ui.get(
            f"/admin/mailings/{mailing['id']}/messages",
            params={"q": client["phone"]},
            headers={"HX-Request": "true"},
        )
    for fragment in (only_failed, by_phone):
        assert fragment.status_code == 200
        assert client["phone"] in fragment.text
        assert fragment.text.count('<span class="badge s-') == 1
        assert "1 in all" in fragment.text


async def test_messages_list_in_client_order_finds_deleted_clients_and_pages_within_the_bound(
    api: httpx.AsyncClient, login: Login, api_settings: ApiSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailing = await create(api, text="Winter news")
    await add_messages(api_settings, mailing["id"], ["failed", "sent", "failed", "failed", "sent"])
    messages = (await api.get(f"/api/v1/mailings/{mailing['id']}/messages")).json()["items"]
    clients = sorted(m["client_id"] for m in messages)
    gone = (await api.get(f"/api/v1/clients/{clients[0]}")).json()
    assert (await api.delete(f"/api/v1/clients/{clients[0]}")).status_code == 204
    monkeypatch.setattr(pages, "PAGED_ROWS", 2)
    monkeypatch.setattr(pages, "SEARCH_ROWS", 2)
    url = f"/admin/mailings/{mailing['id']}/messages"
    async with login("viewer") as ui:
        by_phone = await ui.get(url, params={"q": gone["phone"]}, headers={"HX-Request": "true"})
        # Every client of the mailing matches "79": counted up to the search's bound.
        wide = await ui.get(url, params={"q": "79"}, headers={"HX-Request": "true"})
        # Sorted in memory or walked in index order, by the counts: the same rows either way.
        failed = [
            await ui.get(url, params={"status": "failed", "page": str(p)}, headers={"HX-Request": "true"})
            for p in (1, 9)
        ]
    assert gone["phone"] in by_phone.text and "1 in all" in by_phone.text
    assert "2+ in all" in wide.text and "Only the first 2 can be paged through" in wide.text
    in_failed = sorted(m["client_id"] for m in messages if m["status"] == "failed")
    for fragment in failed:
        assert "3 in all" in fragment.text and "Only the first 2 can be paged through" in fragment.text
        rows = re.findall(r"<td>\d+</td>\s*<td>(\d+)</td>\s*<td>\d{11}</td>", fragment.text)
        assert [int(c) for c in rows] == in_failed


async def test_clients_list_counts_up_to_the_bound(
    api: httpx.AsyncClient, login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    for phone in ("79001110001", "79001110002", "79001110003"):
        await add_client(api, phone)
    monkeypatch.setattr(pages, "PAGED_ROWS", 2)
    async with login("viewer") as ui:
        listed = await ui.get("/admin/clients", params={"page": "7"})
        by_phone = await ui.get("/admin/clients", params={"phone": "7900111000"})
        # A digit that is not an ASCII one is no phone prefix: no filter, no error.
        odd = await ui.get("/admin/clients", params={"phone": "79²"})
    assert odd.status_code == 200 and "2+ in all" in odd.text
    assert "2+ in all" in listed.text
    # Page 7 is past the paged rows: the last page that is within them (the first) is shown.
    assert all(p in listed.text for p in ("79001110001", "79001110002", "79001110003"))
    assert "2+ in all" in by_phone.text


async def test_a_page_past_the_last_shows_the_last_page_its_pager_names(
    api: httpx.AsyncClient, login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    for phone in ("79001110001", "79001110002", "79001110003"):
        await add_client(api, phone)
    monkeypatch.setattr(pages, "CLIENTS_PAGE", 2)
    async with login("viewer") as ui:
        stale = await ui.get("/admin/clients", params={"page": "7"})  # a link from before deletions
        last = await ui.get("/admin/clients", params={"page": "2"})

    def phones(page: httpx.Response) -> list[str]:
        return re.findall(r"7900111000\d", page.text)

    assert len(phones(last)) == 1
    assert phones(stale) == phones(last)


async def test_mailing_form_shows_the_api_rules_errors_at_their_fields(
    login: Login, api: httpx.AsyncClient
) -> None:
    async with login("operator") as ui:
        form = await ui.get("/admin/mailings/new")
        assert form.status_code == 200 and 'name="csrf_token"' in form.text
        bad = await ui.post(
            "/admin/mailings/new",
            data=future_form(text="   ", operator_codes="9160", window_start="25:00", window_end="06:00"),
        )
        past = await ui.post(
            "/admin/mailings/new",
            data=future_form(end_at=(datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")),
        )
    assert bad.status_code == 422
    assert "blank" in field_error(bad.text, "text")
    assert "pattern" in field_error(bad.text, "operator_codes")
    assert field_error(bad.text, "window")
    assert past.status_code == 422
    assert "after" in field_error(past.text, "end_at") or "passed" in field_error(past.text, "end_at")
    assert (await api.get("/api/v1/mailings")).json()["total"] == 0


async def test_a_mailing_created_and_edited_in_the_ui_is_the_one_the_api_answers(
    login: Login, api: httpx.AsyncClient
) -> None:
    async with login("operator") as ui:
        created = await ui.post("/admin/mailings/new", data=future_form(timezone="Europe/Moscow"))
        assert created.status_code == 303
        mailing_id = int(created.headers["location"].rsplit("/", 1)[1])
        edit = await ui.get(f"/admin/mailings/{mailing_id}/edit")
        assert edit.status_code == 200 and "Spring sale" in edit.text
        edited = await ui.post(
            f"/admin/mailings/{mailing_id}/edit", data=future_form(text="Summer sale", tags="")
        )
        assert edited.status_code == 303
    answer = (await api.get(f"/api/v1/mailings/{mailing_id}")).json()
    assert answer["text"] == "Summer sale"
    assert answer["filter"] == {"tags": [], "operator_codes": ["916"]}
    assert answer["window"] == {"start": "09:00", "end": "21:00"}


async def test_matching_clients_count_is_the_same_in_the_rest_api_and_the_form(
    api: httpx.AsyncClient, login: Login
) -> None:
    await add_client(api, "79160000001", "vip")
    await add_client(api, "79160000002", "vip")
    await add_client(api, "79000000003", "vip")
    await add_client(api, "79160000004", "")
    rest = await api.post(
        "/api/v1/mailings/preview", json={"filter": {"tags": ["vip"], "operator_codes": ["916"]}}
    )
    everyone = await api.post("/api/v1/mailings/preview", json={})
    invalid = await api.post("/api/v1/mailings/preview", json={"filter": {"operator_codes": ["91"]}})
    assert rest.status_code == 200 and rest.json() == {"matching_clients": 2}
    assert everyone.json() == {"matching_clients": 4}
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"][:3] == [
        "body",
        "filter",
        "operator_codes",
    ]
    async with login("viewer") as ui:
        fragment = await ui.get("/admin/mailings/preview", params={"tags": "vip", "operator_codes": "916"})
        wrong = await ui.get("/admin/mailings/preview", params={"operator_codes": "91"})
    assert "<strong>2</strong> clients match" in fragment.text
    assert "Cannot count" in wrong.text


async def test_mailing_actions_ask_for_confirmation_then_change_the_status(
    api: httpx.AsyncClient, login: Login
) -> None:
    mailing = await create(api)
    async with login("operator") as ui:
        confirm = await ui.get(f"/admin/mailings/{mailing['id']}/pause")
        assert confirm.status_code == 200 and "Yes, pause" in confirm.text
        assert (await api.get(f"/api/v1/mailings/{mailing['id']}")).json()["status"] == "scheduled"
        for action, status in (("pause", "paused"), ("resume", "scheduled"), ("cancel", "cancelled")):
            done = await ui.post(f"/admin/mailings/{mailing['id']}/{action}", data={"csrf_token": CSRF})
            assert done.status_code == 303, done.text
            assert (await api.get(f"/api/v1/mailings/{mailing['id']}")).json()["status"] == status
        refused = await ui.post(f"/admin/mailings/{mailing['id']}/pause", data={"csrf_token": CSRF})
        assert refused.status_code == 409 and "only a scheduled or running mailing" in refused.text
        deleted = await ui.post(f"/admin/mailings/{mailing['id']}/delete", data={"csrf_token": CSRF})
    assert deleted.status_code == 303
    assert (await api.get(f"/api/v1/mailings/{mailing['id']}")).status_code == 404


async def test_mailing_page_refreshes_its_progress_until_the_mailing_is_final(
    api: httpx.AsyncClient, login: Login
) -> None:
    later = (await create(api, start_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()))["id"]
    mailing_id = (await create(api, start_at=(datetime.now(UTC) + timedelta(minutes=1)).isoformat()))["id"]
    live = f'hx-get="/admin/mailings/{mailing_id}/fragments/live"'
    async with login("viewer") as ui:
        assert "fragments/live" not in (await ui.get(f"/admin/mailings/{later}")).text
        assert 'hx-trigger="every' in (await ui.get("/admin/")).text
    async with login("viewer") as ui:
        page = (await ui.get(f"/admin/mailings/{mailing_id}")).text
        assert live in page and f'hx-get="/admin/mailings/{mailing_id}/messages?status=&amp;q=' in page
        table = await ui.get(f"/admin/mailings/{mailing_id}/messages", headers={"HX-Request": "true"})
        assert 'hx-trigger="every' in table.text and "<html" not in table.text
        fragment = await ui.get(f"/admin/mailings/{mailing_id}/fragments/live")
        assert fragment.status_code == 200 and live in fragment.text
        assert "<html" not in fragment.text and "messages final" in fragment.text
    await api.post(f"/api/v1/mailings/{mailing_id}/cancel")
    async with login("viewer") as ui:
        assert 'hx-trigger="every' not in (await ui.get(f"/admin/mailings/{mailing_id}")).text
        assert live not in (await ui.get(f"/admin/mailings/{mailing_id}/fragments/live")).text


async def test_clients_page_filters_creates_edits_and_deletes_with_the_api_rules(
    api: httpx.AsyncClient, login: Login
) -> None:
    taken = await add_client(api, "79001112233", "vip")
    await add_client(api, "79161112233", "regular")
    async with login("operator") as ui:
        listed = await ui.get("/admin/clients", params={"tag": "vip"})
        assert listed.status_code == 200
        assert "79001112233" in listed.text and "79161112233" not in listed.text
        by_phone = await ui.get("/admin/clients", params={"phone": "7916"}, headers={"HX-Request": "true"})
        assert "79161112233" in by_phone.text and "79001112233" not in by_phone.text
        by_zone = await ui.get("/admin/clients", params={"timezone": "Asia/Omsk"})
        assert "No clients match" in by_zone.text
        bad = await ui.post(
            "/admin/clients/new",
            data={"csrf_token": CSRF, "phone": "8900", "timezone": "Mars/Olympus", "operator_code": "12"},
        )
        assert bad.status_code == 422
        assert "7 followed by 10 digits" in field_error(bad.text, "phone")
        assert "Mars/Olympus" in field_error(bad.text, "timezone")
        assert field_error(bad.text, "operator_code")
        duplicate = await ui.post(
            "/admin/clients/new", data={"csrf_token": CSRF, "phone": "79001112233", "timezone": "UTC"}
        )
        assert duplicate.status_code == 422 and "another client" in field_error(duplicate.text, "phone")
        edit = await ui.post(
            f"/admin/clients/{taken}/edit",
            data={"csrf_token": CSRF, "phone": "79001112233", "tag": "gold", "timezone": "Asia/Omsk"},
        )
        assert edit.status_code == 303
        assert (await api.get(f"/api/v1/clients/{taken}")).json()["tag"] == "gold"
        confirm = await ui.get(f"/admin/clients/{taken}/delete")
        assert "Yes, delete" in confirm.text
        deleted = await ui.post(f"/admin/clients/{taken}/delete", data={"csrf_token": CSRF})
    assert deleted.status_code == 303
    assert (await api.get(f"/api/v1/clients/{taken}")).status_code == 404


async def test_csv_import_lists_each_rejected_row(api: httpx.AsyncClient, login: Login) -> None:
    csv = (
        "phone,operator_code,tag,timezone\n"
        "79001234567,,vip,Europe/Moscow\n8900,,,Europe/Moscow\n79001234568,,,Mars/Olympus\n"
    )
    async with login("operator") as ui:
        page = await ui.get("/admin/clients/import")
        assert page.status_code == 200
        report = await ui.post(
            "/admin/clients/import",
            data={"csrf_token": CSRF},
            files={"file": ("c.csv", csv.encode(), "text/csv")},
        )
        empty = await ui.post(
            "/admin/clients/import", data={"csrf_token": CSRF}, files={"file": ("e.csv", b"", "text/csv")}
        )
    assert report.status_code == 200
    assert re.search(r"<dt>Created</dt><dd>1</dd>", report.text)
    assert re.search(r"<dt>Rejected</dt><dd>2</dd>", report.text)
    assert "<td>3</td><td>phone</td>" in report.text and "<td>4</td><td>timezone</td>" in report.text
    assert empty.status_code == 422 and "empty" in field_error(empty.text, "file")
    assert (await api.get("/api/v1/clients")).json()["total"] == 1


async def test_csv_import_logs_each_imported_client(api: httpx.AsyncClient, login: Login) -> None:
    records: list[tuple[object, str]] = []
    sink = logger.add(lambda m: records.append((m.record["extra"].get("client_id"), m.record["message"])))
    try:
        async with login("operator") as ui:
            report = await ui.post(
                "/admin/clients/import",
                data={"csrf_token": CSRF},
                files={"file": ("c.csv", b"phone,timezone\n79001234567,UTC\n8900,UTC\n", "text/csv")},
            )
            await log_writers_done()
    finally:
        logger.remove(sink)
    assert report.status_code == 200
    [client] = (await api.get("/api/v1/clients")).json()["items"]
    assert [r for r in records if r[0] is not None] == [
        (client["id"], f"client {client['id']} created by CSV import (line 2)")
    ]


async def test_daily_report_page_shows_the_figures_of_the_daily_email(
    api: httpx.AsyncClient, login: Login, api_settings: ApiSettings
) -> None:
    mailing = await create(api, text="Report me")
    ids = await add_messages(api_settings, mailing["id"], ["sent", "sent", "failed"])
    day = date(2026, 3, 10)
    async with await db(api_settings) as conn:
        for message_id, status in zip(ids, ["sent", "sent", "failed"], strict=True):
            await conn.execute(
                "INSERT INTO report_outcomes"
                " (message_id, mailing_id, client_id, status, attempts, occurred_at)"
                " VALUES (%s, %s, 1, %s, 1, '2026-03-10T12:00:00+03:00')",
                (message_id, mailing["id"], status),
            )
    async with login("viewer") as ui:
        page = await ui.get("/admin/reports", params={"day": day.isoformat()})
        other = await ui.get("/admin/reports", params={"day": "2026-03-11"})
    assert page.status_code == 200
    assert "Europe/Moscow" in page.text and "Report me" in page.text
    assert re.search(r"<dt>sent</dt><dd>2</dd>", page.text) and re.search(
        r"<dt>failed</dt><dd>1</dd>", page.text
    )
    assert "No message reached a final status that day" in other.text


async def test_a_report_day_at_the_calendars_edge_is_refused_not_an_error(login: Login) -> None:
    async with login("viewer") as ui:
        answers = [await ui.get("/admin/reports", params={"day": d}) for d in ("9999-12-31", "0001-01-01")]
    assert [a.status_code for a in answers] == [422, 422]


async def test_an_api_key_created_in_the_ui_is_shown_once_and_works(
    api: httpx.AsyncClient, login: Login
) -> None:
    async with login("admin") as ui:
        created = await ui.post(
            "/admin/api-keys", data={"csrf_token": CSRF, "name": "call centre", "role": "operator"}
        )
        assert created.status_code == 200
        key = re.search(r'id="new-key" readonly value="(mk_[^"]+)"', created.text)
        assert key is not None
        listed = await ui.get("/admin/api-keys")
        assert "call centre" in listed.text and key.group(1) not in listed.text
        invalid = await ui.post("/admin/api-keys", data={"csrf_token": CSRF, "name": "", "role": "root"})
        assert (
            invalid.status_code == 422
            and field_error(invalid.text, "name")
            and field_error(invalid.text, "role")
        )
        works = await api.get("/api/v1/clients", headers={"Authorization": f"Bearer {key.group(1)}"})
        assert works.status_code == 200
        key_id = next(
            k["id"] for k in (await api.get("/api/v1/api-keys")).json() if k["name"] == "call centre"
        )
        assert "Yes, revoke" in (await ui.get(f"/admin/api-keys/{key_id}/revoke")).text
        revoked = await ui.post(f"/admin/api-keys/{key_id}/revoke", data={"csrf_token": CSRF})
    assert revoked.status_code == 303
    assert (
        await api.get("/api/v1/clients", headers={"Authorization": f"Bearer {key.group(1)}"})
    ).status_code == 401


async def test_a_viewer_sees_no_write_buttons_and_every_write_is_refused(
    api: httpx.AsyncClient, login: Login
) -> None:
    mailing = await create(api)
    client = await add_client(api, "79005556677")
    async with login("viewer") as ui:
        for path in ("/admin/", f"/admin/mailings/{mailing['id']}", "/admin/clients"):
            page = await ui.get(path)
            assert page.status_code == 200
            assert "New mailing" not in page.text and 'role="button"' not in page.text.split("</nav>", 1)[1]
            assert "Edit</a>" not in page.text and "Delete</a>" not in page.text
        writes: list[tuple[str, dict[str, Any]]] = [
            ("/admin/mailings/new", future_form()),
            (f"/admin/mailings/{mailing['id']}/pause", {"csrf_token": CSRF}),
            (f"/admin/mailings/{mailing['id']}/delete", {"csrf_token": CSRF}),
            (f"/admin/clients/{client}/delete", {"csrf_token": CSRF}),
            ("/admin/clients/new", {"csrf_token": CSRF, "phone": "79005556678", "timezone": "UTC"}),
            ("/admin/api-keys", {"csrf_token": CSRF, "name": "x"}),
        ]
        for path, data in writes:
            assert (await ui.post(path, data=data)).status_code == 403, path
        for path in ("/admin/mailings/new", f"/admin/mailings/{mailing['id']}/cancel", "/admin/api-keys"):
            assert (await ui.get(path)).status_code == 403, path
    assert (await api.get(f"/api/v1/mailings/{mailing['id']}")).json()["status"] == "scheduled"
    assert (await api.get(f"/api/v1/clients/{client}")).status_code == 200


async def test_an_operator_may_not_manage_api_keys(login: Login) -> None:
    async with login("operator") as ui:
        assert (await ui.get("/admin/api-keys")).status_code == 403
        assert "/admin/api-keys" not in (await ui.get("/admin/")).text


async def test_a_write_without_its_csrf_token_is_refused(api: httpx.AsyncClient, login: Login) -> None:
    mailing = await create(api)
    async with login("admin") as ui:
        missing = await ui.post(f"/admin/mailings/{mailing['id']}/pause", data={})
        wrong = await ui.post(f"/admin/mailings/{mailing['id']}/pause", data={"csrf_token": "forged"})
        header = await ui.post(f"/admin/mailings/{mailing['id']}/pause", headers={"X-CSRF-Token": CSRF})
    assert missing.status_code == 403 and wrong.status_code == 403
    assert header.status_code == 303
    assert (await api.get(f"/api/v1/mailings/{mailing['id']}")).json()["status"] == "paused"


async def test_admin_static_files_are_served_from_the_installed_packages(api: httpx.AsyncClient) -> None:
    for path in (
        "/admin/static/vendor/htmx/htmx.min.js",
        "/admin/static/vendor/pico/pico.min.css",
        "/admin/static/vendor/chartjs/chart.umd.min.js",
        "/admin/static/app/app.js",
        "/admin/static/app/app.css",
    ):
        assert (await api.get(path)).status_code == 200, path
