"""Every admin page in a real Chromium, on a laptop and a phone: it renders and works, its screenshot is
kept in var/screenshots/, and axe-core finds no serious or critical accessibility violation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, FilePayload, sync_playwright

from tests.admin_session import COOKIE_NAME, SESSION_SECRET, session_cookie
from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORTS, check, skip_without_chromium
from tests.integration.conftest import ADMIN_HEADERS, LiveApi

pytestmark = pytest.mark.browser


@pytest.fixture
def ui_server(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> LiveApi:
    skip_without_chromium()
    monkeypatch.setenv("MAILING_SESSION_SECRET", SESSION_SECRET)
    live: LiveApi = request.getfixturevalue("live_api")
    return live


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def seed(live: LiveApi) -> dict[str, Any]:
    """30 clients, a mailing with messages in every status (as the scheduler and sender would leave them)
    and a second mailing."""
    with httpx.Client(base_url=live.base_url, headers=ADMIN_HEADERS, timeout=10) as api:
        rows = "".join(f"7916{n:07d},,{'vip' if n % 2 else 'regular'},Europe/Moscow\n" for n in range(30))
        imported = api.post(
            "/api/v1/clients/import", files={"file": ("c.csv", "phone,operator_code,tag,timezone\n" + rows)}
        )
        assert imported.status_code == 200, imported.text
        start = datetime.now(UTC) + timedelta(hours=1)
        body = {
            "text": "Spring sale: -20% on everything until Sunday",
            "start_at": start.isoformat(),
            "end_at": (start + timedelta(days=2)).isoformat(),
            "filter": {"tags": ["vip"], "operator_codes": ["916"]},
            "window": {"start": "09:00", "end": "21:00"},
        }
        mailing = api.post("/api/v1/mailings", json=body).json()
        statuses = ["sent"] * 9 + ["failed", "retrying", "pending", "queued", "expired", "cancelled"]
        with psycopg.connect(live.settings.psycopg_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO messages"
                " (mailing_id, client_id, status, not_before, queued_at, attempts, sent_at, last_error)"
                " SELECT %s, c.id, s.status, now(), now(), CASE WHEN s.status = 'failed' THEN 3 ELSE 1 END,"
                "   CASE WHEN s.status = 'sent' THEN now() - make_interval(mins => s.n::int * 3) END,"
                "   CASE WHEN s.status = 'failed' THEN 'http 400' END"
                " FROM unnest(%s::text[]) WITH ORDINALITY AS s(status, n)"
                " JOIN clients c ON c.id = s.n",
                (mailing["id"], statuses),
            )
        api.post("/api/v1/mailings", json={**body, "text": "Weekend reminder", "filter": {}})
        return {"mailing_id": mailing["id"]}


@pytest.mark.parametrize("viewport", sorted(VIEWPORTS))
def test_every_admin_page_works_and_passes_axe(ui_server: LiveApi, browser: Browser, viewport: str) -> None:
    mailing = seed(ui_server)["mailing_id"]
    base = ui_server.base_url
    context = browser.new_context(viewport=VIEWPORTS[viewport])
    context.add_cookies([{"name": COOKIE_NAME, "value": session_cookie("admin"), "url": base}])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Anything the Content-Security-Policy blocks is an error of the page too.
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)

    page.goto(f"{base}/admin/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    assert page.locator("text=Spring sale").first.is_visible()
    check(page, f"{viewport}-dashboard")

    page.goto(f"{base}/admin/mailings/{mailing}")
    page.locator("#messages details summary").first.click()
    check(page, f"{viewport}-mailing")
    page.select_option("#m-status", "failed")
    page.wait_for_selector("#messages tbody >> text=http 400", state="attached")

    page.goto(f"{base}/admin/mailings/new")
    page.fill("#f-tags", "vip")
    page.fill("#f-operator_codes", "916")
    page.wait_for_selector("#matching >> text=15")
    page.click("form[action='/admin/mailings/new'] button[type=submit]")
    assert page.locator("#e-text").is_visible()
    check(page, f"{viewport}-mailing-form")

    page.goto(f"{base}/admin/mailings/{mailing}/pause")
    check(page, f"{viewport}-confirm")

    page.goto(f"{base}/admin/clients?tag=vip")
    check(page, f"{viewport}-clients")
    page.goto(f"{base}/admin/clients/new")
    check(page, f"{viewport}-client-form")

    page.goto(f"{base}/admin/clients/import")
    bad_csv: FilePayload = {
        "name": "bad.csv",
        "mimeType": "text/csv",
        "buffer": b"phone,timezone\n8900,UTC\n",
    }
    page.set_input_files("#f-file", files=[bad_csv])
    page.click("form[action='/admin/clients/import'] button[type=submit]")
    page.wait_for_selector("text=Rejected rows")
    check(page, f"{viewport}-import")

    page.goto(f"{base}/admin/reports")
    check(page, f"{viewport}-report")

    page.goto(f"{base}/admin/api-keys")
    page.fill("#f-name", "dashboard screen")
    page.click("form[action='/admin/api-keys'] button[type=submit]")
    assert page.input_value("#new-key").startswith("mk_")
    check(page, f"{viewport}-api-keys")

    assert not errors, errors
    context.close()
