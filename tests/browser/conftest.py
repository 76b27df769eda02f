"""The console in a real headless Chromium (Debian's ``chromium``), driven by Playwright.

jobline runs in this process (``Testbed`` in-process mode: the same actor classes as on
Ray, the real gateway on a free loopback port, fake vendors on loopback). Playwright's
async API shares the test's event loop with it, so a test can drive the page and the
fakes (``tb.fakes[...].set_profile``) side by side. No browser is ever downloaded: the
tests launch ``/usr/bin/chromium`` and are skipped, saying so, when it is missing.

Screenshots go to a temporary directory, or to ``tests/browser/screenshots/`` (the ones
the README shows) when ``JOBLINE_SCREENSHOTS=1`` (``make screenshots``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadtests.testbed import Testbed
from vendors_fake.profile import merge_profile, preset

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
FAST: dict[str, dict[str, Any]] = {
    "retry": {"base": 0.05, "cap": 0.4, "max_attempts": 2},
    "sweeper": {"interval": 1.0},
    "vendors.fal": {"poll_interval": 0.3},
    "vendors.replicate": {"poll_interval": 0.3},
}

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing (Debian: apt-get install chromium; make browser-deps)",
        allow_module_level=True,
    )
playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright")


def slow_profile(seconds: float = 2.0) -> Any:
    """Calm, but each task runs about ``seconds``: long enough to be seen processing."""
    return merge_profile(
        preset("calm"),
        {"run_time": {"kind": "uniform", "low": seconds, "high": seconds * 1.25}},
    )


@dataclass
class Console:
    """The jobline under test and the browser looking at it."""

    tb: Testbed
    browser: Any  # playwright Browser
    base: str
    shots: Path

    async def page(self, path: str, **context: Any) -> Any:
        """A new browser context (a fresh tab: empty sessionStorage) at ``path``."""
        ctx = await self.browser.new_context(
            viewport=context.pop("viewport", {"width": 1280, "height": 900}), **context
        )
        page = await ctx.new_page()
        await page.goto(self.base + path)
        return page

    async def signed_in(self, path: str, secret: str, **context: Any) -> Any:
        page = await self.page(path, **context)
        await page.get_by_label("API key" if "operator" not in path else "Admin token").fill(secret)
        await page.get_by_role("button", name="Sign in").click()
        await page.locator("#app").wait_for(state="visible")
        return page

    async def screenshot(self, page: Any, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await page.evaluate("getSelection().removeAllRanges()")
        await page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        await chromium.close()


def _shots(tmp_path: Path) -> Path:
    shots = SCREENSHOTS if os.environ.get("JOBLINE_SCREENSHOTS") == "1" else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    return shots


@pytest.fixture
async def console(tmp_path: Path, browser: Any) -> AsyncIterator[Console]:
    """jobline in this process (same classes as on Ray) with slow-ish fake vendors."""
    async with Testbed(
        tmp_path / "jobline", profile=slow_profile(), mode="in-process", overrides=FAST
    ) as tb:
        yield Console(tb, browser, tb.config.gateway.public_url, _shots(tmp_path))


@pytest.fixture
async def console_on_ray(tmp_path: Path, browser: Any, ray_session: Any) -> AsyncIterator[Console]:
    """jobline on the session's local Ray: named actors, two gateway replicas on one port."""
    async with Testbed(tmp_path / "jobline", profile=slow_profile(), overrides=FAST) as tb:
        yield Console(tb, browser, tb.config.gateway.public_url, _shots(tmp_path))
