"""The vendor adapters against the real fake vendors on loopback (no mocks, no Ray).

Each test starts a fake of one API shape on a free port (``start_fake``), points a client
built by ``make_client`` at it, and checks what jobline sees: task states, output bytes,
error classes, webhooks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from runtime.config import VendorConfig
from runtime.errors import (
    VendorAuthError,
    VendorInputRejected,
    VendorModelInvalid,
    VendorPermanentError,
    VendorRateLimited,
    VendorSubmitInDoubt,
    VendorTaskFailed,
    VendorTimeout,
    VendorUnavailable,
    WebhookRejected,
    WebhookSignatureInvalid,
    WebhookTimestampStale,
)
from runtime.vendors import (
    FalClient,
    ReplicateClient,
    TaskState,
    TaskStatus,
    VendorClient,
    WebhookEvent,
    make_client,
)
from runtime.webhooks import signed_headers
from tests.integration.conftest import FAKE_KEY, FAKE_SECRET, StartFake, WebhookSink
from vendors_fake import FakeVendor, FaultProfile, Latency, RouteFaults, WebhookFaults
from vendors_fake.png import expected_png
from vendors_fake.server import REJECTED_ERROR, TRANSIENT_ERROR, Shape

SHAPES: list[Shape] = ["replicate", "fal"]
MODEL = {"replicate": "acme/painter", "fal": "fal-ai/flux/dev"}
INPUT = {"prompt": "a lighthouse at dusk", "seed": 3}
QUICK = Latency(kind="fixed", seconds=0.02)

MakeClient = Callable[..., VendorClient]


def vendor_config(
    fake: FakeVendor, *, submit_timeout: float = 2.0, poll_timeout: float = 2.0
) -> VendorConfig:
    """A vendor config pointing at ``fake`` (for fal: at the key set the fake publishes)."""
    webhooks: dict[str, str] = (
        {"webhook_jwks_url": fake.jwks_url}
        if fake.shape_name == "fal"
        else {"webhook_secret_env": "UNUSED_SECRET_ENV"}
    )
    return VendorConfig.model_validate(
        {
            "name": f"{fake.shape_name}-test",
            "api": fake.shape_name,
            "base_url": fake.url,
            "api_key_env": "UNUSED_KEY_ENV",
            "concurrency": 4,
            "submit_timeout": submit_timeout,
            "poll_timeout": poll_timeout,
            **webhooks,
        }
    )


@pytest.fixture
async def client_for() -> AsyncIterator[MakeClient]:
    """``client_for(fake, key=..., submit_timeout=...)``: a client, closed afterwards."""
    made: list[VendorClient] = []

    def make(fake: FakeVendor, *, key: str = FAKE_KEY, **config: Any) -> VendorClient:
        max_output_bytes = config.pop("max_output_bytes", 50 * 1024 * 1024)
        jwks_min_refetch = config.pop("jwks_min_refetch", 0.0)
        client = make_client(
            vendor_config(fake, **config),
            key,
            FAKE_SECRET,
            max_output_bytes=max_output_bytes,
            jwks_min_refetch=jwks_min_refetch,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def submit(client: VendorClient, shape: Shape, webhook_url: str | None = None) -> str:
    return await client.submit(
        MODEL[shape],
        INPUT,
        job_id="job_1",
        attempt=2,
        trace_id="trace-abc",
        webhook_url=webhook_url,
    )


async def until(
    client: VendorClient, shape: Shape, task_id: str, done: Callable[[TaskStatus], bool]
) -> TaskStatus:
    deadline = time.monotonic() + 5
    while True:
        status = await client.status(MODEL[shape], task_id, trace_id="trace-abc")
        if done(status):
            return status
        assert time.monotonic() < deadline, f"task {task_id} still {status}"
        await asyncio.sleep(0.01)


def ended(status: TaskStatus) -> bool:
    return status.state.ended


# --- the happy path -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_submit_poll_fetch(
    start_fake: StartFake, client_for: MakeClient, shape: Shape
) -> None:
    fake = await start_fake(shape, FaultProfile(queue_delay=QUICK, run_time=QUICK))
    client = client_for(fake)
    assert isinstance(client, ReplicateClient if shape == "replicate" else FalClient)

    task_id = await submit(client, shape)
    status = await until(client, shape, task_id, ended)

    assert status.state is TaskState.SUCCEEDED
    assert status.output_url is not None and status.error is None
    assert await client.fetch_output(status.output_url, trace_id="trace-abc") == expected_png(INPUT)
    info = fake.snapshot()["task_info"][task_id]
    assert (info["model"], info["trace_id"], info["job_id"], info["attempt"]) == (
        MODEL[shape],
        "trace-abc",
        "job_1",
        "2",
    )
    assert fake.snapshot()["trace_id_missing"] == {}  # every request carried the trace id


async def test_replicate_versioned_model_goes_to_predictions(
    start_fake: StartFake, client_for: MakeClient
) -> None:
    fake = await start_fake("replicate", FaultProfile(run_time=QUICK))
    client = client_for(fake)
    task_id = await client.submit(
        "acme/painter:5c7d5dc6", INPUT, job_id="j", attempt=1, trace_id="t", webhook_url=None
    )
    assert fake.tasks[task_id].version == "5c7d5dc6"
    assert fake.snapshot()["requests"]["predictions.create"] == {"201": 1}
    status = await until(client, "replicate", task_id, ended)
    assert status.state is TaskState.SUCCEEDED


@pytest.mark.parametrize("shape", SHAPES)
async def test_queued_and_running_states(
    start_fake: StartFake, client_for: MakeClient, shape: Shape
) -> None:
    fake = await start_fake(
        shape,
        FaultProfile(queue_delay=Latency(kind="fixed", seconds=0.3), run_time=Latency(seconds=0.3)),
    )
    client = client_for(fake)
    await submit(client, shape)
    second = await submit(client, shape)
    status = await client.status(MODEL[shape], second, trace_id="t")
    assert status.state is TaskState.PENDING and not status.state.ended
    assert status.queue_position == (1 if shape == "fal" else None)
    running = await until(client, shape, second, lambda s: s.state is not TaskState.PENDING)
    assert running == TaskStatus(TaskState.RUNNING)


# --- request errors -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_429_is_rate_limited_with_retry_after(
    start_fake: StartFake, client_for: MakeClient, shape: Shape
) -> None:
    fake = await start_fake(shape, FaultProfile(submit=RouteFaults(rate_limited=1, retry_after=7)))
    with pytest.raises(VendorRateLimited) as caught:
        await submit(client_for(fake), shape)
    assert caught.value.retry_after == 7.0
    assert caught.value.vendor == f"{shape}-test"


async def test_concurrency_limit_429_carries_retry_after(
    start_fake: StartFake, client_for: MakeClient
) -> None:
    profile = FaultProfile(never_finish=1, concurrency_limit=1, concurrency_retry_after=2)
    fake = await start_fake("fal", profile)
    client = client_for(fake)
    await submit(client, "fal")
    with pytest.raises(VendorRateLimited) as caught:
        await submit(client, "fal")
    assert caught.value.retry_after == 2.0


@pytest.mark.parametrize("shape", SHAPES)
async def test_5xx_is_unavailable(
    start_fake: StartFake, client_for: MakeClient, shape: Shape
) -> None:
    fake = await start_fake(shape, FaultProfile(run_time=QUICK))
    client = client_for(fake)
    task_id = await submit(client, shape)
    fake.update_profile({"submit": {"server_error": 1}, "status": {"server_error": 1}})
    # A submit's 5xx may come after the task was created: in doubt, not "nothing happened".
    with pytest.raises(VendorSubmitInDoubt, match=r"HTTP 50[023]"):
        await submit(client, shape)
    with pytest.raises(VendorUnavailable):
        await client.status(MODEL[shape], task_id, trace_id="t")


async def test_outage_503_carries_retry_after(
    start_fake: StartFake, client_for: MakeClient
) -> None:
    fake = await start_fake("replicate")
    fake.start_outage(30)
    with pytest.raises(VendorUnavailable) as caught:
        await submit(client_for(fake), "replicate")
    assert caught.value.retry_after is not None and 29 <= caught.value.retry_after <= 30
    assert not isinstance(caught.value, VendorSubmitInDoubt)  # a refusal created nothing


@pytest.mark.parametrize("shape", SHAPES)
async def test_hang_times_out_within_the_configured_timeout(
    start_fake: StartFake, client_for: MakeClient, shape: Shape
) -> None:
    fake = await start_fake(shape, FaultProfile(never_finish=1))
    client = client_for(fake, submit_timeout=0.3, poll_timeout=0.2)
    task_id = await submit(client, shape)
    fake.update_profile({"submit": {"hang": 1}, "status": {"hang": 1}})

    started = time.monotonic()
    with pytest.raises(VendorSubmitInDoubt, match=r"0\.3s"):
        await submit(client, shape)
    assert 0.25 <= time.monotonic() - started < 1.0

    started = time.monotonic()
    with pytest.raises(VendorTimeout, match=r"0\.2s"):
        await client.status(MODEL[shape], task_id, trace_id="t")
    assert 0.15 <= time.monotonic() - started < 1.0


@pytest.mark.parametrize("shape", SHAPES)
async def test_connection_reset_is_unavailable(
    start_fake: StartFake, client_for: MakeClient, shape: Shape
) -> None:
    fake = await start_fake(shape, FaultProfile(submit=RouteFaults(reset=1)))
    with pytest.raises(VendorSubmitInDoubt):  # the request was sent: it may have landed
        await submit(client_for(fake), shape)
    assert fake.snapshot()["faults"]["reset"] >= 1


async def test_connection_refused_is_unavailable(
    start_fake: StartFake, client_for: MakeClient
) -> None:
    fake = await start_fake("fal")
    client = client_for(fake)
    await fake.stop()  # nobody listens on the port any more
    with pytest.raises(VendorUnavailable) as caught:
        await submit(client, "fal")
    assert not isinstance(caught.value, VendorSubmitInDoubt)  # nothing was sent


@pytest.mark.parametrize("shape", SHAPES)
async def test_wrong_key_is_a_vendor_wide_auth_error(
    start_fake: StartFake, client_for: MakeClient, shape: Shape
) -> None:
    fake = await start_fake(shape)
    client = client_for(fake, key="not-the-key")
    with pytest.raises(VendorAuthError, match="401"):
        await submit(client, shape)
    with pytest.raises(VendorAuthError):
        await client.status(MODEL[shape], "some-task", trace_id="t")


async def test_rejected_submit_is_input_rejected() -> None:
    """A submit the vendor refuses (422): a tiny real server, the fakes accept every input."""

    async def refuse(request: web.Request) -> web.Response:
        body = {"title": "Input validation failed", "detail": "prompt: too long", "status": 422}
        return web.json_response(body, status=422)

    app = web.Application()
    app.router.add_post("/v1/models/{owner}/{name}/predictions", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    config = VendorConfig(
        name="strict",
        api="replicate",
        base_url=base_url,
        api_key_env="UNUSED_KEY_ENV",
        webhook_secret_env="UNUSED_SECRET_ENV",
        concurrency=1,
    )
    client = ReplicateClient(config, FAKE_KEY, FAKE_SECRET)
    try:
        with pytest.raises(VendorInputRejected, match="prompt: too long"):
            await submit(client, "replicate")
    finally:
        await client.close()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("shape", "model"),
    [("replicate", "a/b/c"), ("replicate", "../x"), ("fal", "single"), ("fal", "a/../b")],
)
async def test_a_malformed_model_name_is_a_config_error_before_any_request(
    start_fake: StartFake, client_for: MakeClient, shape: Shape, model: str
) -> None:
    fake = await start_fake(shape)
    with pytest.raises(VendorModelInvalid):
        await client_for(fake).submit(
            model, INPUT, job_id="j", attempt=1, trace_id="t", webhook_url=None
        )
    assert fake.snapshot()["requests_total"] == 0


# --- task outcomes --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("profile", "error", "permanent"),
    [
        (FaultProfile(run_time=QUICK, failure=1), TRANSIENT_ERROR, False),
        (FaultProfile(run_time=QUICK, rejection=1), REJECTED_ERROR, True),
    ],
    ids=["transient", "permanent"],
)
async def test_vendor_side_failure_is_a_failed_status(
    start_fake: StartFake,
    client_for: MakeClient,
    shape: Shape,
    profile: FaultProfile,
    error: str,
    permanent: bool,
) -> None:
    fake = await start_fake(shape, profile)
    client = client_for(fake)
    task_id = await submit(client, shape)
    status = await until(client, shape, task_id, ended)
    assert status == TaskStatus(TaskState.FAILED, error=error, permanent=permanent)


@pytest.mark.parametrize("shape", SHAPES)
async def test_cancel(start_fake: StartFake, client_for: MakeClient, shape: Shape) -> None:
    fake = await start_fake(shape, FaultProfile(never_finish=1))
    client = client_for(fake)
    task_id = await submit(client, shape)
    await until(client, shape, task_id, lambda s: s.state is TaskState.RUNNING)

    await client.cancel(MODEL[shape], task_id, trace_id="t")
    assert await client.status(MODEL[shape], task_id, trace_id="t") == TaskStatus(
        TaskState.CANCELED
    )
    await client.cancel(MODEL[shape], task_id, trace_id="t")  # already ended: not an error
    await client.cancel(MODEL[shape], "no-such-task", trace_id="t")  # unknown: nothing to cancel
    assert fake.snapshot()["tasks"]["canceled"] == 1


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_task_the_vendor_does_not_know_failed_transiently(
    start_fake: StartFake, client_for: MakeClient, shape: Shape
) -> None:
    fake = await start_fake(shape)
    status = await client_for(fake).status(MODEL[shape], "no-such-task", trace_id="t")
    assert status.state is TaskState.FAILED and not status.permanent


async def test_output_over_the_size_cap_is_permanent(
    start_fake: StartFake, client_for: MakeClient
) -> None:
    fake = await start_fake("replicate", FaultProfile(run_time=QUICK))
    client = client_for(fake, max_output_bytes=64)
    task_id = await submit(client, "replicate")
    status = await until(client, "replicate", task_id, ended)
    assert status.output_url is not None
    with pytest.raises(VendorPermanentError, match="larger than 64 bytes"):
        await client.fetch_output(status.output_url, trace_id="t")


async def test_output_that_is_gone_is_a_transient_task_failure(
    start_fake: StartFake, client_for: MakeClient
) -> None:
    fake = await start_fake("fal")
    with pytest.raises(VendorTaskFailed, match="404"):
        await client_for(fake).fetch_output(f"{fake.url}/files/nope/output.png", trace_id="t")


async def test_close_is_idempotent_and_the_client_reopens(
    start_fake: StartFake, client_for: MakeClient
) -> None:
    fake = await start_fake("replicate")
    client = client_for(fake)
    await submit(client, "replicate")
    await client.close()
    await client.close()
    await submit(client, "replicate")  # a new session, lazily


# --- webhooks -------------------------------------------------------------------------------


async def delivered(sink: WebhookSink, count: int = 1) -> list[tuple[dict[str, str], bytes]]:
    received = await sink.wait_for(count)
    return [(hook.headers, hook.body) for hook in received[:count]]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "profile",
    [
        FaultProfile(run_time=QUICK),
        FaultProfile(run_time=QUICK, failure=1),
        FaultProfile(run_time=QUICK, rejection=1),
    ],
    ids=["succeeded", "failed", "rejected"],
)
async def test_a_real_webhook_parses_into_the_event_status_would_give(
    start_fake: StartFake,
    client_for: MakeClient,
    webhook_sink: WebhookSink,
    shape: Shape,
    profile: FaultProfile,
) -> None:
    fake = await start_fake(shape, profile)
    client = client_for(fake)
    task_id = await submit(client, shape, webhook_url=webhook_sink.url)
    [(headers, body)] = await delivered(webhook_sink)

    event = await client.parse_webhook(headers, body, now=time.time(), tolerance=300)

    polled = await client.status(MODEL[shape], task_id, trace_id="t")
    webhook_id = headers["webhook-id"] if shape == "replicate" else task_id
    assert event == WebhookEvent(f"{shape}-test", webhook_id, task_id, polled)
    assert event.status.state.ended
    if event.status.state is TaskState.SUCCEEDED:
        assert event.status.output_url is not None
        assert await client.fetch_output(event.status.output_url, trace_id="t") == expected_png(
            INPUT
        )


async def test_a_fal_cancel_webhook_is_canceled(
    start_fake: StartFake, client_for: MakeClient, webhook_sink: WebhookSink
) -> None:
    fake = await start_fake("fal", FaultProfile(never_finish=1))
    client = client_for(fake)
    task_id = await submit(client, "fal", webhook_url=webhook_sink.url)
    await client.cancel(MODEL["fal"], task_id, trace_id="t")
    [(headers, body)] = await delivered(webhook_sink)
    event = await client.parse_webhook(headers, body, now=time.time(), tolerance=300)
    assert (event.task_id, event.status) == (task_id, TaskStatus(TaskState.CANCELED))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("faults", "error"),
    [
        (WebhookFaults(bad_signature=1), WebhookSignatureInvalid),
        (WebhookFaults(stale=1, stale_by=900), WebhookTimestampStale),
    ],
    ids=["forged", "stale"],
)
async def test_forged_and_stale_webhooks_raise(
    start_fake: StartFake,
    client_for: MakeClient,
    webhook_sink: WebhookSink,
    shape: Shape,
    faults: WebhookFaults,
    error: type[WebhookRejected],
) -> None:
    fake = await start_fake(shape, FaultProfile(run_time=QUICK, webhooks=faults))
    client = client_for(fake)
    await submit(client, shape, webhook_url=webhook_sink.url)
    [(headers, body)] = await delivered(webhook_sink)
    with pytest.raises(error):
        await client.parse_webhook(headers, body, now=time.time(), tolerance=300)


@pytest.mark.parametrize("shape", SHAPES)
async def test_tampered_and_unreadable_webhooks_raise(
    start_fake: StartFake, client_for: MakeClient, webhook_sink: WebhookSink, shape: Shape
) -> None:
    fake = await start_fake(shape, FaultProfile(run_time=QUICK))
    client = client_for(fake)
    await submit(client, shape, webhook_url=webhook_sink.url)
    [(headers, body)] = await delivered(webhook_sink)
    now = time.time()

    tampered = body.replace(b"COMPLETED", b"FAILED").replace(b'"OK"', b'"ERROR"')
    tampered = tampered.replace(b"succeeded", b"failed")
    assert tampered != body
    with pytest.raises(WebhookSignatureInvalid):
        await client.parse_webhook(headers, tampered, now=now, tolerance=300)
    with pytest.raises(WebhookTimestampStale):  # an authentic one, replayed later
        await client.parse_webhook(headers, body, now=now + 3600, tolerance=300)

    for junk in (b"not json", b"[1, 2]", json.dumps({"status": "OK"}).encode()):
        if shape == "replicate":
            signed = signed_headers(FAKE_SECRET, "msg_junk", int(now), junk)
        else:  # signed by the fake's own key: authentic, but no fal event
            signed = fake.core.fal_signer.headers("req-junk", int(now), junk)
        with pytest.raises(WebhookRejected) as caught:
            await client.parse_webhook(signed, junk, now=now, tolerance=300)
        assert type(caught.value) is WebhookRejected  # authentic, but not a shape's body
