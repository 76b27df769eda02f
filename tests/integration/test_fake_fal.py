"""The fal-shaped fake: its queue API, app ids, outputs, fal-client against it, webhooks."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import (
    FAKE_KEY,
    StartFake,
    WebhookSink,
    assert_rate,
    auth,
    eventually,
    fal_signature_valid,
)
from vendors_fake import FaultProfile, Latency, OutputSpec, expected_file, expected_png

MODEL = "fal-ai/flux/dev"
FAST = Latency(kind="fixed", seconds=0.02)


async def submit(
    http: aiohttp.ClientSession, url: str, body: Any, query: str = "", model: str = MODEL
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/{model}{query}", json=body, headers=auth("fal")) as response:
        return response.status, await response.json()


async def fetch(http: aiohttp.ClientSession, url: str, method: str = "GET") -> tuple[int, Any]:
    async with http.request(method, url, headers=auth("fal")) as response:
        return response.status, await response.json()


async def finished(http: aiohttp.ClientSession, request: dict[str, Any]) -> Any:
    async def done() -> bool:
        return (await fetch(http, request["status_url"]))[0] == 200

    deadline = time.monotonic() + 5
    while not await done():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    return await fetch(http, request["response_url"])


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
    status, body = await fetch(http, first["status_url"])
    assert (status, body["status"], body["metrics"]) == (200, "COMPLETED", {"inference_time": 0.2})
    assert "error" not in body
    # fal's URLs name the app only: the endpoint's path added is not the request's URL
    wrong = f"{fake.url}/{MODEL}/requests/{first['request_id']}/status"
    assert (await fetch(http, wrong))[0] == 404
    status, result = await fetch(http, first["response_url"])
    assert status == 200
    (image,) = result["images"]
    assert (image["content_type"], image["file_name"]) == ("image/png", "image-0.png")
    async with http.get(image["url"]) as response:
        data = await response.read()
        assert data == expected_png({"prompt": "p0"}) and image["file_size"] == len(data)


@pytest.mark.parametrize(
    ("model", "app"),
    [
        ("workflows/acme/upscale-flow", "workflows/acme/upscale-flow"),
        ("comfy/acme/sdxl-graph/fast", "comfy/acme/sdxl-graph"),
        ("fal-ai/flux", "fal-ai/flux"),
    ],
)
async def test_namespaced_apps_have_three_segments(
    start_fake: StartFake, http: aiohttp.ClientSession, model: str, app: str
) -> None:
    fake = await start_fake("fal", FaultProfile(run_time=FAST))
    status, request = await submit(http, fake.url, {"prompt": "x"}, model=model)
    assert status == 200
    assert request["status_url"] == f"{fake.url}/{app}/requests/{request['request_id']}/status"
    status, _ = await finished(http, request)
    assert status == 200
    two = "/".join(model.split("/")[:2])
    if two != app:  # a client that assumes two segments polls a request that is not there
        guessed = f"{fake.url}/{two}/requests/{request['request_id']}/status"
        assert (await fetch(http, guessed))[0] == 404


async def test_incomplete_app_ids_are_not_found(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("fal")
    for model in ("workflows/acme", "lonely"):
        status, body = await submit(http, fake.url, {}, model=model)
        assert status == 404 and "not found" in body["detail"]
    assert fake.snapshot()["tasks"]["created"] == 0


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
                "Authentication is required to access this application.",
            )
    async with http.post(f"{fake.url}/{MODEL}", data=b"[1]", headers=auth("fal")) as r:
        assert r.status == 422


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        (OutputSpec(kind="image", count=3), "images"),
        (OutputSpec(kind="video", size={"kind": "fixed", "seconds": 5000}), "video"),
        (OutputSpec(kind="audio", size={"kind": "fixed", "seconds": 3000}), "audio"),
        (OutputSpec(kind="video", key="model_mesh"), "model_mesh"),
    ],
    ids=["images", "video", "audio", "other-key"],
)
async def test_outputs_live_under_model_specific_keys(
    start_fake: StartFake, http: aiohttp.ClientSession, spec: OutputSpec, key: str
) -> None:
    fake = await start_fake("fal", FaultProfile(run_time=FAST, outputs={"*": spec}))
    _, request = await submit(http, fake.url, {"prompt": "p"})
    status, result = await finished(http, request)
    assert status == 200
    files = result[key] if isinstance(result[key], list) else [result[key]]
    assert len(files) == spec.count
    for i, file in enumerate(files):
        async with http.get(file["url"]) as response:
            data = await response.read()
            assert response.content_type == file["content_type"]
        assert data == expected_file({"prompt": "p"}, spec.kind, i, file["file_size"])
        assert len(data) == file["file_size"]
    assert fake.snapshot()["tasks"]["delivered"] == 1


async def test_json_and_text_results_have_no_files(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    outputs = {"*": OutputSpec(kind="json"), "fal-ai/any-llm": OutputSpec(kind="text")}
    fake = await start_fake("fal", FaultProfile(run_time=FAST, outputs=outputs))
    _, request = await submit(http, fake.url, {"prompt": "p"})
    _, result = await finished(http, request)
    assert set(result) == {"answer", "prompt", "scores"}
    _, request = await submit(http, fake.url, {"prompt": "p"}, model="fal-ai/any-llm")
    _, result = await finished(http, request)
    assert result["output"].startswith("A fake answer") and result["partial"] is False
    assert fake.snapshot()["tasks"]["delivered"] == 2  # the result read is the delivery


async def test_sync_mode_answers_data_uris(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("fal", FaultProfile(run_time=FAST))
    _, request = await submit(http, fake.url, {"prompt": "p", "sync_mode": True})
    _, result = await finished(http, request)
    (image,) = result["images"]
    head, _, data = image["url"].partition(",")
    assert head == "data:image/png;base64"
    assert base64.b64decode(data) == expected_png({"prompt": "p", "sync_mode": True})


async def test_webhooks_are_signed_with_ed25519_and_a_published_key_set(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    fake = await start_fake("fal", FaultProfile(failure=0.5, run_time=FAST), seed=1)
    async with http.get(f"{fake.url}/.well-known/jwks.json") as response:
        jwks = await response.json()
    (key,) = jwks["keys"]
    assert (key["kty"], key["crv"], key["alg"]) == ("OKP", "Ed25519", "EdDSA")
    query = f"?fal_webhook={webhook_sink.url}%3Fjobline_job_id%3Dj1%26jobline_attempt%3D2"
    ids = [
        (await submit(http, fake.url, {"prompt": str(i)}, query))[1]["request_id"]
        for i in range(10)
    ]
    received = await webhook_sink.wait_for(10)
    by_id = {}
    for hook in received:
        assert fal_signature_valid(jwks, hook.headers, hook.body, now=hook.at)
        assert not fal_signature_valid(jwks, hook.headers, hook.body + b" ", now=hook.at)
        payload = hook.json()
        assert hook.headers["X-Fal-Webhook-Request-Id"] == payload["request_id"]
        assert hook.headers["X-Fal-Webhook-User-Id"] == "fake-user-fal"
        assert "webhook-signature" not in {k.lower() for k in hook.headers}
        by_id[payload["request_id"]] = payload
    assert sorted(by_id) == sorted(ids)
    assert {p["status"] for p in by_id.values()} == {"OK", "ERROR"}
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


async def test_forged_stale_and_rotated_keys(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    fake = await start_fake("fal", FaultProfile(run_time=FAST))

    async def keys() -> dict[str, Any]:
        async with http.get(fake.jwks_url) as response:
            result: dict[str, Any] = await response.json()
            return result

    before = await keys()
    query = f"?fal_webhook={webhook_sink.url}"
    patches: list[dict[str, Any]] = [
        {},
        {"bad_signature": 1.0},
        {"bad_signature": 0.0, "stale": 1.0, "stale_by": 900},
        {"stale": 0.0},
    ]
    for i, patch in enumerate(patches):  # one at a time: a webhook is signed as it leaves
        fake.update_profile({"webhooks": patch})
        if i == 3:
            async with http.post(f"{fake.url}/_control/rotate-key", json={}) as r:
                assert (await r.json())["kid"] == "fal-key-1"
        await submit(http, fake.url, {"prompt": str(i)}, query)
        await webhook_sink.wait_for(i + 1)
    hooks = webhook_sink.received
    verdict = [fal_signature_valid(before, h.headers, h.body, now=h.at) for h in hooks]
    assert verdict == [True, False, False, False]  # genuine, forged, stale, unknown key
    after = await keys()
    assert len(after["keys"]) == 2
    assert fal_signature_valid(after, hooks[3].headers, hooks[3].body, now=hooks[3].at)
    assert not fal_signature_valid(after, hooks[1].headers, hooks[1].body, now=hooks[1].at)


async def test_payload_errors_leave_the_result_at_the_response_url(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    fake = await start_fake("fal", FaultProfile(run_time=FAST, payload_error=0.3), seed=4)
    n = 60
    query = f"?fal_webhook={webhook_sink.url}"
    requests = [(await submit(http, fake.url, {"i": i}, query))[1] for i in range(n)]
    hooks = await webhook_sink.wait_for(n)
    without = [h.json() for h in hooks if h.json()["payload"] is None]
    assert_rate(len(without), n, 0.3)
    assert fake.snapshot()["webhooks"]["payload_errors"] == len(without)
    by_id = {r["request_id"]: r for r in requests}
    for hook in without:
        assert hook["status"] == "OK" and hook["payload_error"]
        status, result = await fetch(http, by_id[hook["request_id"]]["response_url"])
        assert status == 200 and result["images"]


async def test_failed_deliveries_are_retried_with_backoff(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    profile = FaultProfile(
        run_time=FAST, webhooks={"retries": 3, "retry_backoff": 0.05, "retry_backoff_cap": 0.1}
    )
    fake = await start_fake("fal", profile)
    webhook_sink.answer_status = 503
    await submit(http, fake.url, {}, f"?fal_webhook={webhook_sink.url}")
    hooks = await webhook_sink.wait_for(4)
    await asyncio.sleep(0.3)
    assert len(webhook_sink.received) == 4
    gaps = [b.at - a.at for a, b in itertools.pairwise(hooks)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.095
    stamps = [int(h.headers["X-Fal-Webhook-Timestamp"]) for h in hooks]
    assert all(abs(stamp - h.at) < 2 for stamp, h in zip(stamps, hooks, strict=True))
    stats = fake.snapshot()["webhooks"]
    assert (stats["sent"], stats["failed"], stats["retried"], stats["delivered"]) == (4, 4, 3, 0)


async def test_the_fal_client_works_against_the_fake(
    start_fake: StartFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fal-client has no base-URL option: its queue URL is the module constant
    ``QUEUE_URL_FORMAT = f"https://{FAL_QUEUE_RUN_HOST}/"`` (https hard-coded, host read from
    the environment at import). Pointing that constant at the fake is enough: every later
    request follows the status/response/cancel URLs the fake returns, or builds them the
    way fal does (``AsyncClient.status(app, request_id)``)."""
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

    flow = "workflows/acme/upscale-flow"
    handle = await client.submit(flow, {"prompt": "a flow", "sync_mode": True})
    result = await handle.get(interval=0.02)
    assert result["images"][0]["url"].startswith("data:image/png;base64,")
    assert isinstance(await client.status(flow, handle.request_id), fal_client.Completed)

    fake.set_profile(FaultProfile(run_time=Latency(kind="fixed", seconds=5)))
    slow = await client.submit(MODEL, {"prompt": "slow"})
    assert isinstance(await slow.status(), fal_client.Queued | fal_client.InProgress)
    await slow.cancel()
    assert fake.snapshot()["tasks"]["canceled"] == 1
