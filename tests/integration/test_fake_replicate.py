"""The replicate-shaped fake: its API, the official client against it, and what it records."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import zlib
from typing import Any

import aiohttp
import pytest
import replicate
from replicate.exceptions import ReplicateError
from standardwebhooks import Webhook

from tests.integration.conftest import (
    FAKE_KEY,
    FAKE_SECRET,
    StartFake,
    WebhookSink,
    auth,
    eventually,
)
from vendors_fake import FaultProfile, Latency, OutputSpec, Size, expected_file, expected_png

FAST = FaultProfile(
    queue_delay=Latency(kind="fixed", seconds=0.05),
    run_time=Latency(kind="fixed", seconds=0.1),
)


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw RGB) of an 8-bit RGB PNG, checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + payload) & 0xFFFFFFFF == crc
        chunks[kind] = payload
        pos += 12 + length
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2)
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = [raw[y * (1 + 3 * width) : (y + 1) * (1 + 3 * width)] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, b"".join(row[1:] for row in rows)


async def create(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{url}/v1/predictions", json=body, headers={**auth("replicate"), **headers}
    ) as response:
        return response.status, await response.json()


async def get(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url, headers=auth("replicate")) as response:
        assert response.status == 200
        result: dict[str, Any] = await response.json()
        return result


async def test_the_official_client_creates_waits_and_reads_the_output(
    start_fake: StartFake,
) -> None:
    fake = await start_fake("replicate", FAST)
    client = replicate.Client(api_token=FAKE_KEY, base_url=fake.url)
    client.poll_interval = 0.02
    prompt = {"prompt": "a lighthouse at dusk", "seed": 3}

    prediction = await client.predictions.async_create(
        version="black-forest-labs/flux-schnell:5599ed30", input=prompt
    )
    assert prediction.status == "starting"
    assert prediction.model == "black-forest-labs/flux-schnell"
    await prediction.async_wait()
    assert prediction.status == "succeeded"
    assert prediction.error is None
    assert prediction.metrics == {"predict_time": 0.1}
    (url,) = prediction.output  # an image model answers a list of URLs
    response = await client._async_client.get(url)
    assert response.content == expected_png(prompt)

    by_model = await client.models.predictions.async_create(
        model="stability-ai/sdxl", input={"prompt": "x"}
    )
    again = await client.predictions.async_get(by_model.id)
    assert again.model == "stability-ai/sdxl"
    canceled = await client.predictions.async_cancel(by_model.id)
    assert canceled.status == "canceled"


async def test_the_sync_client_and_prefer_wait(start_fake: StartFake) -> None:
    fake = await start_fake("replicate", FAST)

    def run() -> Any:
        client = replicate.Client(api_token=FAKE_KEY, base_url=fake.url)
        # replicate.run sends `Prefer: wait`: the fake answers once the prediction ended.
        return client.run("owner/model", input={"prompt": "sync"}, use_file_output=False)

    output = await asyncio.to_thread(run)
    assert output[0].startswith(f"{fake.url}/files/")


async def test_a_bad_key_is_401_problem_json(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("replicate")
    body = {"version": "v", "input": {}}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Key {FAKE_KEY}"}):
        async with http.post(f"{fake.url}/v1/predictions", json=body, headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["status"] == 401
    client = replicate.Client(api_token="wrong", base_url=fake.url)
    with pytest.raises(ReplicateError) as raised:
        await client.predictions.async_create(version="v", input={})
    assert raised.value.status == 401
    assert fake.snapshot()["tasks"]["created"] == 0


async def test_statuses_follow_the_latency(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    profile = FaultProfile(
        queue_delay=Latency(kind="fixed", seconds=0.2), run_time=Latency(kind="fixed", seconds=0.3)
    )
    fake = await start_fake("replicate", profile)
    start = time.monotonic()
    status, prediction = await create(http, fake.url, {"version": "m/n:v", "input": {"a": 1}})
    assert status == 201
    assert prediction["status"] == "starting"
    assert prediction["urls"]["get"] == f"{fake.url}/v1/predictions/{prediction['id']}"
    seen = []
    while not seen or seen[-1] != "succeeded":
        current = await get(http, prediction["urls"]["get"])
        if not seen or seen[-1] != current["status"]:
            seen.append(current["status"])
            if current["status"] == "processing":
                assert time.monotonic() - start >= 0.2
        await asyncio.sleep(0.02)
    assert seen == ["starting", "processing", "succeeded"]
    assert time.monotonic() - start >= 0.5
    assert current["started_at"] and current["completed_at"]


async def test_failures_carry_an_error_and_rejections_say_so(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("replicate", FaultProfile(failure=1.0))
    _, prediction = await create(http, fake.url, {"version": "v", "input": {}})
    await asyncio.sleep(0.05)
    failed = await get(http, prediction["urls"]["get"])
    assert failed["status"] == "failed"
    assert failed["output"] is None
    assert "retry" in failed["error"]

    fake.set_profile(FaultProfile(rejection=1.0))
    _, prediction = await create(http, fake.url, {"version": "v", "input": {}})
    await asyncio.sleep(0.05)
    rejected = await get(http, prediction["urls"]["get"])
    assert rejected["status"] == "failed"
    assert "(E005)" in rejected["error"]
    tasks = fake.snapshot()["tasks"]
    assert (tasks["failed"], tasks["rejected"], tasks["in_flight"]) == (2, 1, 0)


async def test_cancel_ends_a_task_and_a_never_finishing_one(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("replicate", FaultProfile(never_finish=1.0))
    _, prediction = await create(http, fake.url, {"version": "v", "input": {}})
    await asyncio.sleep(0.1)
    assert (await get(http, prediction["urls"]["get"]))["status"] == "processing"
    assert fake.snapshot()["tasks"]["in_flight"] == 1
    for _ in range(2):  # a second cancel changes nothing
        async with http.post(prediction["urls"]["cancel"], headers=auth("replicate")) as r:
            assert r.status == 200
            assert (await r.json())["status"] == "canceled"
    tasks = fake.snapshot()["tasks"]
    assert (tasks["canceled"], tasks["never_finish"], tasks["in_flight"]) == (1, 1, 0)


async def test_cancel_after_ends_a_prediction_at_its_deadline(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("replicate", FaultProfile(never_finish=1.0))
    body = {"version": "v", "input": {}}
    _, doomed = await create(http, fake.url, body, **{"Cancel-After": "300ms"})
    _, spared = await create(http, fake.url, body, **{"Cancel-After": "1h"})
    await asyncio.sleep(0.1)
    assert (await get(http, doomed["urls"]["get"]))["status"] == "processing"
    await eventually(lambda: fake.snapshot()["tasks"]["expired"] == 1, timeout=3)
    assert (await get(http, doomed["urls"]["get"]))["status"] == "canceled"
    assert (await get(http, spared["urls"]["get"]))["status"] == "processing"
    assert fake.snapshot()["tasks"]["in_flight"] == 1
    for bad in ("soon", "5", "5 m", "-5s", ""):
        status, problem = await create(http, fake.url, body, **{"Cancel-After": bad})
        assert status == 400 and "Cancel-After" in problem["detail"]


async def test_the_output_is_a_png_of_the_input(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("replicate")
    images = {}
    for prompt in ("a cat", "a dog"):
        _, prediction = await create(
            http, fake.url, {"version": "v", "input": {"prompt": prompt}}, Prefer="wait=5"
        )
        assert prediction["status"] == "succeeded"
        async with http.get(prediction["output"][0]) as response:
            assert response.content_type == "image/png"
            images[prompt] = await response.read()
        assert images[prompt] == expected_png({"prompt": prompt})
        width, height, rgb = decode_png(images[prompt])
        assert (width, height, len(rgb)) == (8, 8, 192)
    assert images["a cat"] != images["a dog"]
    assert expected_png({"b": 1, "a": 2}) == expected_png({"a": 2, "b": 1})


async def test_bad_requests(start_fake: StartFake, http: aiohttp.ClientSession) -> None:
    fake = await start_fake("replicate")
    assert (await create(http, fake.url, {"input": {}}))[0] == 422
    assert (await create(http, fake.url, {"version": "v"}))[0] == 422
    bad_filter = {"version": "v", "input": {}, "webhook_events_filter": ["nope"]}
    assert (await create(http, fake.url, bad_filter))[0] == 422
    async with http.get(f"{fake.url}/v1/predictions/nope", headers=auth("replicate")) as r:
        assert r.status == 404
    async with http.post(f"{fake.url}/v1/predictions", data=b"{", headers=auth("replicate")) as r:
        assert r.status == 400


async def test_trace_ids_and_job_references_are_recorded(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("replicate")
    body = {"version": "v", "input": {}}
    _, first = await create(
        http,
        fake.url,
        body,
        **{"X-Jobline-Trace-Id": "t-1", "X-Jobline-Job-Id": "job-1", "X-Jobline-Attempt": "1"},
    )
    hooked = {**body, "webhook": "http://127.0.0.1:9/hook?jobline_job_id=job-2&jobline_attempt=3"}
    _, second = await create(http, fake.url, hooked, **{"X-Jobline-Trace-Id": "t-2"})
    _, third = await create(
        http, fake.url, body, **{"X-Jobline-Job-Id": "job-1", "X-Jobline-Attempt": "1"}
    )
    await get(http, first["urls"]["get"])
    await eventually(lambda: fake.snapshot()["tasks"]["in_flight"] == 0)

    stats = fake.snapshot()
    assert stats["task_ids"] == [first["id"], second["id"], third["id"]]
    info = stats["task_info"]
    assert (info[first["id"]]["trace_id"], info[first["id"]]["job_id"]) == ("t-1", "job-1")
    assert (info[second["id"]]["job_id"], info[second["id"]]["attempt"]) == ("job-2", "3")
    assert info[third["id"]]["trace_id"] is None
    assert stats["attempts"] == {"job-1#1": 2, "job-2#3": 1}
    assert stats["duplicate_attempts"] == ["job-1#1"]
    assert stats["trace_id_missing"] == {"predictions.create": 1, "predictions.get": 1}
    assert stats["requests"]["predictions.create"] == {"201": 3}


# --- outputs, deadlines, webhooks of whole predictions ----------------------------------------


async def test_outputs_are_a_string_a_list_data_uris_json_or_text(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    outputs = {
        "*": OutputSpec(kind="image", count=2),
        "minimax/*": OutputSpec(kind="video", size={"kind": "fixed", "seconds": 4096}),
        "meta/*": OutputSpec(kind="text"),
        "acme/json-*": OutputSpec(kind="json"),
    }
    fake = await start_fake("replicate", FaultProfile(outputs=outputs))

    async def run(model: str, **headers: str) -> Any:
        async with http.post(
            f"{fake.url}/v1/models/{model}/predictions",
            json={"input": {"prompt": "p"}},
            headers={**auth("replicate"), "Prefer": "wait=5", **headers},
        ) as response:
            prediction = await response.json()
            assert prediction["status"] == "succeeded"
            return prediction["output"]

    images = await run("black-forest-labs/flux-schnell")
    assert isinstance(images, list) and len(images) == 2
    assert all(url.startswith(f"{fake.url}/files/") for url in images)
    video = await run("minimax/video-01")
    assert isinstance(video, str) and video.endswith("video.mp4")
    async with http.get(video) as response:
        assert response.content_type == "video/mp4"
        assert await response.read() == expected_file({"prompt": "p"}, "video", 0, 4096)
    tokens = await run("meta/llama")
    assert isinstance(tokens, list) and "".join(tokens).startswith("A fake answer")
    assert set(await run("acme/json-tagger")) == {"answer", "prompt", "scores"}

    fake.update_profile({"data_uri": 1.0})
    inline = await run("black-forest-labs/flux-schnell")
    assert all(uri.startswith("data:image/png;base64,") for uri in inline)
    assert base64.b64decode(inline[1].split(",")[1]) == expected_file({"prompt": "p"}, "image", 1)


async def test_the_official_client_reads_data_uri_outputs(start_fake: StartFake) -> None:
    fake = await start_fake("replicate", FaultProfile(data_uri=1.0, run_time=FAST.run_time))

    def run() -> Any:
        client = replicate.Client(api_token=FAKE_KEY, base_url=fake.url)
        return client.run("owner/model", input={"prompt": "sync"})  # FileOutput objects

    (output,) = await asyncio.to_thread(run)
    assert output.read() == expected_png({"prompt": "sync"})


async def test_a_cold_start_stays_starting_and_a_deadline_aborts_it_unbilled(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    profile = FaultProfile(
        cold_start=1.0,
        cold_start_time=Latency(kind="fixed", seconds=1.0),
        run_time=Latency(kind="fixed", seconds=5.0),
    )
    fake = await start_fake("replicate", profile)
    body = {"version": "v", "input": {}}
    _, aborted = await create(http, fake.url, body, **{"Cancel-After": "200ms"})
    _, canceled = await create(http, fake.url, body, **{"Cancel-After": "1500ms"})
    await asyncio.sleep(0.3)
    assert (await get(http, aborted["urls"]["get"]))["status"] == "aborted"
    assert (await get(http, canceled["urls"]["get"]))["status"] == "starting"  # cold boot
    await eventually(lambda: fake.snapshot()["tasks"]["expired"] == 2, timeout=3)
    assert (await get(http, canceled["urls"]["get"]))["status"] == "canceled"
    tasks = fake.snapshot()["tasks"]
    assert (tasks["aborted"], tasks["canceled"], tasks["cold_starts"]) == (1, 1, 2)
    assert tasks["billable"] == 1  # the one that ran before its deadline canceled it
    info = fake.snapshot()["task_info"]
    assert (info[aborted["id"]]["billable"], info[canceled["id"]]["billable"]) == (False, True)


async def test_webhooks_carry_the_whole_prediction_logs_included(
    start_fake: StartFake, http: aiohttp.ClientSession, webhook_sink: WebhookSink
) -> None:
    profile = FaultProfile(run_time=FAST.run_time, logs=Size(kind="fixed", seconds=200_000))
    fake = await start_fake("replicate", profile)
    big_input = {"prompt": "x" * 10_000}
    body = {"version": "v", "input": big_input, "webhook": webhook_sink.url}
    _, prediction = await create(http, fake.url, body)
    hooks = await webhook_sink.wait_for(2)
    reference = Webhook(FAKE_SECRET)
    final = reference.verify(hooks[-1].body, hooks[-1].headers)
    assert final["id"] == prediction["id"] and final["status"] == "succeeded"
    assert final["input"] == big_input and len(final["logs"]) == 200_000
    assert len(hooks[-1].body) > 64 * 1024


async def test_predictions_can_be_listed(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("replicate")
    ids = [
        (await create(http, fake.url, {"version": "v", "input": {"i": i}}))[1]["id"]
        for i in range(3)
    ]
    client = replicate.Client(api_token=FAKE_KEY, base_url=fake.url)
    page = await client.predictions.async_list()
    assert [p.id for p in page.results] == ids[::-1]
    assert page.next is None
