"""The console as its users drive it, in headless Chromium against jobline with fake vendors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from runtime.invariants import check_invariants
from tests.browser.conftest import Console, slow_profile
from vendors_fake.profile import merge_profile

expect = pytest.importorskip("playwright.async_api").expect
LIVE = 20_000  # ms: how long a page may take to show what the vendors did


async def jobs_of(console: Console, api_key: str | None = None) -> list[dict[str, Any]]:
    status, body = await console.tb.client.request("GET", "/v1/jobs", api_key=api_key)
    assert status == 200, body
    jobs: list[dict[str, Any]] = body["jobs"]
    return jobs


async def test_studio_submits_once_and_shows_the_job_live_then_its_output(
    console: Console,
) -> None:
    page = await console.page("/console/studio")
    await page.get_by_label("API key").fill("jl_not-a-key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("unknown API key")
    await expect(page.get_by_label("API key")).to_be_focused()
    await page.get_by_label("API key").fill(console.tb.client.api_key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_label("Model")).to_have_value("flux-schnell")
    await page.get_by_label("Prompt").fill("a lighthouse at dusk")
    await page.get_by_label("Seed (optional)").fill("7")
    await page.get_by_role("button", name="Generate").dblclick()  # one job, charged once

    card = page.locator("article.job")
    await expect(card).to_have_count(1)
    status = card.get_by_role("status")
    await expect(status).to_have_text("processing", timeout=LIVE)
    await console.screenshot(page, "studio-processing")
    await expect(status).to_have_text("completed", timeout=LIVE)
    image = card.get_by_role("img", name="Output 1 of job")
    await expect(image).to_be_visible()
    assert await image.evaluate("img => img.naturalWidth") > 0  # real bytes, decoded
    link = card.get_by_role("link", name="Download output 1")
    assert (await link.get_attribute("download") or "").endswith(".png")
    await expect(card.get_by_role("button", name="Cancel")).to_be_hidden()

    (job,) = await jobs_of(console)
    assert (job["status"], job["input"]) == (
        "completed",
        {"prompt": "a lighthouse at dusk", "seed": 7},
    )
    credits = await console.tb.client.credits()
    assert credits["balance"] == console.tb.credits - job["cost"]  # captured once
    await console.screenshot(page, "studio")


async def test_a_closed_studio_reopened_follows_the_processing_job_again(
    console: Console,
) -> None:
    page = await console.signed_in("/console/studio", console.tb.client.api_key)
    await page.get_by_label("Prompt").fill("a slow one")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.get_by_role("status")).to_have_text("processing", timeout=LIVE)
    job_id = await page.locator("article.job code").first.text_content()
    await page.context.close()  # the browser is closed: its sessionStorage is gone

    page = await console.signed_in("/console/studio", console.tb.client.api_key)
    card = page.locator(f'article.job[data-job-id="{job_id}"]')
    await expect(card).to_be_visible()
    await expect(card.get_by_role("status")).to_have_text("completed", timeout=LIVE)
    await expect(card.get_by_role("img")).to_be_visible()


async def test_cancel_in_the_studio_refunds_the_job(console: Console) -> None:
    console.tb.fakes["fal"].set_profile(slow_profile(30))
    page = await console.signed_in("/console/studio", console.tb.client.api_key)
    await page.get_by_label("Prompt").fill("never mind")
    await page.get_by_role("button", name="Generate").click()
    card = page.locator("article.job")
    await expect(card.get_by_role("status")).to_have_text("processing", timeout=LIVE)
    await card.get_by_role("button", name="Cancel").click()
    await expect(card.get_by_role("status")).to_have_text("canceled", timeout=LIVE)
    credits = await console.tb.client.credits()
    assert (credits["balance"], credits["held"]) == (console.tb.credits, 0)  # released


async def test_history_rows_turn_completed_live_on_one_event_stream(console: Console) -> None:
    # Tasks long enough to be seen processing however slowly the page loads.
    console.tb.fakes["fal"].set_profile(slow_profile(8))
    job_ids = []
    for i in range(3):
        status, job = await console.tb.client.submit("flux-schnell", {"prompt": f"job {i}"})
        assert status == 202
        job_ids.append(job["id"])
    page = await console.page("/console/history")
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/v1/events") else None)
    await page.get_by_label("API key").fill(console.tb.client.api_key)
    await page.get_by_label("API key").press("Enter")  # the keyboard alone signs in
    rows = page.locator("#jobs tr")
    await expect(rows).to_have_count(3)
    await page.evaluate("window.notReloaded = true")
    await expect(page.locator("#jobs mark", has_text="processing").first).to_be_visible(
        timeout=LIVE
    )
    await expect(page.locator("#live")).to_have_text("live")
    await console.screenshot(page, "history-processing")
    for job_id in job_ids:
        row = page.locator(f'#jobs tr[data-job-id="{job_id}"]')
        await expect(row.locator("mark")).to_have_text("completed", timeout=LIVE)
        await expect(row.get_by_role("button", name="Download output 1")).to_be_visible()
    assert await page.evaluate("window.notReloaded === true")  # changed in place
    assert len(streams) == 1  # one account-wide stream for the whole page

    await expect(page.locator("[data-field=balance]").first).to_have_text(
        str(console.tb.credits - 9), timeout=LIVE
    )
    kinds = await page.locator("#entries [data-field=kind]").all_text_contents()
    assert sorted(kinds) == sorted(["grant"] + ["hold"] * 3 + ["capture"] * 3)

    await page.get_by_label("Status").select_option("completed")
    await expect(rows).to_have_count(3)
    await page.get_by_label("Status").select_option("failed")
    await expect(page.get_by_text("No jobs.")).to_be_visible()
    await page.get_by_label("Status").select_option("")
    await console.screenshot(page, "history")


async def test_history_pages_through_the_jobs(console: Console) -> None:
    for i in range(23):
        await console.tb.client.submit("flux-schnell", {"prompt": f"page {i}"})
    page = await console.signed_in("/console/history", console.tb.client.api_key)
    rows = page.locator("#jobs tr")
    await expect(rows).to_have_count(20)
    newest = await rows.first.get_attribute("data-job-id")
    await page.get_by_role("button", name="Older").click()
    await expect(rows).to_have_count(3)
    await expect(page.get_by_role("button", name="Older")).to_be_disabled()
    await page.get_by_role("button", name="Newer").click()
    await expect(rows.first).to_have_attribute("data-job-id", newest or "")


async def test_a_second_account_never_sees_the_first_accounts_jobs(console: Console) -> None:
    _, other_key = await console.tb.client.create_account(100, name="other")
    status, first = await console.tb.client.submit("flux-schnell", {"prompt": "mine"})
    assert status == 202
    history = await console.signed_in("/console/history", other_key)
    studio = await console.signed_in("/console/studio", other_key)
    await expect(history.get_by_text("No jobs.")).to_be_visible()
    await expect(history.locator("#live")).to_have_text("live")
    # The first account's jobs go on changing; nothing of them reaches the other's pages.
    status, second = await console.tb.client.submit("flux-schnell", {"prompt": "mine too"})
    assert status == 202
    await console.tb.client.wait_all([first["id"], second["id"]])
    await asyncio.sleep(1.0)  # a few polls of the event stream
    for page in (history, studio):
        content = await page.content()
        assert first["id"] not in content and second["id"] not in content
    await expect(history.locator("#jobs tr")).to_have_count(0)
    await expect(studio.locator("article.job")).to_have_count(0)
    await expect(history.locator("#entries tr")).to_have_count(1)  # its own grant only


async def test_the_operator_redrives_a_dead_letter_and_it_completes(console: Console) -> None:
    tb = console.tb
    for vendor in ("fal", "replicate"):  # every vendor rejects the input: a dead letter
        tb.fakes[vendor].set_profile(merge({"rejection": 1.0}))
    status, job = await tb.client.submit("flux-schnell", {"prompt": "rejected"})
    assert (await tb.client.wait(job["id"]))["status"] == "failed"
    for vendor in ("fal", "replicate"):
        tb.fakes[vendor].set_profile(slow_profile(2.0))

    page = await console.signed_in("/console/operator", tb.client.admin_token)
    vendors = page.locator("#vendors tr")
    await expect(vendors).to_have_count(2)
    await expect(page.locator('#vendors tr[data-vendor="fal"]')).to_contain_text("/ 8")
    await expect(page.locator('#vendors tr[data-vendor="fal"] mark')).to_have_text("closed")
    await expect(page.locator('#vendors tr[data-vendor="fal"] [data-field="wasted"]')).to_have_text(
        "0"
    )
    await expect(page.locator("#accounts tr")).to_have_count(1)
    await expect(page.locator("#accounts tr")).to_contain_text("1 (100000 credits)")
    await expect(page.get_by_role("list").get_by_text("jobline / jobs and credits")).to_be_visible()

    row = page.locator(f'#dead-letters tr[data-job-id="{job["id"]}"]')
    await expect(row).to_contain_text("rejected")
    await console.screenshot(page, "operator")
    await row.get_by_role("button", name=f"Redrive job {job['id']}").click()
    outcome = row.get_by_role("status")
    await expect(outcome).to_contain_text("redriven as job_")
    new_id = (await outcome.text_content() or "").split()[2]
    assert (await tb.client.wait(new_id))["status"] == "completed"
    status, letters = await tb.client.request("GET", "/v1/admin/dead-letters", admin=True)
    assert (status, letters["dead_letters"]) == (200, [])  # nothing left waiting
    assert check_invariants(tb.config.storage.database) == []


async def test_docs_renders_every_operation_of_the_openapi_document(console: Console) -> None:
    status, document = await console.tb.client.request("GET", "/openapi.json")
    assert status == 200
    document = json.loads(document) if isinstance(document, bytes) else document
    operations = sum(
        1
        for ops in document["paths"].values()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    )
    page = await console.page("/docs")
    blocks = page.locator(".opblock")
    await expect(blocks).to_have_count(operations, timeout=LIVE)
    await expect(page.locator(".opblock-summary-path", has_text="/v1/events")).to_be_visible()
    await console.screenshot(page, "docs")


async def test_the_studio_is_usable_on_a_phone_and_by_keyboard(console: Console) -> None:
    phone = {"width": 390, "height": 844}
    page = await console.page("/console/studio", viewport=phone, is_mobile=True, has_touch=True)
    await page.keyboard.press("Tab")  # the skip link first
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.get_by_label("API key").focus()
    await page.keyboard.type(console.tb.client.api_key)
    await page.keyboard.press("Enter")
    await page.locator("#app").wait_for(state="visible")
    await page.get_by_label("Prompt").focus()
    await page.keyboard.type("typed on a phone")
    await page.get_by_role("button", name="Generate").focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("status")).to_have_text("completed", timeout=LIVE)
    overflow = await page.evaluate(
        "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a phone"
    await console.screenshot(page, "studio-phone")


def merge(patch: dict[str, Any]) -> Any:
    return merge_profile(slow_profile(0.2), patch)
