"""The adapters against the fakes' vendor shapes: every output, streamed downloads, data
URIs, three-segment fal apps, payload errors, account refusals, lost answers, fal's key
set, replicate's Cancel-After. Each field case of issue 12 on the vendor side is here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from runtime.config import VendorConfig
from runtime.errors import (
    VendorAuthError,
    VendorBillingError,
    VendorModelGone,
    VendorPermanentError,
    VendorRateLimited,
    VendorSubmitInDoubt,
    WebhookKeysUnavailable,
    WebhookSignatureInvalid,
)
from runtime.policies import ErrorClass, classify
from runtime.vendors import FalClient, TaskState, TaskStatus, VendorClient, make_client
from tests.integration.conftest import FAKE_KEY, FAKE_SECRET, StartFake, WebhookSink
from tests.integration.test_vendor_adapters import vendor_config
from vendors_fake import FakeVendor, FaultProfile, Latency, OutputSpec, expected_file

QUICK = Latency(kind="fixed", seconds=0.02)
MIB = 1024 * 1024
Make = Callable[..., VendorClient]


@pytest.fixture
async def client_for() -> AsyncIterator[Make]:
    made: list[VendorClient] = []

    def make(fake: FakeVendor, **kwargs: Any) -> VendorClient:
        config = {k: kwargs.pop(k) for k in ("submit_timeout", "poll_timeout") if k in kwargs}
        kwargs.setdefault("jwks_min_refetch", 0.0)
        client = make_client(vendor_config(fake, **config), FAKE_KEY, FAKE_SECRET, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def run(
    client: VendorClient, model: str, input: dict[str, Any], webhook_url: str | None = None
) -> tuple[str, TaskStatus]:
    task_id = await client.submit(
        model, input, job_id="job-1", attempt=1, trace_id="t", webhook_url=webhook_url
    )
    deadline = time.monotonic() + 5
    while True:
        status = await client.status(model, task_id, trace_id="t")
        if status.state.ended:
            return task_id, status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.01)


async def read(client: VendorClient, status: TaskStatus, index: int) -> tuple[str | None, bytes]:
    async with client.download(status.outputs[index], trace_id="t") as download:
        data = b"".join([chunk async for chunk in download.chunks])
        return download.content_type, data


# --- outputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "model"), [("fal", "fal-ai/flux/dev"), ("replicate", "acme/flux")]
)
async def test_every_output_of_a_task_is_reported_and_downloads_with_its_type(
    start_fake: StartFake, client_for: Make, shape: str, model: str
) -> None:
    """Field case: only the first output of a prediction was kept (image models return
    several)."""
    profile = FaultProfile(run_time=QUICK, outputs={"*": OutputSpec(kind="image", count=3)})
    fake = await start_fake(shape, profile)
    client = client_for(fake)
    _, status = await run(client, model, {"prompt": "p"})
    files = [o for o in status.outputs if o.is_file]
    assert len(files) == 3
    for i in range(3):
        content_type, data = await read(client, status, i)
        assert content_type == "image/png" and data == expected_file({"prompt": "p"}, "image", i)
    if shape == "fal":  # the rest of fal's result (seed, timings) is kept as JSON too
        assert [o.kind for o in status.outputs] == ["url", "url", "url", "json"]
        assert [o.key for o in files] == ["images[0]", "images[1]", "images[2]"]
    assert fake.snapshot()["tasks"]["delivered"] == 1


async def test_a_60_mib_video_streams_with_its_content_type(
    start_fake: StartFake, client_for: Make
) -> None:
    """Field case: a 60 MiB mp4 failed after the vendor succeeded (a fixed 50 MiB cap), and
    smaller mp4s were stored as image/png: the download streams, says its type, and any
    cap is the caller's."""
    size = {"kind": "fixed", "seconds": 60 * MIB}
    profile = FaultProfile(run_time=QUICK, outputs={"*video*": OutputSpec(kind="video", size=size)})
    fake = await start_fake("replicate", profile)
    client = client_for(fake)
    _, status = await run(client, "minimax/video-01", {"prompt": "p"})
    (video,) = status.outputs
    received = 0
    async with client.download(video, trace_id="t", max_bytes=64 * MIB) as download:
        assert (download.content_type, download.size) == ("video/mp4", 60 * MIB)
        async for chunk in download.chunks:
            received += len(chunk)
    assert received == 60 * MIB
    with pytest.raises(VendorPermanentError, match="larger than"):
        async with client.download(video, trace_id="t", max_bytes=10 * MIB):
            pass


async def test_data_uris_are_decoded_without_a_request(
    start_fake: StartFake, client_for: Make
) -> None:
    """Field case: an output given as a data: URI was 5 billed runs, then a failover."""
    fake = await start_fake("fal", FaultProfile(run_time=QUICK))
    client = client_for(fake)
    _, status = await run(client, "fal-ai/flux/schnell", {"prompt": "p", "sync_mode": True})
    assert status.outputs[0].kind == "data" and status.outputs[0].content_type == "image/png"
    content_type, data = await read(client, status, 0)
    expected = expected_file({"prompt": "p", "sync_mode": True})
    assert (content_type, data) == ("image/png", expected)
    assert (
        await client.fetch_output(status.outputs[0].value, trace_id="t") == expected
    )  # the compat path
    assert "files.get" not in fake.snapshot()["requests"]


async def test_json_and_text_outputs_are_outputs(start_fake: StartFake, client_for: Make) -> None:
    outputs = {"*": OutputSpec(kind="json"), "meta/*": OutputSpec(kind="text")}
    fake = await start_fake("replicate", FaultProfile(run_time=QUICK, outputs=outputs))
    client = client_for(fake)
    _, status = await run(client, "acme/tagger", {"prompt": "p"})
    (only,) = status.outputs
    assert (only.kind, only.content_type) == ("json", "application/json")
    _, status = await run(client, "meta/llama", {"prompt": "p"})
    content_type, data = await read(client, status, 0)
    assert content_type == "text/plain; charset=utf-8" and data.startswith(b"A fake answer")


# --- fal: apps, URLs, payload errors, keys ------------------------------------------------


@pytest.mark.parametrize("model", ["workflows/acme/upscale-flow", "comfy/acme/graph/fast"])
async def test_three_segment_apps_and_urls_after_a_restart(
    start_fake: StartFake, client_for: Make, model: str
) -> None:
    """Field case: a workflows/ app polled a URL built from two segments: 404, three
    submits, a failed job. The client follows the URLs fal returned, and a client that
    only knows the request id (a restart) builds them as fal-client does."""
    fake = await start_fake("fal", FaultProfile(run_time=QUICK))
    task_id, status = await run(client_for(fake), model, {"prompt": "p"})
    assert status.state is TaskState.SUCCEEDED and status.outputs
    restarted = client_for(fake)
    assert (await restarted.status(model, task_id, trace_id="t")).outputs == status.outputs
    await restarted.cancel(model, task_id, trace_id="t")  # already ended: fine
    stats = fake.snapshot()
    assert stats["tasks"]["created"] == 1
    for route, codes in stats["requests"].items():
        assert "404" not in codes, (route, codes)


async def test_a_payload_error_webhook_is_a_success_read_from_the_response_url(
    start_fake: StartFake, client_for: Make, webhook_sink: WebhookSink
) -> None:
    """Field case: a fal webhook with status OK, payload null and payload_error: the task
    was re-run 5 times, then the job failed and was refunded."""
    fake = await start_fake("fal", FaultProfile(run_time=QUICK, payload_error=1.0))
    client = client_for(fake)
    task_id = await client.submit(
        "fal-ai/flux/dev",
        {"p": 1},
        job_id="j",
        attempt=1,
        trace_id="t",
        webhook_url=webhook_sink.url,
    )
    (hook,) = await webhook_sink.wait_for(1)
    assert hook.json()["payload"] is None
    event = await client.parse_webhook(hook.headers, hook.body, now=time.time(), tolerance=300)
    assert event.status == TaskStatus(TaskState.SUCCEEDED, result_pending=True)
    status = await client.status("fal-ai/flux/dev", task_id, trace_id="t")
    assert status.state is TaskState.SUCCEEDED and status.outputs[0].kind == "url"


async def test_webhook_keys_are_fetched_again_when_fal_rotates_them(
    start_fake: StartFake, client_for: Make, webhook_sink: WebhookSink
) -> None:
    """Field case: real fal webhooks (ED25519, keys in a JWKS document) were all rejected
    as forged. Keys are fetched once, cached, fetched again for a signature no cached key
    made (a rotation), and a forger's key is refused after that one fetch."""
    fake = await start_fake("fal", FaultProfile(run_time=QUICK))
    client = client_for(fake, jwks_min_refetch=0.0)
    assert isinstance(client, FalClient)

    async def deliver(n: int) -> Any:
        await client.submit(
            "fal-ai/flux/dev",
            {"n": n},
            job_id="j",
            attempt=n,
            trace_id="t",
            webhook_url=webhook_sink.url,
        )
        hook = (await webhook_sink.wait_for(n))[-1]
        return await client.parse_webhook(hook.headers, hook.body, now=time.time(), tolerance=300)

    await deliver(1)
    await deliver(2)
    assert client.keys.fetches == 1  # cached
    fake.rotate_key(keep_old=False)
    assert (await deliver(3)).status.state is TaskState.SUCCEEDED
    assert client.keys.fetches == 2
    fake.update_profile({"webhooks": {"bad_signature": 1.0}})
    with pytest.raises(WebhookSignatureInvalid):
        await deliver(4)
    assert client.keys.fetches == 3  # one more look, then refused

    limited = client_for(fake, jwks_min_refetch=3600.0)
    assert isinstance(limited, FalClient)
    hook = webhook_sink.received[-1]
    for _ in range(5):  # a stream of forgeries is not a stream of fetches
        with pytest.raises(WebhookSignatureInvalid):
            await limited.parse_webhook(hook.headers, hook.body, now=time.time(), tolerance=300)
    assert limited.keys.fetches == 1
    assert fake.snapshot()["requests"]["jwks"] == {"200": 4}


async def test_an_unreachable_key_set_refuses_for_now(
    start_fake: StartFake, client_for: Make, webhook_sink: WebhookSink
) -> None:
    fake = await start_fake("fal", FaultProfile(run_time=QUICK, jwks={"server_error": 1.0}))
    client = client_for(fake)
    await client.submit(
        "fal-ai/flux/dev", {}, job_id="j", attempt=1, trace_id="t", webhook_url=webhook_sink.url
    )
    (hook,) = await webhook_sink.wait_for(1)
    with pytest.raises(WebhookKeysUnavailable):
        await client.parse_webhook(hook.headers, hook.body, now=time.time(), tolerance=300)
    fake.update_profile({"jwks": {"server_error": 0.0}})
    event = await client.parse_webhook(hook.headers, hook.body, now=time.time(), tolerance=300)
    assert event.status.state is TaskState.SUCCEEDED


# --- account refusals, lost answers, Retry-After --------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "status", "error"),
    [
        ("fal", 403, VendorBillingError),
        ("fal", 401, VendorAuthError),
        ("fal", 404, VendorModelGone),
        ("replicate", 402, VendorBillingError),
        ("replicate", 404, VendorModelGone),
        ("replicate", 403, VendorAuthError),
    ],
)
async def test_account_refusals_are_vendor_wide(
    start_fake: StartFake, client_for: Make, shape: str, status: int, error: type[Exception]
) -> None:
    """Field case: fal's 403 "User is locked. Reason: Exhausted balance" failed 12 of 12
    jobs instead of failing them over."""
    fake = await start_fake(shape, FaultProfile(refusal={"status": status}))
    model = "fal-ai/flux/dev" if shape == "fal" else "acme/painter"
    with pytest.raises(error) as caught:
        await client_for(fake).submit(
            model, {}, job_id="j", attempt=1, trace_id="t", webhook_url=None
        )
    assert classify(caught.value) is ErrorClass.VENDOR_WIDE


@pytest.mark.parametrize(
    ("kind", "says"),
    [("hang", "no answer"), ("server_error", "HTTP 5"), ("cut_off", "may exist")],
)
async def test_a_lost_answer_is_a_transient_error_while_the_task_runs(
    start_fake: StartFake, client_for: Make, kind: str, says: str
) -> None:
    """The vendor created the task, but its answer was lost: the client cannot know the
    task id, and says the submit is in doubt; the fake shows the task ran."""
    profile = FaultProfile(run_time=QUICK, lost_answers={kind: 1.0}, hang_for=1.0)
    fake = await start_fake("fal", profile)
    with pytest.raises(VendorSubmitInDoubt, match=says):
        await client_for(fake, submit_timeout=0.3).submit(
            "fal-ai/flux/dev", {}, job_id="job-9", attempt=3, trace_id="t", webhook_url=None
        )
    stats = fake.snapshot()
    assert stats["tasks"]["created"] == 1 and stats["attempts"] == {"job-9#3": 1}


async def test_retry_after_infinity_is_no_hint() -> None:
    """Field case 7: a 429 with ``Retry-After: inf`` crashed the attempt."""

    async def throttled(request: web.Request) -> web.Response:
        return web.json_response(
            {"detail": "slow down"}, status=429, headers={"Retry-After": "inf"}
        )

    app = web.Application()
    app.router.add_post("/{tail:.*}", throttled)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    config = VendorConfig.model_validate(
        {
            "name": "x",
            "api": "fal",
            "base_url": f"http://127.0.0.1:{runner.addresses[0][1]}",
            "api_key_env": "K",
            "concurrency": 1,
        }
    )
    client = make_client(config, "k")
    try:
        with pytest.raises(VendorRateLimited) as caught:
            await client.submit(
                "fal-ai/x", {}, job_id="j", attempt=1, trace_id="t", webhook_url=None
            )
        assert caught.value.retry_after is None  # no number: no hint, the backoff decides
    finally:
        await client.close()
        await runner.cleanup()


# --- replicate: starting, Cancel-After -----------------------------------------------------------


async def test_cancel_after_is_sent_per_submit(start_fake: StartFake, client_for: Make) -> None:
    """A cold boot longer than the submit's ``cancel_after``: replicate aborts it (not billed)."""
    profile = FaultProfile(cold_start=1.0, cold_start_time=Latency(kind="fixed", seconds=30))
    fake = await start_fake("replicate", profile)
    client = client_for(fake)
    task_id = await client.submit(
        "acme/video", {}, job_id="j", attempt=1, trace_id="t", webhook_url=None, cancel_after=0.2
    )
    assert (await client.status("acme/video", task_id, trace_id="t")).state is TaskState.PENDING
    await asyncio.sleep(1.2)  # Cancel-After is whole seconds: 1s
    status = await client.status("acme/video", task_id, trace_id="t")
    assert status.state is TaskState.FAILED and "aborted" in (status.error or "")
    assert fake.snapshot()["tasks"]["billable"] == 0


# --- replicate: finding the task of a submit in doubt -------------------------------------------


async def test_replicate_finds_the_task_of_a_lost_answer_by_its_webhook_url(
    start_fake: StartFake, client_for: Make
) -> None:
    """Field case 4: the task was created, its answer lost. The prediction list names
    it by the webhook URL the submit gave (job and attempt); other attempts do not match."""
    fake = await start_fake("replicate", FaultProfile(run_time=QUICK, hang_for=1.0))
    client = client_for(fake, submit_timeout=0.3)
    hook = "http://127.0.0.1:1/v1/webhooks/replicate?jobline_job_id=job-7&jobline_attempt="
    since = time.time()
    await client.submit(
        "acme/m", {}, job_id="job-7", attempt=1, trace_id="t", webhook_url=hook + "1"
    )
    fake.update_profile({"lost_answers": {"server_error": 1.0}})
    with pytest.raises(VendorSubmitInDoubt):
        await client.submit(
            "acme/m", {}, job_id="job-7", attempt=2, trace_id="t", webhook_url=hook + "2"
        )
    fake.update_profile({"lost_answers": {"server_error": 0.0}})
    for i in range(150):  # more than one page of others, newer than the lost one
        await client.submit("acme/m", {}, job_id=f"o{i}", attempt=1, trace_id="t", webhook_url=None)
    assert client.can_find_tasks
    found = await client.find_task(
        "acme/m", job_id="job-7", attempt=2, created_after=since, trace_id="t"
    )
    assert found is not None
    assert fake.snapshot()["task_info"][found.task_id]["attempt"] == "2"
    none = await client.find_task(
        "acme/m", job_id="job-7", attempt=3, created_after=since, trace_id="t"
    )
    assert none is None


async def test_replicate_finds_a_lost_task_behind_a_page_larger_than_one_answer(
    start_fake: StartFake, client_for: Make
) -> None:
    """Field case of the simulation (flaky, seed 1, 2400 jobs at 2/s): a page of 100
    predictions, some with data URIs, was larger than one API answer may be (4 MiB), so
    every lookup of a submit in doubt failed; each became an orphan holding its slot for
    the task's whole lifetime, and replicate's 6 slots sat on orphans while 148 jobs
    queued and the vendor ran nothing. Here: inputs of 60 KB (an image sent inline)."""
    fake = await start_fake("replicate", FaultProfile(run_time=QUICK))
    client = client_for(fake)
    hook = "http://127.0.0.1:1/v1/webhooks/replicate?jobline_job_id=job-9&jobline_attempt="
    since = time.time()
    fake.update_profile({"lost_answers": {"server_error": 1.0}})
    with pytest.raises(VendorSubmitInDoubt):
        await client.submit(
            "acme/m", {}, job_id="job-9", attempt=1, trace_id="t", webhook_url=hook + "1"
        )
    fake.update_profile({"lost_answers": {"server_error": 0.0}})
    image = {"image": "data:image/png;base64," + "A" * 60_000}
    for i in range(110):  # the newest page alone: 100 x 60 KB, over 4 MiB
        await client.submit(
            "acme/m", image, job_id=f"o{i}", attempt=1, trace_id="t", webhook_url=None
        )
    found = await client.find_task(
        "acme/m", job_id="job-9", attempt=1, created_after=since, trace_id="t"
    )
    assert found is not None
    assert fake.snapshot()["task_info"][found.task_id]["job_id"] == "job-9"


async def test_fal_lists_no_tasks(start_fake: StartFake, client_for: Make) -> None:
    client = client_for(await start_fake("fal"))
    assert not client.can_find_tasks
    with pytest.raises(VendorPermanentError):
        await client.find_task("fal-ai/x", job_id="j", attempt=1, created_after=0.0, trace_id="t")
