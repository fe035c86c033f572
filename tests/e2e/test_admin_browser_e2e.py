"""The admin UI end to end in a real Chromium: the development OpenID Connect provider, the API, the
scheduler, a sender and the probe stand-in each run as their own process on their own port, against a
database and a RabbitMQ namespace of the test's own.

The first test is an operator's session: sign in through the provider's page, create clients and import a
CSV, create a mailing and watch its page reach 100% by its own refresh, pause and resume one, cancel one,
check the page's figures against the REST API, then a viewer who can change nothing, logout, and a forged
form. The second is a newcomer's first minute: `scripts.first_run`, then `scripts.demo`, then the printed
address shows the demo's mailing after signing in. Every page's screenshot is kept as
var/screenshots/e2e-*.png and axe-core runs on each."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.async_api import Browser, FilePayload, Page, async_playwright, expect

from bench.chaos import ROOT, Services, _clean_environment, free_port, port_accepts
from services.probe_stub.token import make_token
from shared.settings import CommonSettings
from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORTS, check_async, skip_without_chromium

from ..conftest import AMQP_URL, TEST_RETRY_DELAYS

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

API_KEY = "e2e-browser-bootstrap-key-0123456789"
SESSION_SECRET = "e2e-browser-session-secret-0123456789abcdef"
CLIENT_ID = "mailing-admin"
FINAL = ("sent", "failed", "expired", "cancelled")
T = TypeVar("T")


@dataclass
class Stack:
    api: str
    provider: str
    services: Services


async def poll(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@asynccontextmanager
async def provider_process(logs: Path) -> AsyncIterator[str]:
    """`python -m scripts.dev_oidc --port <free>`; yields its issuer URL."""
    port = free_port()
    env = {**_clean_environment(), "MAILING_LOG_LEVEL": "INFO"}
    with (logs / "dev_oidc.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scripts.dev_oidc", "--port", str(port), cwd=ROOT, env=env, stdout=log,
            stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    try:
        await poll(lambda: port_accepts(port), 30, "the development provider")
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
    # Reached only when the body went well: `make run` stops the provider this way too.
    assert process.returncode == 0, f"the provider ended with {process.returncode} on SIGTERM"


@asynccontextmanager
async def stack(
    logs: Path, settings: CommonSettings, reporter: bool = False, **api_env: str
) -> AsyncIterator[Stack]:
    """Provider, API, scheduler, sender and a fault-free stand-in (and the reporter, which keeps the
    figures of "today"), each a process; `api_env` adds to (or, with an empty value, removes from) the
    API's environment."""
    services = Services(
        logs,
        {
            "MAILING_DATABASE_URL": settings.database_url,
            "MAILING_AMQP_URL": AMQP_URL,
            "MAILING_AMQP_NAMESPACE": settings.amqp_namespace,
            "MAILING_RETRY_DELAYS_SECONDS": str([*TEST_RETRY_DELAYS, 2.0]),
            "MAILING_PROBE_TOKEN": make_token("local-probe-secret"),
            "MAILING_PROBE_LATENCY_MS": "2",
            "MAILING_SCHEDULER_TICK_SECONDS": "0.5",
            "MAILING_SENDER_REQUEST_TIMEOUT_SECONDS": "2",
            "MAILING_REFRESH_SECONDS": "1",
            "MAILING_OIDC_CLIENT_ID": CLIENT_ID,
            "MAILING_OIDC_CLIENT_SECRET": "development-only",
        },
    )
    async with provider_process(logs) as issuer:
        services.common_env["MAILING_OIDC_ISSUER"] = issuer
        stub = services.add("stub", "probe_stub")
        api = services.add("api", "api")
        api.env["MAILING_PUBLIC_URL"] = api.base
        for name, value in api_env.items():
            if value:
                api.env[name] = value
            else:
                api.env.pop(name, None)
        api.port = int(api.env["MAILING_API_PORT"])
        services.add("scheduler", "scheduler")
        services.add("sender", "sender", MAILING_PROBE_BASE_URL=stub.base)
        if reporter:
            # Its SMTP server is a port nobody listens on: no report of this test goes anywhere.
            services.add("reporter", "reporter", MAILING_REPORTER_SMTP_PORT=str(free_port()))
        try:
            for name in services.services:
                await services.start(name)
            await services.wait_healthy("stub")
            await services.wait_healthy("api")
            await services.wait_healthy("scheduler")
            await services.wait_healthy("sender", path="/readyz")
            yield Stack(api=api.base, provider=issuer, services=services)
        finally:
            await services.stop_all()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    skip_without_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def sign_in(page: Page, stack: Stack, user: str, address: str | None = None) -> None:
    """Open the admin UI, be sent to the provider's page, type the user name, come back to the UI."""
    await page.goto(address or f"{stack.api}/admin/")
    await expect(page).to_have_url(re.compile(re.escape(stack.provider) + "/oauth2/authorize"))
    await page.fill("#sub", user)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{stack.api}/admin/")
    await expect(page.locator(".who .role")).to_have_text(user)


async def csrf_of(page: Page) -> str:
    return await page.locator("input[name=csrf_token]").first.input_value()


async def api_stats(stack: Stack, key: str, mailing_id: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {key}"}) as api:
        response = await api.get(f"/api/v1/mailings/{mailing_id}/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


async def page_figures(page: Page) -> tuple[int, int, dict[str, int]]:
    """The mailing page's figures: final, total and the count of each status in its legend."""
    line = await page.locator("#mailing-live article[aria-labelledby=progress-h] > p").first.inner_text()
    found = re.match(r"(\d+) of (\d+) messages final", line)
    assert found, line
    legend: dict[str, int] = {}
    for item in await page.locator("#mailing-live ul.legend li").all_inner_texts():
        status, count = item.strip().rsplit(" ", 1)
        legend[status] = int(count)
    return int(found[1]), int(found[2]), legend


async def assert_page_equals_api(page: Page, stack: Stack, key: str, mailing_id: int) -> dict[str, Any]:
    await page.goto(f"{stack.api}/admin/mailings/{mailing_id}")
    final, total, legend = await page_figures(page)
    stats = await api_stats(stack, key, mailing_id)
    counts = {status: n for status, n in stats["counts"].items() if n}
    assert total == stats["total"]
    assert final == sum(counts.get(s, 0) for s in FINAL)
    assert legend == counts
    return stats


async def confirm(page: Page, stack: Stack, mailing_id: int, action: str, then: str) -> None:
    """The mailing page's button, the confirmation page, "Yes": back on the page with the new status."""
    await page.goto(f"{stack.api}/admin/mailings/{mailing_id}")
    await page.locator(".heading .actions a", has_text=action.capitalize()).click()
    await expect(page).to_have_url(f"{stack.api}/admin/mailings/{mailing_id}/{action}")
    await expect(page.locator("h1")).to_have_text(f"{action.capitalize()} mailing {mailing_id}?")
    await check_async(page, f"e2e-confirm-{action}")
    await page.click(f"button:has-text('Yes, {action}')")
    await expect(page).to_have_url(f"{stack.api}/admin/mailings/{mailing_id}")
    await expect(page.locator("h1 .badge")).to_have_text(then)


def local_minute(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


async def create_by_api(stack: Stack, body: Mapping[str, Any]) -> int:
    async with httpx.AsyncClient(base_url=stack.api, headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        response = await api.post("/api/v1/mailings", json=dict(body))
        assert response.status_code == 201, response.text
        mailing_id: int = response.json()["id"]
        return mailing_id


async def test_an_operator_session_in_the_browser_from_sign_in_to_logout(
    tmp_path: Path, settings: CommonSettings, topology: object
) -> None:
    skip_without_chromium()
    async with (
        stack(tmp_path / "logs", settings, MAILING_BOOTSTRAP_API_KEY=API_KEY,
              MAILING_SESSION_SECRET=SESSION_SECRET) as s,
        chromium() as browser,
    ):  # fmt: skip
        context = await browser.new_context(viewport=VIEWPORTS["laptop"])
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # 1. Sign in through the provider's own page.
        await page.goto(f"{s.api}/admin/")
        await expect(page).to_have_url(re.compile(re.escape(s.provider)))
        await expect(page.locator("text=Development only.")).to_be_visible()
        await check_async(page, "e2e-provider-sign-in")
        await page.fill("#sub", "admin")
        await page.click("button[type=submit]")
        await expect(page).to_have_url(f"{s.api}/admin/")
        await expect(page.locator("h1")).to_have_text("Dashboard")
        await check_async(page, "e2e-dashboard-empty")

        # 2. Two clients by the form, then a CSV of 21 rows, one of them bad.
        for phone in ("79000000001", "79000000002"):
            await page.goto(f"{s.api}/admin/clients/new")
            await page.fill("#f-phone", phone)
            await page.fill("#f-tag", "e2e-ui")
            await page.fill("#f-timezone", "UTC")
            if phone.endswith("1"):
                await check_async(page, "e2e-client-form")
            await page.click("form[action='/admin/clients/new'] button[type=submit]")
            await expect(page).to_have_url(f"{s.api}/admin/clients")
        rows = ["phone,operator_code,tag,timezone"]
        rows += [f"7901{n:07d},901,e2e-ui,UTC" for n in range(15)]
        rows += [f"7902{n:07d},902,e2e-hold,UTC" for n in range(5)]
        rows.insert(4, "79031234567,903,e2e-ui,Mars/Olympus")
        await page.goto(f"{s.api}/admin/clients/import")
        csv: FilePayload = {"name": "clients.csv", "mimeType": "text/csv", "buffer": "\n".join(rows).encode()}
        await page.set_input_files("#f-file", files=[csv])
        await page.click("form[action='/admin/clients/import'] button[type=submit]")
        report = page.locator("section[aria-labelledby=report-h]")
        await expect(report.locator(".figures")).to_contain_text("Created20")
        await expect(report.locator(".figures")).to_contain_text("Rejected1")
        rejected = report.locator("table tbody tr")
        await expect(rejected).to_have_count(1)
        await expect(rejected.locator("td").first).to_have_text("5")
        await expect(rejected.locator("td").nth(1)).to_have_text("timezone")
        await check_async(page, "e2e-import-report")
        await page.goto(f"{s.api}/admin/clients?tag=e2e-ui")
        await expect(page.locator("#clients")).to_contain_text("17 in all")
        await check_async(page, "e2e-clients")
        await page.locator("#clients a", has_text="Edit").first.click()
        await expect(page.locator("h1")).to_contain_text("Edit client")
        await check_async(page, "e2e-client-edit")
        await page.go_back()
        await page.locator("#clients a", has_text="Delete").first.click()
        await expect(page.locator("button[type=submit]", has_text="Yes")).to_have_count(1)
        await check_async(page, "e2e-client-delete-confirm")

        # 3. A mailing by the form, starting now; the count of matching clients before saving.
        now = datetime.now(UTC)
        await page.goto(f"{s.api}/admin/mailings/new")
        await page.fill("#f-text", "e2e: the browser's mailing")
        await page.fill("#f-start_at", local_minute(now))
        await page.fill("#f-end_at", local_minute(now + timedelta(hours=2)))
        await page.fill("#f-timezone", "UTC")
        await page.fill("#f-tags", "e2e-ui")
        await expect(page.locator("#matching strong")).to_have_text("17")
        await page.fill("#f-tags", "e2e-ui, e2e-hold")
        await expect(page.locator("#matching strong")).to_have_text("22")
        await page.fill("#f-tags", "e2e-ui")
        await expect(page.locator("#matching strong")).to_have_text("17")
        await check_async(page, "e2e-mailing-form")
        await page.click("form[action='/admin/mailings/new'] button[type=submit]")
        await expect(page).to_have_url(re.compile(re.escape(s.api) + r"/admin/mailings/\d+$"))
        first = int(page.url.rsplit("/", 1)[1])
        # No reload from here: the page's own refresh brings it to 100%.
        await expect(page.locator("#mailing-live article[aria-labelledby=progress-h] > p")).to_have_text(
            "17 of 17 messages final (100%)", timeout=60_000
        )
        await expect(page.locator("#mailing-live ul.legend")).to_have_text("sent 17")
        await expect(page.locator("h1 .badge")).to_have_text("finished", timeout=30_000)
        # The messages table followed too: every row sent.
        await expect(page.locator("#messages")).to_contain_text("17 in all")
        await expect(page.locator("#messages tbody .badge", has_text="sent")).to_have_count(17)
        await check_async(page, "e2e-mailing-done")
        stats = await assert_page_equals_api(page, s, API_KEY, first)
        assert stats["counts"]["sent"] == 17
        async with httpx.AsyncClient() as http:
            stub = (await http.get(f"{s.services['stub'].base}/_stub/stats")).json()
        assert stub["distinct_accepted"] == 17

        # 4. A second mailing held back by its window (running, nothing due): pause and resume it.
        hour = (now + timedelta(hours=3)).strftime("%H:00")
        second = await create_by_api(
            s,
            {
                "text": "e2e: held by its window",
                "start_at": now.isoformat(),
                "end_at": (now + timedelta(hours=20)).isoformat(),
                "filter": {"tags": ["e2e-hold"], "operator_codes": []},
                "window": {"start": hour, "end": (now + timedelta(hours=4)).strftime("%H:00")},
            },
        )

        async def running() -> bool:
            status: str = (await api_stats(s, API_KEY, second))["status"]
            return status == "running"

        await poll(running, 30, "the second mailing running")
        await confirm(page, s, second, "pause", "paused")
        await confirm(page, s, second, "resume", "running")
        await assert_page_equals_api(page, s, API_KEY, second)
        await check_async(page, "e2e-mailing-running")
        await page.locator(".heading .actions a", has_text="Edit").click()
        await expect(page.locator("h1")).to_have_text(f"Edit mailing {second}")
        await expect(page.locator("#f-text")).to_have_value("e2e: held by its window")
        await check_async(page, "e2e-mailing-edit")

        # A third one, starting tomorrow: cancel it.
        third = await create_by_api(
            s,
            {
                "text": "e2e: to be cancelled",
                "start_at": (now + timedelta(days=1)).isoformat(),
                "end_at": (now + timedelta(days=2)).isoformat(),
                "filter": {"tags": [], "operator_codes": []},
                "window": None,
            },
        )
        # 8. A forged form (no CSRF token) is refused, and changes nothing.
        forged = await page.request.post(f"{s.api}/admin/mailings/{third}/cancel", form={"x": "1"})
        assert forged.status == 403, await forged.text()
        assert (await api_stats(s, API_KEY, third))["status"] == "scheduled"
        await confirm(page, s, third, "cancel", "cancelled")
        await assert_page_equals_api(page, s, API_KEY, third)
        await page.goto(f"{s.api}/admin/mailings/{third}/delete")
        await check_async(page, "e2e-confirm-delete")

        # 5. The dashboard shows the three with the API's figures.
        await page.goto(f"{s.api}/admin/")
        for mailing_id in (first, second, third):
            stats = await api_stats(s, API_KEY, mailing_id)
            final = sum(stats["counts"].get(x, 0) for x in FINAL)
            row = page.locator(
                "#overview tbody tr", has=page.locator(f"a[href='/admin/mailings/{mailing_id}']")
            )
            await expect(row.locator(".badge")).to_have_text(stats["status"])
            await expect(row.locator(".progress-cell small")).to_contain_text(
                f"{final} / {stats['total']} final"
            )
        await check_async(page, "e2e-dashboard")
        await page.goto(f"{s.api}/admin/reports")
        await check_async(page, "e2e-report")
        await page.goto(f"{s.api}/admin/api-keys")
        await check_async(page, "e2e-api-keys")
        await page.locator("a", has_text="Revoke").first.click()
        await expect(page.locator("button[type=submit]", has_text="Yes")).to_have_count(1)
        await check_async(page, "e2e-api-key-revoke-confirm")
        await page.goto(f"{s.api}/admin/mailings/{first}/messages?status=sent")
        await check_async(page, "e2e-messages")

        # 7. Logout by the button: the provider's session ends too, and /admin/ asks for a login again.
        await page.click("form[action='/admin/logout'] button[type=submit]")
        await expect(page).to_have_url(re.compile(re.escape(s.provider) + "/oauth2/end_session"))
        await check_async(page, "e2e-provider-end-session")
        await page.click("button:has-text('End session')")
        await expect(page).to_have_url(f"{s.api}/admin/auth/signed-out")
        await check_async(page, "e2e-signed-out")
        me = await page.request.get(f"{s.api}/admin/auth/me")
        assert me.status == 401
        await page.goto(f"{s.api}/admin/")
        await expect(page).to_have_url(re.compile(re.escape(s.provider) + "/oauth2/authorize"))

        # 6. A viewer: no write buttons, and a write made anyway is refused.
        await page.fill("#sub", "viewer")
        await page.click("button[type=submit]")
        await expect(page).to_have_url(f"{s.api}/admin/")
        await expect(page.locator(".who .role")).to_have_text("viewer")
        await expect(page.locator("a", has_text="New mailing")).to_have_count(0)
        await page.goto(f"{s.api}/admin/mailings/{second}")
        await expect(page.locator("h1 .badge")).to_have_text("running")
        await expect(page.locator(".heading .actions")).to_have_count(0)
        for label in ("Edit", "Pause", "Resume", "Cancel", "Delete"):
            await expect(page.get_by_role("button", name=label)).to_have_count(0)
        await check_async(page, "e2e-viewer-mailing")
        token = await csrf_of(page)
        refused = await page.request.post(
            f"{s.api}/admin/mailings/{second}/cancel", form={"csrf_token": token}
        )
        assert refused.status == 403, await refused.text()
        refused = await page.request.post(
            f"{s.api}/admin/clients/new",
            form={"csrf_token": token, "phone": "79000000099", "timezone": "UTC"},
        )
        assert refused.status == 403
        assert (await api_stats(s, API_KEY, second))["status"] == "running"
        await page.goto(f"{s.api}/admin/clients")
        await expect(page.locator("#clients a", has_text="Edit")).to_have_count(0)
        await expect(page.locator("a", has_text="Import")).to_have_count(0)
        await page.goto(f"{s.api}/admin/clients/new")
        await expect(page.locator("h1")).to_contain_text("not allowed", ignore_case=True)
        await check_async(page, "e2e-viewer-forbidden")
        assert not errors, errors
        await context.close()


async def test_the_first_minute_make_run_then_make_demo_then_the_dashboard(
    tmp_path: Path, settings: CommonSettings, topology: object
) -> None:
    skip_without_chromium()
    state = tmp_path / "local"
    api_port = free_port()
    env = {
        **_clean_environment(),
        "MAILING_LOCAL_STATE_DIR": str(state),
        "MAILING_API_PORT": str(api_port),
        "MAILING_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
    }
    first_run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scripts.first_run", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out = (await asyncio.wait_for(first_run.communicate(), 60))[0].decode()
    assert first_run.returncode == 0, out
    key = (state / "admin-api-key").read_text().strip()
    assert f"admin API key     {key}" in out
    found = re.search(r"admin UI\s+(\S+)", out)
    assert found, out
    address = found[1]
    assert address == f"http://127.0.0.1:{api_port}/admin/"
    assert "DEVELOPMENT-ONLY provider: users admin, operator, viewer" in out
    for what in ("REST API", "Swagger UI", "sign-in", "probe stand-in", "mail sink"):
        assert what in out, out
    assert (state / "session-secret").exists()

    async with (
        stack(tmp_path / "logs", settings, reporter=True, MAILING_LOCAL_STATE_DIR=str(state),
              MAILING_API_PORT=str(api_port), MAILING_PUBLIC_URL=f"http://127.0.0.1:{api_port}") as s,
        chromium() as browser,
    ):  # fmt: skip
        demo = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scripts.demo", "--api", s.api, "--clients", "300", "--timeout", "90",
            cwd=ROOT, env={**env, "MAILING_DATABASE_URL": settings.database_url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out = (await asyncio.wait_for(demo.communicate(), 120))[0].decode()
        assert demo.returncode == 0, out
        assert "is done" in out, out

        context = await browser.new_context(viewport=VIEWPORTS["phone"])
        page = await context.new_page()
        await sign_in(page, s, "admin", address)
        row = page.locator("#overview tbody tr", has_text="Demo: your discount is waiting")
        await expect(row.locator(".badge")).to_have_text("finished")
        await expect(row.locator(".progress-cell small")).to_contain_text("300 / 300 final (100%)")

        # Today's totals come from the reporter's record of outcomes, which follows a little behind.
        async def today_sent() -> bool:
            await page.reload()
            sent = page.locator("article[aria-labelledby=today-h] .figures div", has_text="sent").locator(
                "dd"
            )
            return await sent.inner_text() == "300"

        await poll(today_sent, 30, "today's figures")
        await check_async(page, "e2e-demo-dashboard-phone")
        await context.close()
