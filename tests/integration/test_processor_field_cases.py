"""Issue 12's field cases against the processor: real fake vendors on loopback (signing
their webhooks, relayed as the gateway does), a real ledger file, the real adapters and
result store. Each numbered case failed before the runtime side of issue 12.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from actors.sweeper import Sweeper
from actors.wiring import SWEEPER
from runtime.states import JobStatus
from tests.integration.processor_rig import Rig, until
from vendors_fake.outputs import expected_file
from vendors_fake.png import expected_png

FIXED = {"kind": "fixed", "seconds": 0.3}
MiB = 1024 * 1024


def fake_stats(rig: Rig, vendor: str) -> dict[str, Any]:
    stats: dict[str, Any] = rig.fakes[vendor].snapshot()
    return stats


def wasted(rig: Rig, vendor: str) -> dict[str, float]:
    return {
        dict(sample.labels)["reason"]: sample.value
        for family in rig.processors[vendor].metrics.collect()
        for sample in family.samples
        if sample.name == "jobline_vendor_wasted_tasks_total" and sample.value
    }


# --- 1. timing per model ---------------------------------------------------------------------


@pytest.mark.profile(
    {
        "queue_delay": {"kind": "fixed", "seconds": 0.1},
        "cold_start": 1.0,
        "cold_start_time": {"kind": "fixed", "seconds": 2.5},
        "run_time": {"kind": "fixed", "seconds": 3.0},
    }
)
@pytest.mark.overrides(
    {"vendors.replicate": {"stuck_after": 1.0, "poll_interval": 0.2}, "sweeper": {"interval": 0.3}}
)
async def test_1_a_cold_boot_and_a_long_run_within_the_models_bounds_are_never_canceled(
    rig: Rig,
) -> None:
    """A replicate task taking 6 s (a cold boot, then the run) with ``stuck_after = 2``:
    3 vendor tasks created, 3 canceled (billed), job failed. The model's bounds decide;
    the sweeper, sweeping meanwhile, leaves a task within them alone."""
    sweeper: Sweeper = rig.build(SWEEPER)
    jobs = await rig.open("video-short", 2)
    await rig.dispatch(jobs)
    sweeping = asyncio.create_task(_sweep_until_done(rig, sweeper, jobs))
    done = await rig.wait(jobs, timeout=30)
    await sweeping
    assert [(j.status, j.attempts) for j in done] == [(JobStatus.COMPLETED, 1)] * 2
    tasks = fake_stats(rig, "replicate")["tasks"]
    assert (tasks["created"], tasks["canceled"], tasks["cold_starts"]) == (2, 0, 2)
    bound = rig.config.vendors["replicate"].task_lifetime_for(rig.config.models["video-short"])
    assert bound == 1800.0  # the model's queue + run bound, sent as Cancel-After


async def _sweep_until_done(rig: Rig, sweeper: Sweeper, jobs: list[Any]) -> None:
    while True:
        await sweeper.sweep_once()
        now = await rig.ledger.get_jobs([j.id for j in jobs])
        if all(j is not None and j.terminal for j in now):
            return
        await asyncio.sleep(0.3)


@pytest.mark.profile({"queue_delay": {"kind": "fixed", "seconds": 0.2}, "run_time": FIXED})
async def test_1_replicate_is_told_the_models_bound_as_cancel_after(rig: Rig) -> None:
    [job] = await rig.open("video-short")
    await rig.dispatch([job])
    fake = rig.fakes["replicate"]
    await until(lambda: len(fake.tasks) == 1)
    [task] = fake.tasks.values()
    left = task.deadline_timer.when() - asyncio.get_running_loop().time()
    assert 1790 < left <= 1800  # video-short: 900 s queue + 900 s run
    await rig.wait([job])


# --- 2. error classes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"), [(401, "auth"), (402, "billing"), (403, "billing"), (404, "model_gone")]
)
async def test_2_an_account_or_model_refusal_fails_over_and_opens_that_vendors_circuit(
    rig: Rig, status: int, reason: str
) -> None:
    """fal answered 403 "User is locked. Reason: Exhausted balance": 12 of 12 jobs failed
    and were dead-lettered, none reached the second vendor, the circuit stayed closed."""
    fal = rig.fakes["fal"]
    fal.update_profile({"refusal": {"status": status, "models": ["fal-ai/*"]}})
    jobs = await rig.open("flux-schnell", 3)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)
    assert {(j.status, j.vendor) for j in done} == {(JobStatus.COMPLETED, "replicate")}
    stats = await rig.processors["fal"].stats()
    assert stats["circuit"] == "open" and stats["failed"] == 0
    refusals = {
        dict(s.labels)["reason"]: s.value
        for f in rig.processors["fal"].metrics.collect()
        for s in f.samples
        if s.name == "jobline_vendor_refusals_total"
    }
    assert refusals[reason] >= 1
    refused_before = fal.snapshot()["faults"][f"refused_{status}"]
    [late] = await rig.open("flux-schnell")  # the circuit is open: fal is not even asked
    await rig.dispatch([late])
    [late_done] = await rig.wait([late])
    assert (late_done.status, late_done.vendor, late_done.attempts) == (
        JobStatus.COMPLETED,
        "replicate",
        1,
    )
    assert fal.snapshot()["faults"][f"refused_{status}"] == refused_before


@pytest.mark.profile({"refusal": {"status": 402}})
@pytest.mark.overrides({"circuit": {"refused_cooldown": 1.0}})
async def test_2_a_refusal_of_the_only_vendor_is_waited_out_until_the_account_is_back(
    rig: Rig,
) -> None:
    replicate = rig.fakes["replicate"]
    [job] = await rig.open("video-short")
    await rig.dispatch([job])
    await until(lambda: replicate.snapshot()["faults"].get("refused_402", 0) >= 1)
    assert (await rig.processors["replicate"].stats())["circuit"] == "open"
    replicate.update_profile({"refusal": None})  # billing set up again
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED


# --- 3. wait, don't fail -----------------------------------------------------------------------


@pytest.mark.overrides({"circuit": {"failure_threshold": 3, "cooldown": 0.5}})
async def test_3_an_outage_of_the_only_vendor_is_waited_out(rig: Rig) -> None:
    """During a 10 s outage of the only vendor of video-short, 3 of 8 jobs failed for
    good 1.5 s into a 900 s deadline. They wait (queued, ``not_before`` the probe)."""
    replicate = rig.fakes["replicate"]
    replicate.update_profile({"outage": {"retry_after": 0.0}})
    replicate.start_outage(3.0)
    jobs = await rig.open("video-short", 8)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs, timeout=30)
    assert {j.status for j in done} == {JobStatus.COMPLETED}
    history = [entry for job in jobs for entry in await rig.ledger.history(job.id)]
    waits = [h for h in history if (h.detail or "").startswith("retry: waiting for the circuit")]
    assert waits, "no job waited for the circuit"
    assert (await rig.processors["replicate"].stats())["waits"] >= 1


# --- 4. submits in doubt -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vendor", "model", "lost"),
    [
        ("replicate", "video-short", {"server_error": 1.0}),
        ("replicate", "video-short", {"hang": 1.0}),
        ("fal", "flux-schnell", {"cut_off": 1.0}),
        ("fal", "flux-schnell", {"server_error": 1.0}),
    ],
)
@pytest.mark.profile({"run_time": {"kind": "fixed", "seconds": 0.8}, "hang_for": 2.0})
@pytest.mark.overrides(
    {
        "vendors.replicate": {"concurrency": 2, "submit_timeout": 0.5},
        "vendors.fal": {"concurrency": 2, "submit_timeout": 0.5},
    }
)
async def test_4_two_lost_submits_at_a_limit_of_two_are_adopted(
    rig: Rig, vendor: str, model: str, lost: dict[str, float]
) -> None:
    """A submit whose answer is lost started the task twice: two jobs put 4 tasks in
    flight at a vendor with limit 2. Now the task is found (replicate's prediction list)
    or shows itself (fal's webhook names the job and attempt) and is adopted."""
    fake = rig.fakes[vendor]
    fake.update_profile({"lost_answers": lost, "concurrency_limit": 2})  # the fake enforces 2
    jobs = await rig.open(model, 2)
    await rig.dispatch(jobs)
    await until(lambda: fake.snapshot()["tasks"]["created"] >= 2)
    fake.update_profile({"lost_answers": {"hang": 0.0, "server_error": 0.0, "cut_off": 0.0}})
    done = await rig.wait(jobs, timeout=40)
    assert [(j.status, j.attempts) for j in done] == [(JobStatus.COMPLETED, 1)] * 2
    stats = fake.snapshot()
    assert stats["tasks"]["max_in_flight"] <= 2
    assert stats["tasks"]["created"] == 2 and stats["duplicate_attempts"] == []
    assert all(t["answer_lost"] and t["delivered"] for t in stats["task_info"].values())
    assert {j.vendor_task_id for j in done} == set(stats["task_ids"])  # the orphans' outputs
    assert (await rig.processors[vendor].stats())["in_doubt"]["adopted"] == 2
    assert wasted(rig, vendor) == {}


# --- 5. paid work is kept ----------------------------------------------------------------------


@pytest.mark.profile({"payload_error": 1.0, "run_time": FIXED})
@pytest.mark.overrides({"vendors.fal": {"poll_interval": 30.0}})
async def test_5_a_fal_webhook_without_payload_has_its_result_read(rig: Rig) -> None:
    """``status: OK``, ``payload: null`` and ``payload_error``: the task was re-run five
    times, then the job failed. The result exists at the response URL: it is read."""
    [job] = await rig.open("flux-schnell")
    await rig.dispatch([job])
    [done] = await rig.wait([job], timeout=10)  # long before the 30 s poll
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)
    assert await rig.results.get(done.result_key or "") == expected_png(job.input)
    assert any(e.status.result_pending for e in rig.relayed)
    assert fake_stats(rig, "fal")["tasks"]["delivered"] == 1


@pytest.mark.parametrize("vendor_model", [("fal", "flux-schnell"), ("replicate", "sdxl")])
@pytest.mark.profile({"data_uri": 1.0, "run_time": FIXED})
async def test_5_outputs_given_as_data_uris_are_decoded(
    rig: Rig, vendor_model: tuple[str, str]
) -> None:
    """An output given as a ``data:`` URI (fal's sync_mode, replicate's sync API): 5
    billed runs, then failover. It is the file itself."""
    vendor, model = vendor_model
    [job] = await rig.open(model)
    await rig.dispatch([job])
    [done] = await rig.wait([job])
    assert (done.status, done.vendor, done.attempts) == (JobStatus.COMPLETED, vendor, 1)
    assert await rig.results.get(done.result_key or "") == expected_png(job.input)
    assert done.outputs[0].content_type == "image/png"
    tasks = fake_stats(rig, vendor)["tasks"]
    assert (tasks["created"], tasks["delivered"]) == (1, 1)


@pytest.mark.profile({"run_time": FIXED, "outputs": {"*": {"kind": "image", "count": 3}}})
async def test_5_every_image_of_a_task_is_kept(rig: Rig) -> None:
    """Only the first output of a prediction was kept (image models return several)."""
    jobs = await rig.open("flux-schnell", 1) + await rig.open("sdxl", 1)
    await rig.dispatch(jobs)
    for done in await rig.wait(jobs):
        images = [o for o in done.outputs if o.content_type == "image/png"]
        assert len(images) == 3 and done.result_key == done.outputs[0].key
        assert len({o.key for o in done.outputs}) == len(done.outputs)
        if done.vendor == "fal":  # fal's result holds more (seed, timings): kept as JSON
            assert [o.content_type for o in done.outputs[3:]] == ["application/json"]
        for index, output in enumerate(images):
            stored = await rig.results.get(output.key)
            assert stored == expected_file(done.input, "image", index)
            assert (output.content_type, output.size) == ("image/png", len(stored))
    for vendor in ("fal", "replicate"):
        tasks = fake_stats(rig, vendor)["tasks"]
        assert tasks["delivered"] == tasks["created"] == 1


@pytest.mark.parametrize("size", [300 * 1024, 60 * MiB])
@pytest.mark.profile(
    {
        "run_time": FIXED,
        "outputs": {"*": {"kind": "video", "size": {"kind": "fixed", "seconds": 0}}},
    }
)
async def test_5_a_video_is_stored_as_a_video_whatever_its_size_under_the_models_cap(
    rig: Rig, size: int
) -> None:
    """A 60 MiB mp4 failed and was refunded after the vendor succeeded (a fixed 50 MiB
    cap); smaller ones were stored and served as ``image/png``."""
    spec = {"kind": "video", "size": {"kind": "fixed", "seconds": size}}
    rig.fakes["replicate"].update_profile({"outputs": {"*": spec}})
    [job] = await rig.open("video-short")
    await rig.dispatch([job])
    [done] = await rig.wait([job], timeout=60)
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)
    [output] = done.outputs
    assert (output.content_type, output.size) == ("video/mp4", size)
    assert output.key.endswith(".mp4")
    async with await rig.results.open(output.key) as stored:
        head = await anext(stored.chunks)
    assert head[4:8] == b"ftyp"


@pytest.mark.profile(
    {
        "run_time": FIXED,
        "outputs": {"*": {"kind": "video", "size": {"kind": "fixed", "seconds": 400_000}}},
    }
)
@pytest.mark.overrides({"models.video-short": {"max_output_bytes": 300_000}})
async def test_5_an_output_past_the_models_cap_fails_the_job_without_running_it_again(
    rig: Rig,
) -> None:
    [job] = await rig.open("video-short")
    await rig.dispatch([job])
    [done] = await rig.wait([job])
    assert done.status is JobStatus.FAILED
    assert "models.video-short.max_output_bytes" in (done.error or "")
    assert fake_stats(rig, "replicate")["tasks"]["created"] == 1
    assert wasted(rig, "replicate") == {"too_large": 1.0}


@pytest.mark.parametrize(
    ("kind", "types"),
    [
        ("json", {"fal": "application/json", "replicate": "application/json"}),
        # replicate's language models answer strings to join; fal's answer is an object
        ("text", {"fal": "application/json", "replicate": "text/plain"}),
    ],
)
@pytest.mark.profile({"run_time": FIXED})
async def test_5_json_and_text_results_are_stored_as_outputs(
    rig: Rig, kind: str, types: dict[str, str]
) -> None:
    for fake in rig.fakes.vendors.values():
        fake.update_profile({"outputs": {"*": {"kind": kind}}})
    jobs = await rig.open("flux-schnell") + await rig.open("video-short")
    await rig.dispatch(jobs)
    for done in await rig.wait(jobs):
        assert done.status is JobStatus.COMPLETED and done.attempts == 1
        [output] = done.outputs
        assert output.content_type.startswith(types[done.vendor])
        data = await rig.results.get(output.key)
        assert (
            ("fake" in json.dumps(json.loads(data)))
            if "json" in output.content_type
            else (data.decode().startswith("A fake answer"))
        )
    for vendor in ("fal", "replicate"):
        assert fake_stats(rig, vendor)["tasks"]["delivered"] == 1


@pytest.mark.profile({"run_time": FIXED, "download": {"server_error": 0.6}})
async def test_5_a_download_problem_retries_the_download_never_the_task(rig: Rig) -> None:
    jobs = await rig.open("video-short", 4)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs, timeout=60)
    assert {(j.status, j.attempts) for j in done} == {(JobStatus.COMPLETED, 1)}
    stats = fake_stats(rig, "replicate")
    assert stats["faults"]["server_error"] >= 1
    assert stats["tasks"]["created"] == stats["tasks"]["delivered"] == 4


# --- 6. outputs are trusted only as far as their origin ----------------------------------------


@pytest.fixture
async def secret_server() -> Any:
    hits: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"the metadata service's credentials")

    app = web.Application()
    app.router.add_get("/{tail:.*}", secret)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/secret", hits
    await runner.cleanup()


@pytest.mark.profile({"never_finish": 1.0})
@pytest.mark.overrides({"vendors.replicate": {"output_hosts": ("replicate.delivery",)}})
async def test_6_a_signed_webhook_naming_a_loopback_url_has_its_output_refused(
    rig: Rig, secret_server: Any
) -> None:
    """Issue 13, case 12: a signed webhook naming ``http://127.0.0.1:…/secret`` for a
    vendor not configured for loopback: nothing is fetched; sdxl fails over to fal,
    video-short (replicate only) fails with a clear error."""
    url, hits = secret_server
    replicate = rig.fakes["replicate"]
    jobs = await rig.open("sdxl") + await rig.open("video-short")
    await rig.dispatch(jobs)
    await until(lambda: len(replicate.tasks) == 2)
    rig.fakes["fal"].update_profile({"never_finish": 0.0})  # where sdxl fails over to
    await asyncio.sleep(0.3)  # both processing
    for task in list(replicate.tasks.values()):
        prediction = json.loads(task.body)
        prediction.update(status="succeeded", output=[url])
        body = json.dumps(prediction).encode()
        signed, _ = replicate.signed_webhook(task, body=body, msg_id=f"msg_{task.id}")
        headers = {**signed, "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(str(task.webhook_url), data=body, headers=headers) as answer,
        ):
            assert answer.status == 200
    sdxl, video = await rig.wait(jobs)
    assert hits == []
    assert (sdxl.status, sdxl.vendor) == (JobStatus.COMPLETED, "fal")
    assert video.status is JobStatus.FAILED
    assert "127.0.0.1 is an internal address" in (video.error or "")
    assert wasted(rig, "replicate") == {"untrusted_output": 2.0}


# --- 7. Retry-After of any form ----------------------------------------------------------------


@pytest.mark.profile({"submit": {"rate_limited": 1.0, "retry_after": float("inf")}})
async def test_7_retry_after_inf_spends_the_retry_budget_instead_of_crashing(rig: Rig) -> None:
    """``Retry-After: inf`` on a 429 crashed the attempt; the job sat queued until the
    sweeper found it, its retry budget unused."""
    replicate = rig.fakes["replicate"]
    [job] = await rig.open("video-short")
    await rig.dispatch([job])
    await until(lambda: replicate.snapshot()["faults"].get("rate_limited", 0) >= 2)
    replicate.update_profile({"submit": {"rate_limited": 0.0}})
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED and done.attempts >= 3
    assert (await rig.processors["replicate"].stats())["retries"] == done.attempts - 1


# --- 8. ledger writes at the end of an attempt ---------------------------------------------------


@pytest.mark.profile({"run_time": {"kind": "fixed", "seconds": 1.0}})
async def test_8_a_locked_ledger_delays_completion_only_until_it_is_free(rig: Rig) -> None:
    """With the SQLite file locked for 20 s, jobs whose vendor task ended in 1 s
    completed ~133 s later, through the sweeper. Here: locked 7 s (past the ledger's 5 s
    busy timeout), and no sweeper at all."""
    jobs = await rig.open("video-short", 3)
    await rig.dispatch(jobs)

    async def processing() -> bool:
        now = await rig.ledger.get_jobs([j.id for j in jobs])
        return all(j is not None and j.status is JobStatus.PROCESSING for j in now)

    await until(processing)
    locker = sqlite3.connect(rig.ledger.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # a real write lock on the file
    locked_until = time.monotonic() + 7.0
    await asyncio.sleep(7.0)
    locker.execute("ROLLBACK")
    locker.close()
    done = await rig.wait(jobs, timeout=30)
    assert {j.status for j in done} == {JobStatus.COMPLETED}
    assert time.monotonic() - locked_until < 8.0  # soon after the lock ends
    assert (await rig.processors["replicate"].stats())["ledger_retries"] >= 1
