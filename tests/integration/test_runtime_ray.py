"""The whole path of a job on local Ray: HTTP API, actors, fake vendors on loopback.

A test that changes the runtime's config, starts its vendors with faults, or kills a role
starts its own fake vendors and runtime (a fresh namespace and database) on the session's
one Ray. The others share one calm runtime (``calm_bed``: a runtime costs ~10 s to start),
each with an account of its own, and count only what changed during the test. Every test
checks the ledger's invariants at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from loadtests.testbed import Testbed
from runtime.invariants import check_invariants
from runtime.webhooks import signed_headers
from vendors_fake.png import expected_png
from vendors_fake.profile import merge_profile, preset

pytestmark = pytest.mark.ray

FAST: dict[str, dict[str, Any]] = {
    "retry": {"base": 0.05, "cap": 0.4},
    "sweeper": {"interval": 1.0},
    "circuit": {"cooldown": 2.0},
    "vendors.fal": {"poll_interval": 0.3},
    "vendors.replicate": {"poll_interval": 0.3},
}
FLUX = "flux-schnell"  # route: fal, then replicate
SDXL = "sdxl"  # route: replicate, then fal


def profile(**patch: Any) -> Any:
    return merge_profile(preset("calm"), patch)


def bed(tmp_path: Path, prof: Any = "calm", **overrides: Any) -> Testbed:
    return Testbed(tmp_path, profile=prof, overrides={**FAST, **overrides})


async def settled(tb: Testbed, job_ids: list[str], timeout: float = 60) -> dict[str, Any]:
    jobs = await tb.client.wait_all(job_ids, timeout=timeout)
    assert check_invariants(tb.config.storage.database) == []
    return jobs


async def submit_many(tb: Testbed, model: str, n: int, tag: str = "j") -> list[str]:
    async def one(i: int) -> str:
        status, job = await tb.client.submit(model, {"prompt": f"{tag} {i}", "seed": i})
        assert status == 202, job
        return str(job["id"])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def entry_kinds(entries: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["kind"] for e in entries)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def calm_runtime(
    tmp_path_factory: pytest.TempPathFactory, ray_session: Any
) -> AsyncIterator[Testbed]:
    async with bed(tmp_path_factory.mktemp("calm")) as tb:
        yield tb


@pytest_asyncio.fixture(loop_scope="module")
async def calm_bed(calm_runtime: Testbed) -> AsyncIterator[Testbed]:
    """The module's calm runtime (``FAST``) with a funded account of this test's own: its
    balance, statement, jobs and idempotency keys are this test's alone. A test may patch
    the fakes' profile (``vendor_profile``): the calm one is back after the test."""
    tb = calm_runtime
    tb.account_id, tb.client.api_key = await tb.client.create_account(tb.credits)
    calm = {name: fake.profile for name, fake in tb.fakes.vendors.items()}
    yield tb
    for name, fake in tb.fakes.vendors.items():
        fake.set_profile(calm[name])


def vendor_profile(tb: Testbed, **patch: Any) -> None:
    """Every fake vendor of ``tb`` with ``patch`` on its profile from now on."""
    for fake in tb.fakes.vendors.values():
        fake.update_profile(patch)


def counted(metrics: str, name: str, *labels: str) -> float:
    """The sum of the samples of ``name`` with every one of ``labels`` (``'key="value"'``)
    in a /metrics text, whichever actor's."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name + "{") and all(label in line for label in labels)
    )


async def metrics_text(tb: Testbed) -> str:
    _status, metrics = await tb.client.request("GET", "/metrics")
    return metrics.decode() if isinstance(metrics, bytes) else str(metrics)


shared_loop = pytest.mark.asyncio(loop_scope="module")  # calm_bed's event loop


@shared_loop
async def test_happy_path_on_both_vendor_shapes(calm_bed: Testbed) -> None:
    tb = calm_bed
    inputs = {FLUX: {"prompt": "a red fox", "seed": 1}, SDXL: {"prompt": "a lighthouse"}}
    ids = {}
    for model, input in inputs.items():
        status, job = await tb.client.submit(model, input)
        assert status == 202 and job["status"] == "queued"
        ids[model] = job["id"]
    jobs = await settled(tb, list(ids.values()))
    for model, job_id in ids.items():
        job = jobs[job_id]
        assert job["status"] == "completed", job
        assert job["vendor"] == {FLUX: "fal", SDXL: "replicate"}[model]
        status, data = await tb.client.request("GET", f"/v1/jobs/{job_id}/result")
        assert status == 200
        assert data == expected_png(inputs[model])
        info = tb.fake_stats(job["vendor"])["task_info"][job["vendor_task_id"]]
        assert info["trace_id"] == job["trace_id"]
    assert entry_kinds(await tb.client.entries()) == {"grant": 1, "hold": 2, "capture": 2}
    credits = await tb.client.credits()
    assert credits["available"] == tb.credits - 3 - 5


def nearby_counts(tb: Testbed) -> dict[str, dict[str, int]]:
    return {role: tb.runtime.nearby_calls(role) for role in tb.runtime.roles()}


@shared_loop
async def test_roles_on_one_machine_call_each_other_over_sockets(calm_bed: Testbed) -> None:
    """The default (``[ray] nearby_calls = true``): the gateways' and processors' calls to
    the ledger and the processors skip Ray."""
    tb = calm_bed
    jobs = await settled(tb, await submit_many(tb, FLUX, 6))
    assert {j["status"] for j in jobs.values()} == {"completed"}
    counts = await asyncio.to_thread(nearby_counts, tb)
    gateways = [c for role, c in counts.items() if role.startswith("gateway-")]
    opened = sum(c.get("ledger", 0) for c in gateways)
    dispatched = sum(c.get("processor-fal", 0) for c in gateways)
    recorded = counts["processor-fal"].get("ledger", 0)
    assert opened > 0 and dispatched > 0 and recorded > 0, counts
    assert counts["ledger"]["served"] >= opened + recorded


async def test_with_nearby_calls_off_every_call_goes_through_ray(
    tmp_path: Path, ray_session: Any
) -> None:
    """``[ray] nearby_calls = false``: every call between roles goes through Ray."""
    async with bed(tmp_path, ray={"nearby_calls": False}) as tb:
        jobs = await settled(tb, await submit_many(tb, FLUX, 6))
        assert {j["status"] for j in jobs.values()} == {"completed"}
        counts = await asyncio.to_thread(nearby_counts, tb)
        assert all(n == 0 for c in counts.values() for n in c.values()), counts


async def test_transient_errors_are_retried_until_success(tmp_path: Path, ray_session: Any) -> None:
    flaky = profile(submit={"server_error": 0.3}, failure=0.2)
    # A submit answered 5xx is in doubt; fal lists nothing, so the job waits orphan_wait
    # for a webhook before its next attempt (the in-doubt tests cover that wait).
    fal = {**FAST["vendors.fal"], "orphan_wait": 2.0}
    async with bed(tmp_path, flaky, **{"vendors.fal": fal}) as tb:
        ids = await submit_many(tb, FLUX, 12)
        jobs = await settled(tb, ids)
        assert {j["status"] for j in jobs.values()} == {"completed"}
        assert sum(j["attempts"] for j in jobs.values()) > len(ids)
        assert entry_kinds(await tb.client.entries())["capture"] == len(ids)


async def test_permanent_failure_refunds_once_dead_letters_and_redrives(
    tmp_path: Path, ray_session: Any
) -> None:
    async with bed(tmp_path, profile(rejection=1.0)) as tb:
        status, job = await tb.client.submit("video-short", {"prompt": "forbidden"})
        assert status == 202
        failed = (await settled(tb, [job["id"]]))[job["id"]]
        assert failed["status"] == "failed"
        assert failed["attempts"] == 1  # permanent: no retry
        assert (await tb.client.credits())["available"] == tb.credits
        assert entry_kinds(await tb.client.entries()) == {"grant": 1, "hold": 1, "release": 1}
        status, dead = await tb.client.request("GET", "/v1/admin/dead-letters", admin=True)
        assert [d["job_id"] for d in dead["dead_letters"]] == [job["id"]]

        tb.fakes["replicate"].update_profile({"rejection": 0.0})
        status, redriven = await tb.client.request(
            "POST", f"/v1/admin/dead-letters/{job['id']}/redrive", admin=True
        )
        assert status in (200, 201, 202), redriven
        new_id = redriven["id"]
        assert new_id != job["id"]
        done = (await settled(tb, [new_id]))[new_id]
        assert done["status"] == "completed"
        assert (await tb.client.credits())["available"] == tb.credits - 20


async def test_vendor_outage_fails_over_with_one_charge(tmp_path: Path, ray_session: Any) -> None:
    async with bed(tmp_path) as tb:
        tb.fakes["fal"].start_outage(120)
        ids = await submit_many(tb, FLUX, 6)
        jobs = await settled(tb, ids)
        assert {j["status"] for j in jobs.values()} == {"completed"}
        assert {j["vendor"] for j in jobs.values()} == {"replicate"}
        assert entry_kinds(await tb.client.entries()) == {"grant": 1, "hold": 6, "capture": 6}
        assert tb.fake_stats("fal")["tasks"]["created"] == 0


@shared_loop
async def test_lost_webhooks_are_covered_by_polling(calm_bed: Testbed) -> None:
    tb = calm_bed
    lost_before = tb.fake_stats("replicate")["webhooks"]["by_fault"]["lost"]
    vendor_profile(tb, webhooks={"lost": 1.0})
    ids = await submit_many(tb, SDXL, 4)
    jobs = await settled(tb, ids)
    assert {j["status"] for j in jobs.values()} == {"completed"}
    assert tb.fake_stats("replicate")["webhooks"]["by_fault"]["lost"] - lost_before >= 4


@shared_loop
async def test_duplicate_webhooks_are_applied_once(calm_bed: Testbed) -> None:
    tb = calm_bed
    duplicate = ("jobline_webhooks_total", 'vendor="replicate"', 'result="duplicate"')
    before = counted(await metrics_text(tb), *duplicate)
    vendor_profile(tb, webhooks={"duplicated": 1.0})
    ids = await submit_many(tb, SDXL, 4)
    jobs = await settled(tb, ids)
    assert {j["status"] for j in jobs.values()} == {"completed"}
    assert entry_kinds(await tb.client.entries())["capture"] == 4
    assert counted(await metrics_text(tb), *duplicate) > before


@shared_loop
async def test_forged_and_stale_webhooks_change_nothing(calm_bed: Testbed) -> None:
    tb = calm_bed
    _, job = await tb.client.submit(SDXL, {"prompt": "x"})
    done = (await settled(tb, [job["id"]]))[job["id"]]
    body = (
        b'{"id": "%s", "status": "failed", "error": "forged", "output": null}'
        % done["vendor_task_id"].encode()
    )
    forged = signed_headers("whsec_Zm9yZ2VkLXNlY3JldA==", "msg_forged", int(time.time()), body)
    real_secret = tb.config.vendors["replicate"].webhook_secret() or ""
    stale = signed_headers(real_secret, "msg_stale", int(time.time()) - 3600, body)
    for headers in (forged, stale):
        async with tb.client.http.post(
            f"{tb.client.base_url}/v1/webhooks/replicate", data=body, headers=headers
        ) as response:
            assert response.status in (400, 401), await response.text()
    _status, after = await tb.client.job(job["id"])
    assert after["status"] == "completed"
    assert entry_kinds(await tb.client.entries()) == {"grant": 1, "hold": 1, "capture": 1}


async def test_processor_killed_mid_job_resumes_without_resubmitting(
    tmp_path: Path, ray_session: Any
) -> None:
    slow = profile(run_time={"kind": "fixed", "seconds": 3.0}, webhooks={"lost": 1.0})
    async with bed(tmp_path, slow) as tb:
        ids = await submit_many(tb, FLUX, 4)
        for _ in range(100):
            states = {(await tb.client.job(j))[1]["status"] for j in ids}
            if states == {"processing"}:
                break
            await asyncio.sleep(0.1)
        assert states == {"processing"}
        await asyncio.to_thread(tb.runtime.kill, "processor-fal")
        jobs = await settled(tb, ids)
        assert {j["status"] for j in jobs.values()} == {"completed"}
        stats = tb.fake_stats("fal")
        assert stats["tasks"]["created"] == 4
        assert stats["duplicate_attempts"] == []
        assert all(j["attempts"] == 1 for j in jobs.values())


async def test_ledger_killed_restarts_and_nothing_is_lost(tmp_path: Path, ray_session: Any) -> None:
    async with bed(tmp_path) as tb:
        first = await submit_many(tb, FLUX, 8, tag="before")
        await asyncio.to_thread(tb.runtime.kill, "ledger")
        second: list[str] = []
        for i in range(8):  # clients retry with their Idempotency-Key until accepted
            for _ in range(100):
                status, job = await tb.client.submit(FLUX, {"prompt": f"after {i}"}, key=f"k{i}")
                if status == 202:
                    second.append(job["id"])
                    break
                await asyncio.sleep(0.1)
        assert len(second) == 8
        jobs = await settled(tb, first + second)
        assert {j["status"] for j in jobs.values()} == {"completed"}
        assert entry_kinds(await tb.client.entries())["hold"] == 16


async def test_sweeper_settles_a_zombie_job(tmp_path: Path, ray_session: Any) -> None:
    quiet = profile(run_time={"kind": "fixed", "seconds": 0.5}, webhooks={"lost": 1.0})
    slow_poll = {"poll_interval": 60.0, "stuck_after": 2.0}
    async with bed(tmp_path, quiet, **{"vendors.fal": slow_poll}) as tb:
        _, job = await tb.client.submit(FLUX, {"prompt": "zombie"})
        for _ in range(100):
            if (await tb.client.job(job["id"]))[1]["status"] == "processing":
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(tb.runtime.kill, "processor-fal", restart=False)
        done = (await settled(tb, [job["id"]], timeout=30))[job["id"]]
        assert done["status"] == "completed"
        assert tb.fake_stats("fal")["tasks"]["created"] == 1


@shared_loop
async def test_accounts_are_isolated_and_credits_enforced(calm_bed: Testbed) -> None:
    tb = calm_bed
    status, job = await tb.client.submit(SDXL, {"prompt": "mine"})
    _, other_key = await tb.client.create_account(credits=4, name="other")
    assert (await tb.client.job(job["id"], api_key=other_key))[0] == 404
    status, body = await tb.client.submit(SDXL, {"prompt": "too dear"}, api_key=other_key)
    assert status == 402, body
    other = await tb.client.credits(api_key=other_key)
    assert (other["balance"], other["held"], other["available"]) == (4, 0, 4)
    await settled(tb, [job["id"]])


@shared_loop
async def test_one_idempotency_key_twenty_concurrent_submits(calm_bed: Testbed) -> None:
    tb = calm_bed
    answers = await asyncio.gather(
        *(tb.client.submit(SDXL, {"prompt": "same"}, key="only-once") for _ in range(20))
    )
    assert {status for status, _ in answers} == {202}
    assert len({job["id"] for _, job in answers}) == 1
    await settled(tb, [answers[0][1]["id"]])
    assert entry_kinds(await tb.client.entries())["hold"] == 1


async def test_in_flight_never_exceeds_the_vendor_limit(tmp_path: Path, ray_session: Any) -> None:
    burst = profile(run_time={"kind": "uniform", "low": 0.2, "high": 0.4})
    limits = {"vendors.fal": {"concurrency": 3}, "vendors.replicate": {"concurrency": 2}}
    async with bed(tmp_path, burst, **limits) as tb:
        ids = await submit_many(tb, FLUX, 30) + await submit_many(tb, SDXL, 20, tag="s")
        jobs = await settled(tb, ids, timeout=90)
        assert {j["status"] for j in jobs.values()} == {"completed"}
        assert tb.fake_stats("fal")["tasks"]["max_in_flight"] == 3
        assert tb.fake_stats("replicate")["tasks"]["max_in_flight"] == 2
