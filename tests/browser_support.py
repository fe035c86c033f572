"""What the browser tests share: Debian's chromium and its flags, where screenshots go, and the axe-core
check every page must pass (no serious or critical violation), for Playwright's sync and async pages."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page as AsyncPage
from playwright.sync_api import Page, ViewportSize

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
AXE_SOURCE = AXE.read_text() if AXE.exists() else ""
SCREENSHOTS = ROOT / "var" / "screenshots"
VIEWPORTS: dict[str, ViewportSize] = {
    "laptop": {"width": 1366, "height": 900},
    "phone": {"width": 390, "height": 844},
}
AXE_RUN = "async () => await axe.run(document, {resultTypes: ['violations']})"


def skip_without_chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Debian's chromium is not installed (make browser)")


def serious_violations(result: dict[str, Any]) -> list[str]:
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def check(page: Page, name: str) -> None:
    """Keeps a screenshot of the page as var/screenshots/<name>.png and runs axe-core on it."""
    page.wait_for_load_state("networkidle")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    # Evaluated through the browser's protocol, which the page's CSP (no inline scripts) does not govern.
    page.evaluate(AXE_SOURCE)
    bad = serious_violations(page.evaluate(AXE_RUN))
    assert not bad, f"{name} ({page.url}): " + "; ".join(bad)


async def check_async(page: AsyncPage, name: str) -> None:
    """`check` for Playwright's async API."""
    await page.wait_for_load_state("networkidle")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    await page.evaluate(AXE_SOURCE)
    bad = serious_violations(await page.evaluate(AXE_RUN))
    assert not bad, f"{name} ({page.url}): " + "; ".join(bad)
