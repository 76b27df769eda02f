"""The fal-shaped fake: its queue API, fal-client against it, and its webhooks."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook

from tests.integration.conftest import (
    FAKE_KEY,
    FAKE_SECRET,
    StartFake,
    WebhookSink,
    auth,
    eventually,
)
from vendors_fake import FaultProfile, Latency, expected_png

MODEL = "fal-ai/flux/dev"


async def submit(
    http: aiohttp.ClientSession, url: str, body: Any, query: str = ""
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/{MODEL}{query}", json=body, headers=auth("fal")) as response:
        return response.status, await response.json()


async def fetch(http: aiohttp.ClientSession, url: str, method: str = "GET") -> tuple[int, Any]:
    async with http.request(method, url, headers=auth("fal")) as response:
        return response.status, await response.json()


async def test_submit_status_result(start_fake: StartFake, http: aiohttp.ClientSession) -> None:
    profile = FaultProfile(
        queue_delay=Latency(kind="fixed", seconds=0.2), run_time=Latency(kind="fixed", seconds=0.2)
    )
    fake = await start_fake("fal", profile)
    answers = [(await submit(http, fake.url, {"prompt": f"p{i}"}))[1] for i in range(3)]
    first, _, third = answers
    base = f"{fake.url}/fal-ai/flux/requests/{first['request_id']}"  # the app, like fal
    assert first["status_url"] == f"{base}/status"
    assert first["response_url"] == base
    assert first["cancel_url"] == f"{base}/cancel"
    assert [a["queue_position"] for a in answers] == [0, 1, 2]

    status, body = await fetch(http, third["status_url"])
    assert (status, body["status"], body["queue_position"]) == (202, "IN_QUEUE", 2)
    status, body = await fetch(http, first["response_url"])
    assert (status, body["detail"]) == (400, "Request is still in progress")
    await asyncio.sleep(0.25)
    status, body = await fetch(http, first["status_url"])
    assert (status, body["status"], body["logs"]) == (202, "IN_PROGRESS", None)
    await asyncio.sleep(0.25)
    # the full model id in the path works as well as the app
    status, body = await fetch(http, f"{fake.url}/{MODEL}/requests/{first['request_id']}/status")
    assert (status, body["status"], body["metrics"]) == (200, "COMPLETED", {"inference_time": 0.2})
    assert "error" not in body
    status, result = await fetch(http, first["response_url"])
    assert status == 200
    (image,) = result["images"]
    assert image["content_type"] == "image/png"
    async with http.get(image["url"]) as response:
        assert await response.read() == expected_png({"prompt": "p0"})


async def test_cancel_and_failures(start_fake: StartFake, http: aiohttp.ClientSession) -> None:
    fake = await start_fake("fal", FaultProfile(run_time=Latency(kind="fixed", seconds=5)))
    _, queued = await submit(http, fake.url, {})
    assert (await fetch(http, queued["cancel_url"], "PUT")) == (
        202,
        {"status": "CANCELLATION_REQUESTED"},
    )
    assert (await fetch(http, queued["cancel_url"], "PUT"))[0] == 400
    status, body = await fetch(http, queued["status_url"])
    assert (status, body["status"], body["error_type"]) == (200, "COMPLETED", "request_canceled")
    assert (await fetch(http, queued["response_url"]))[0] == 400

    fake.set_profile(FaultProfile(failure=1.0))
    _, failed = await submit(http, fake.url, {})
    await asyncio.sleep(0.05)
    status, body = await fetch(http, failed["status_url"])
    assert (body["status"], body["error_type"]) == ("COMPLETED", "internal_server_error")
    assert (await fetch(http, failed["response_url"]))[0] == 500

    fake.set_profile(FaultProfile(rejection=1.0))
    _, rejected = await submit(http, fake.url, {})
    await asyncio.sleep(0.05)
    _, body = await fetch(http, rejected["status_url"])
    assert body["error_type"] == "content_policy_violation"
    status, body = await fetch(http, rejected["response_url"])
    assert (status, body["detail"][0]["type"]) == (422, "content_policy_violation")


async def test_a_task_past_the_apps_request_timeout_fails(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("fal", FaultProfile(never_finish=1.0, max_task_time=0.3))
    _, request = await submit(http, fake.url, {})
    await asyncio.sleep(0.1)
    assert (await fetch(http, request["status_url"]))[1]["status"] == "IN_PROGRESS"
    await eventually(lambda: fake.snapshot()["tasks"]["expired"] == 1, timeout=3)
    _, body = await fetch(http, request["status_url"])
    assert (body["status"], body["error_type"]) == ("COMPLETED", "internal_server_error")
    assert fake.snapshot()["tasks"]["in_flight"] == 0


async def test_fal_auth_is_key_not_bearer(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("fal")
    for header in (f"Bearer {FAKE_KEY}", "Key wrong", ""):
        async with http.post(
            f"{fake.url}/{MODEL}", json={}, headers={"Authorization": header}
        ) as r:
            assert (r.status, (await r.json())["detail"]) == (
                401,
                "You did not pass a valid authentication token",
            )
    async with http.post(f"{fake.url}/{MODEL}", data=b"[1]", headers=auth("fal")) as r:
        assert r.status == 422


async def test_webhooks_have_fal_bodies_and_standard_signatures(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    fake = await start_fake("fal", FaultProfile(failure=0.5), seed=1)
    query = f"?fal_webhook={webhook_sink.url}%3Fjobline_job_id%3Dj1%26jobline_attempt%3D2"
    ids = [
        (await submit(http, fake.url, {"prompt": str(i)}, query))[1]["request_id"]
        for i in range(10)
    ]
    received = await webhook_sink.wait_for(10)
    verifier = Webhook(FAKE_SECRET)
    by_id = {}
    for hook in received:
        payload = verifier.verify(hook.body, hook.headers)
        assert hook.headers["X-Fal-Webhook-Request-Id"] == payload["request_id"]
        by_id[payload["request_id"]] = payload
    assert sorted(by_id) == sorted(ids)
    statuses = {p["status"] for p in by_id.values()}
    assert statuses == {"OK", "ERROR"}
    for payload in by_id.values():
        assert payload["gateway_request_id"] == payload["request_id"]
        if payload["status"] == "OK":
            assert payload["error"] is None
            assert payload["payload"]["images"][0]["content_type"] == "image/png"
        else:
            assert payload["error"] == "Invalid status code: 500"
            assert payload["payload"]["detail"]
    stats = fake.snapshot()
    assert stats["attempts"] == {"j1#2": 10}
    assert stats["webhooks"]["delivered"] == 10


async def test_the_fal_client_works_against_the_fake(
    start_fake: StartFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fal-client has no base-URL option: its queue URL is the module constant
    ``QUEUE_URL_FORMAT = f"https://{FAL_QUEUE_RUN_HOST}/"`` (https hard-coded, host read from
    the environment at import). Pointing that constant at the fake is enough: every later
    request follows the status/response/cancel URLs the fake returns."""
    fal_client = pytest.importorskip("fal_client")
    fake = await start_fake("fal", FaultProfile(run_time=Latency(kind="fixed", seconds=0.1)))
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{fake.url}/")
    client = fal_client.AsyncClient(key=FAKE_KEY)

    handle = await client.submit(MODEL, {"prompt": "a red fox"})
    result = await handle.get(interval=0.02)
    async with aiohttp.ClientSession() as http, http.get(result["images"][0]["url"]) as response:
        assert await response.read() == expected_png({"prompt": "a red fox"})
    status = await client.status(MODEL, handle.request_id)
    assert isinstance(status, fal_client.Completed)
    assert (await client.result(MODEL, handle.request_id)) == result

    fake.set_profile(FaultProfile(run_time=Latency(kind="fixed", seconds=5)))
    slow = await client.submit(MODEL, {"prompt": "slow"})
    assert isinstance(await slow.status(), fal_client.Queued | fal_client.InProgress)
    await slow.cancel()
    assert fake.snapshot()["tasks"]["canceled"] == 1
