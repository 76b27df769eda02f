"""The console against jobline on a real local Ray (the other browser tests run it in
process): the gateway replicas, the ledger and the processors are Ray actors."""

from __future__ import annotations

import pytest

from runtime.invariants import check_invariants
from tests.browser.conftest import Console

pytestmark = pytest.mark.ray
expect = pytest.importorskip("playwright.async_api").expect
LIVE = 30_000


async def test_studio_and_history_follow_a_job_on_ray(console_on_ray: Console) -> None:
    console = console_on_ray
    studio = await console.signed_in("/console/studio", console.tb.client.api_key)
    history = await console.signed_in("/console/history", console.tb.client.api_key)
    await expect(history.locator("#live")).to_have_text("live")

    await studio.get_by_label("Model").select_option("sdxl")  # replicate first
    await studio.get_by_label("Prompt", exact=True).fill("a harbour on Ray")
    await studio.get_by_role("button", name="Generate").click()
    card = studio.locator("article.job")
    await expect(card.get_by_role("status")).to_have_text("completed", timeout=LIVE)
    await expect(card.get_by_role("img")).to_be_visible()

    # The history page got the job from its event stream (a gateway replica of its own).
    row = history.locator("#jobs tr")
    await expect(row).to_have_count(1, timeout=LIVE)
    await expect(row.locator("mark")).to_have_text("completed", timeout=LIVE)
    assert check_invariants(console.tb.config.storage.database) == []
