"""Webhooks from the fakes: signed the Standard Webhooks way, misbehaving at their rates."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from runtime.errors import WebhookSignatureInvalid, WebhookTimestampStale
from runtime.webhooks import verify
from tests.integration.conftest import (
    FAKE_SECRET,
    StartFake,
    WebhookSink,
    assert_rate,
    auth,
    eventually,
)
from vendors_fake import FakeVendor, FaultProfile, Latency, WebhookFaults, preset


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


async def test_webhook_faults_happen_at_their_rates_and_look_right(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    faults = WebhookFaults(
        lost=0.1,
        duplicated=0.2,
        delayed=0.2,
        delay=Latency(kind="fixed", seconds=0.2),
        bad_signature=0.15,
        stale=0.1,
    )
    fake = await start_fake("fal", FaultProfile(webhooks=faults), seed=11)
    n = 300
    gate = asyncio.Semaphore(16)

    async def submit(i: int) -> None:
        async with (
            gate,
            http.post(
                f"{fake.url}/fal-ai/fast-sdxl?fal_webhook={webhook_sink.url}",
                json={"prompt": str(i)},
                headers=auth("fal"),
            ) as response,
        ):
            assert response.status == 200

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
    by_task: dict[str, list[Any]] = defaultdict(list)
    for hook in webhook_sink.received:
        by_task[hook.headers["X-Fal-Webhook-Request-Id"]].append(hook)
    reference = Webhook(FAKE_SECRET)
    outcomes: Counter[str] = Counter()
    for task in fake.tasks.values():
        fate = task.webhook_fates["completed"]
        hooks = by_task.get(task.id, [])
        assert len(hooks) == (0 if fate.lost else 2 if fate.duplicated else 1)
        if len(hooks) == 2:
            assert hooks[0].headers["webhook-id"] == hooks[1].headers["webhook-id"]
            assert hooks[0].body == hooks[1].body
        for hook in hooks:
            assert task.completed_at is not None
            if fate.delay:
                assert hook.at - task.completed_at >= 0.19
            try:
                verify(FAKE_SECRET, hook.headers, hook.body, now=hook.at)
                outcome = "valid"
                reference.verify(hook.body, hook.headers)
            except WebhookSignatureInvalid:
                outcome = "forged"
                assert fate.bad_signature
            except WebhookTimestampStale:
                outcome = "stale"
                assert fate.stale and not fate.bad_signature
            if outcome == "valid":
                assert not (fate.bad_signature or fate.stale)
            else:
                with pytest.raises(WebhookVerificationError):
                    reference.verify(hook.body, hook.headers)
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
    verdicts: Counter[str] = Counter()
    for hook in webhook_sink.received:
        try:
            verify(FAKE_SECRET, hook.headers, hook.body, now=hook.at)
            verdicts["valid"] += 1
        except WebhookSignatureInvalid:
            verdicts["forged"] += 1
        except WebhookTimestampStale:
            verdicts["stale"] += 1
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
