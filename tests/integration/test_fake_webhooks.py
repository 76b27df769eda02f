"""Webhooks from the fakes: signed as each vendor signs them (replicate: Standard Webhooks,
checked with the official ``standardwebhooks`` library; fal: ED25519, checked as fal's
documentation spells it out), misbehaving at their rates."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.integration.conftest import (
    FAKE_SECRET,
    Received,
    StartFake,
    WebhookSink,
    assert_rate,
    auth,
    eventually,
    fal_signature_valid,
)
from vendors_fake import FakeVendor, FaultProfile, Latency, WebhookFaults, preset
from vendors_fake.server import Shape


def standard_verdict(hook: Received) -> str:
    """valid, forged or stale, by the reference library (which checks the time first)."""
    try:
        Webhook(FAKE_SECRET).verify(hook.body, hook.headers)
    except WebhookVerificationError as exc:
        return "stale" if "timestamp" in str(exc).lower() else "forged"
    return "valid"


def fal_verdict(jwks: dict[str, Any], hook: Received) -> str:
    if fal_signature_valid(jwks, hook.headers, hook.body, now=hook.at):
        return "valid"
    if fal_signature_valid(jwks, hook.headers, hook.body, now=hook.at, tolerance=10**6):
        return "stale"
    return "forged"


async def create(
    http: aiohttp.ClientSession, fake: FakeVendor, webhook: str, **extra: Any
) -> dict[str, Any]:
    body = {"version": "v", "input": {"i": 1}, "webhook": webhook, **extra}
    async with http.post(
        f"{fake.url}/v1/predictions", json=body, headers=auth("replicate")
    ) as response:
        assert response.status == 201
        result: dict[str, Any] = await response.json()
        return result


async def test_every_webhook_verifies_with_the_reference_library(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    profile = FaultProfile(run_time=Latency(kind="fixed", seconds=0.05), failure=0.3)
    fake = await start_fake("replicate", profile)
    ids = [(await create(http, fake, webhook_sink.url))["id"] for _ in range(8)]
    only_final = await create(http, fake, webhook_sink.url, webhook_events_filter=["completed"])
    received = await webhook_sink.wait_for(17)
    await asyncio.sleep(0.1)
    assert len(received) == 17  # start + completed for 8, completed only for one

    reference = Webhook(FAKE_SECRET)
    events: dict[str, list[str]] = defaultdict(list)
    for hook in received:
        prediction = reference.verify(hook.body, hook.headers)
        events[prediction["id"]].append(prediction["status"])
    for task_id in ids:  # in the order they happened
        assert events[task_id][0] == "processing"
        assert events[task_id][1] in ("succeeded", "failed")
    assert events[only_final["id"]] == ["succeeded"] or events[only_final["id"]] == ["failed"]
    assert len({hook.headers["webhook-id"] for hook in received}) == 17
    # a different secret (a forger's) does not verify them
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "Zm9yZ2Vy").verify(received[0].body, received[0].headers)
    stats = fake.snapshot()["webhooks"]
    assert (stats["events"], stats["sent"], stats["delivered"], stats["failed"]) == (17, 17, 17, 0)


@pytest.mark.parametrize("shape", ["replicate", "fal"])
async def test_webhook_faults_happen_at_their_rates_and_look_right(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink, shape: Shape
) -> None:
    faults = WebhookFaults(
        lost=0.1,
        duplicated=0.2,
        delayed=0.2,
        delay=Latency(kind="fixed", seconds=0.2),
        bad_signature=0.15,
        stale=0.1,
    )
    fake = await start_fake(shape, FaultProfile(webhooks=faults), seed=11)
    n = 300
    gate = asyncio.Semaphore(16)
    ids: dict[str, str] = {}

    async def submit(i: int) -> None:
        if shape == "fal":
            url = f"{fake.url}/fal-ai/fast-sdxl?fal_webhook={webhook_sink.url}"
            body: dict[str, Any] = {"prompt": str(i)}
        else:
            url = f"{fake.url}/v1/predictions"
            body = {"version": "v", "input": {"prompt": str(i)}, "webhook": webhook_sink.url}
            body["webhook_events_filter"] = ["completed"]
        async with gate, http.post(url, json=body, headers=auth(shape)) as response:
            assert response.status in (200, 201)
            answer = await response.json()
            ids[answer.get("request_id") or answer["id"]] = str(i)

    await asyncio.gather(*(submit(i) for i in range(n)))
    await eventually(lambda: not fake.pending_webhooks, timeout=10)

    stats = fake.snapshot()["webhooks"]
    assert stats["events"] == n
    for name, rate in (
        ("lost", 0.1),
        ("duplicated", 0.2),
        ("delayed", 0.2),
        ("bad_signature", 0.15),
        ("stale", 0.1),
    ):
        assert_rate(stats["by_fault"][name], n, rate)

    # every delivery matches its drawn fate
    jwks = fake.core.fal_signer.jwks()
    by_task: dict[str, list[Received]] = defaultdict(list)
    for hook in webhook_sink.received:
        data = hook.json()
        by_task[data.get("request_id") or data["id"]].append(hook)
    outcomes: Counter[str] = Counter()
    for task in fake.tasks.values():
        fate = task.fate.webhooks["completed"]
        hooks = by_task.get(task.id, [])
        assert len(hooks) == (0 if fate.lost else 2 if fate.duplicated else 1)
        if len(hooks) == 2:
            assert hooks[0].body == hooks[1].body
        for hook in hooks:
            assert task.completed_at is not None
            if fate.delay:
                assert hook.at - task.completed_at >= 0.19
            outcome = standard_verdict(hook) if shape == "replicate" else fal_verdict(jwks, hook)
            expected = "forged" if fate.bad_signature else "stale" if fate.stale else "valid"
            if shape == "replicate" and fate.bad_signature and fate.stale:
                expected = "stale"  # the reference library checks the time first
            assert outcome == expected, (task.id, fate)
            outcomes[outcome] += 1
    assert outcomes["forged"] > 0 and outcomes["stale"] > 0 and outcomes["valid"] > 0
    assert sum(outcomes.values()) == stats["sent"] == stats["delivered"]


async def test_out_of_order_sends_the_progress_event_after_the_final_one(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    profile = FaultProfile(
        run_time=Latency(kind="fixed", seconds=0.05), webhooks=WebhookFaults(out_of_order=1.0)
    )
    fake = await start_fake("replicate", profile)
    ids = [(await create(http, fake, webhook_sink.url))["id"] for _ in range(3)]
    only_final = await create(http, fake, webhook_sink.url, webhook_events_filter=["completed"])
    received = await webhook_sink.wait_for(8)
    reference = Webhook(FAKE_SECRET)
    sequences: dict[str, list[str]] = defaultdict(list)
    for hook in received:
        prediction = reference.verify(hook.body, hook.headers)
        sequences[prediction["id"]].append(prediction["status"])
    for task_id in [*ids, only_final["id"]]:
        assert sequences[task_id] == ["succeeded", "processing"]
    assert fake.snapshot()["webhooks"]["by_fault"]["out_of_order"] == 4


async def test_the_hostile_preset_forges_replays_and_reorders(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    hostile = preset("hostile")
    quick = hostile.model_copy(
        update={
            "run_time": Latency(kind="fixed", seconds=0.01),
            "queue_delay": Latency(),
            "webhooks": hostile.webhooks.model_copy(
                update={"delay": Latency(kind="fixed", seconds=0.05)}
            ),
        }
    )
    fake = await start_fake("replicate", quick, seed=5)
    for _ in range(60):
        await create(http, fake, webhook_sink.url)
    await eventually(lambda: fake.snapshot()["tasks"]["in_flight"] == 0)
    await eventually(lambda: not fake.pending_webhooks, timeout=10)
    by_fault = fake.snapshot()["webhooks"]["by_fault"]
    assert all(by_fault[name] > 0 for name in by_fault), by_fault
    verdicts = Counter(standard_verdict(hook) for hook in webhook_sink.received)
    assert verdicts["valid"] and verdicts["forged"] and verdicts["stale"]


async def test_failed_deliveries_are_counted_and_retried(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    faults = WebhookFaults(retries=2, retry_backoff=0.01, timeout=1.0)
    fake = await start_fake("replicate", FaultProfile(webhooks=faults))
    webhook_sink.answer_status = 500
    await create(http, fake, webhook_sink.url, webhook_events_filter=["completed"])
    await webhook_sink.wait_for(3)
    await eventually(lambda: fake.snapshot()["webhooks"]["failed"] == 3)
    # nobody listening at all
    await create(http, fake, "http://127.0.0.1:9/nowhere", webhook_events_filter=["completed"])
    await eventually(lambda: fake.snapshot()["webhooks"]["failed"] == 6)
    stats = fake.snapshot()["webhooks"]
    assert (stats["events"], stats["sent"], stats["delivered"]) == (2, 6, 0)
