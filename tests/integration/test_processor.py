"""VendorProcessor in one process: a real ledger file, real fake vendors on loopback,
the real vendor adapters and result store, no Ray, no gateway."""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from actors.processor import VendorProcessor
from actors.sweeper import Sweeper
from actors.wiring import SWEEPER, Ports, Wiring, build_role, processor_role
from loadtests.testbed import ROOT_CONFIG, ensure_dev_secrets, local_config
from runtime.config import JoblineConfig, load_config
from runtime.errors import LedgerUnavailable
from runtime.invariants import check_invariants
from runtime.ledger import Ledger, new_job_id
from runtime.models import (
    Cancel,
    CreateAccount,
    Grant,
    Job,
    LedgerOp,
    MarkProcessing,
    OpenJob,
    Outcome,
)
from runtime.ports import LedgerPort, ProcessorPort
from runtime.results import LocalResultStore, result_key_for
from runtime.states import JobStatus
from runtime.vendors import TaskState, TaskStatus, WebhookEvent, make_client
from tests.ledger_ops import apply_op
from vendors_fake.png import expected_png
from vendors_fake.profile import merge_profile, preset
from vendors_fake.runner import FakeVendorSet, start_fake_vendors, vendor_credentials

IDS = random.Random(5)
FAST = {
    "retry": {"base": 0.02, "cap": 0.2},
    "circuit": {"cooldown": 1.0},
    "vendors.fal": {"poll_interval": 0.1},
    "vendors.replicate": {"poll_interval": 0.1},
}


@dataclass
class Rig:
    config: JoblineConfig
    ledger: Ledger
    fakes: FakeVendorSet
    processors: dict[str, VendorProcessor]
    results: LocalResultStore

    def processor(self, vendor: str) -> ProcessorPort:
        return self.processors[vendor]

    def vendors(self) -> list[str]:
        return list(self.processors)

    def build(self, role: str, seed: int = 0, ledger: LedgerPort | None = None) -> Any:
        """The role as the wiring builds it, on this rig's ledger, fakes and store."""
        wiring = Wiring(
            seed=seed,
            vendor_clients=lambda v: make_client(v, *vendor_credentials(v)),
            result_stores=lambda _: self.results,
        )
        ports = Ports(
            ledger=lambda: ledger or cast(LedgerPort, self.ledger),
            processor=self.processor,
            metric_sources=dict,
            vendors=self.vendors(),
        )
        return build_role(role, self.config, wiring, ports)

    def make_processor(
        self, vendor: str, seed: int = 0, ledger: LedgerPort | None = None
    ) -> VendorProcessor:
        processor: VendorProcessor = self.build(processor_role(vendor), seed, ledger)
        return processor

    async def open(self, model: str, n: int = 1, **input: Any) -> list[Job]:
        jobs = []
        for i in range(n):
            route = self.config.models[model].route
            job = await apply_op(
                self.ledger,
                OpenJob(
                    new_job_id(time.time(), IDS),
                    "acct",
                    model,
                    {"prompt": f"p{i}", **input},
                    self.config.models[model].price,
                    f"trace{i:028d}",
                    route[0].vendor,
                    time.time() + 60,
                ),
            )
            jobs.append(job)
        return jobs

    async def dispatch(self, jobs: list[Job]) -> None:
        for job in jobs:
            await self.processors[job.vendor].dispatch([job])

    async def wait(self, jobs: list[Job], timeout: float = 30) -> list[Job]:
        deadline = time.monotonic() + timeout
        while True:
            now = await self.ledger.get_jobs([j.id for j in jobs])
            if all(j is not None and j.terminal for j in now):
                assert check_invariants(self.ledger.path) == []
                return [j for j in now if j is not None]
            assert time.monotonic() < deadline, [j and (j.id, j.status) for j in now]
            await asyncio.sleep(0.05)


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    marker = request.node.get_closest_marker("profile")
    profile = merge_profile(preset("calm"), marker.args[0] if marker else {})
    overrides = request.node.get_closest_marker("overrides")
    base = load_config(ROOT_CONFIG)
    ensure_dev_secrets(base)
    fakes = await start_fake_vendors(
        base, profile.model_copy(update={"concurrency_limit": 10_000}), ports="free"
    )
    config = local_config(
        base, tmp_path, fakes.urls, overrides={**FAST, **(overrides.args[0] if overrides else {})}
    )
    ledger = await Ledger.open(tmp_path / "ledger.db")
    await apply_op(ledger, CreateAccount("acct", "hash"))
    await apply_op(ledger, Grant("acct", 10_000, "g"))
    rig = Rig(config, ledger, fakes, {}, LocalResultStore(tmp_path / "results"))
    for vendor in config.vendors:
        rig.processors[vendor] = rig.make_processor(vendor)
        await rig.processors[vendor].start()
    yield rig
    for processor in rig.processors.values():
        await processor.stop()
    await ledger.close()
    await fakes.stop()


async def test_a_job_goes_from_queue_to_stored_result(rig: Rig) -> None:
    [job] = await rig.open("flux-schnell")
    await rig.dispatch([job])
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED
    assert done.vendor == "fal" and done.attempts == 1
    assert done.result_key == result_key_for(job.id, "image/png")
    assert await rig.results.get(done.result_key) == expected_png(job.input)


@pytest.mark.profile({"submit": {"server_error": 0.5}})
async def test_transient_submit_errors_are_retried(rig: Rig) -> None:
    jobs = await rig.open("video-short", 10)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)
    assert {j.status for j in done} == {JobStatus.COMPLETED}
    assert sum(j.attempts for j in done) > 10
    assert (await rig.processors["replicate"].stats())["retries"] > 0


async def test_outage_fails_over_to_the_next_vendor(rig: Rig) -> None:
    rig.fakes["fal"].start_outage(60)
    jobs = await rig.open("flux-schnell", 5)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)
    assert {(j.status, j.vendor) for j in done} == {(JobStatus.COMPLETED, "replicate")}
    assert (await rig.processors["fal"].stats())["failovers"] == 5


def retries_by_reason(processor: VendorProcessor) -> dict[str, float]:
    """``jobline_retries_total{reason}`` of one processor, by reason."""
    return {
        dict(sample.labels)["reason"]: sample.value
        for family in processor.metrics.collect()
        for sample in family.samples
        if sample.name == "jobline_retries_total"
    }


@pytest.mark.profile({"failure": 1.0})
async def test_a_retry_after_a_failed_vendor_task_counts_the_task_failure(rig: Rig) -> None:
    # Field case: every transiently failed vendor task was counted as a VendorTimeout.
    replicate = rig.processors["replicate"]
    [job] = await rig.open("video-short")
    await rig.dispatch([job])
    await _until(lambda: retries_by_reason(replicate).get("VendorTaskFailed", 0) >= 1)
    rig.fakes["replicate"].update_profile({"failure": 0.0})  # the next attempt succeeds
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED and done.attempts >= 2
    assert set(retries_by_reason(replicate)) == {"VendorTaskFailed"}


@pytest.mark.profile({"never_finish": 1.0})
@pytest.mark.overrides({"vendors.replicate": {"stuck_after": 0.5, "poll_interval": 0.1}})
async def test_a_retry_after_giving_up_on_a_task_counts_a_timeout(rig: Rig) -> None:
    replicate = rig.processors["replicate"]
    [job] = await rig.open("video-short")
    await rig.dispatch([job])
    await _until(lambda: retries_by_reason(replicate).get("VendorTimeout", 0) >= 1)
    rig.fakes["replicate"].update_profile({"never_finish": 0.0})
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED
    assert set(retries_by_reason(replicate)) == {"VendorTimeout"}


@pytest.mark.profile({"rejection": 1.0})
async def test_permanent_failure_fails_at_once_and_refunds(rig: Rig) -> None:
    jobs = await rig.open("flux-schnell", 3)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)
    assert {j.status for j in done} == {JobStatus.FAILED}
    assert all(j.attempts == 1 for j in done)
    assert (await rig.ledger.balance("acct")).available == 10_000
    assert len(await rig.ledger.dead_letters()) == 3


@pytest.mark.profile({"run_time": {"kind": "uniform", "low": 0.05, "high": 0.15}})
@pytest.mark.overrides({"vendors.fal": {"concurrency": 2, "poll_interval": 0.05}})
async def test_slots_bound_what_the_vendor_sees(rig: Rig) -> None:
    jobs = await rig.open("flux-schnell", 20)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)
    assert {j.status for j in done} == {JobStatus.COMPLETED}
    assert rig.fakes["fal"].snapshot()["tasks"]["max_in_flight"] == 2


@pytest.mark.profile({"run_time": {"kind": "fixed", "seconds": 1.0}, "webhooks": {"lost": 1.0}})
async def test_a_restarted_processor_polls_instead_of_resubmitting(rig: Rig) -> None:
    jobs = await rig.open("flux-schnell", 3)
    await rig.dispatch(jobs)
    while {j.status for j in await rig.ledger.get_jobs([j.id for j in jobs]) if j} != {
        JobStatus.PROCESSING
    }:
        await asyncio.sleep(0.02)
    await rig.processors["fal"].stop()
    rig.processors["fal"] = rig.make_processor("fal", seed=1)
    await rig.processors["fal"].start()  # loads its processing jobs from the ledger
    done = await rig.wait(jobs)
    assert {j.status for j in done} == {JobStatus.COMPLETED}
    stats = rig.fakes["fal"].snapshot()
    assert stats["tasks"]["created"] == 3
    assert stats["duplicate_attempts"] == []


@pytest.mark.profile({"run_time": {"kind": "fixed", "seconds": 5.0}})
async def test_cancel_releases_and_cancels_the_vendor_task(rig: Rig) -> None:
    [job] = await rig.open("flux-schnell")
    await rig.dispatch([job])
    while (await rig.ledger.get_job(job.id)).status is not JobStatus.PROCESSING:
        await asyncio.sleep(0.02)
    await apply_op(rig.ledger, Cancel(job.id))
    await rig.processors["fal"].cancel_tasks([job.id])
    [done] = await rig.wait([job])
    assert done.status is JobStatus.CANCELED
    for _ in range(100):
        if (await rig.processors["fal"].stats())["inflight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await rig.processors["fal"].stats())["inflight"] == 0
    assert rig.fakes["fal"].snapshot()["tasks"]["canceled"] == 1
    assert (await rig.ledger.balance("acct")).available == 10_000


async def test_a_queued_job_past_its_deadline_fails_and_refunds(rig: Rig) -> None:
    job = await apply_op(
        rig.ledger,
        OpenJob(
            new_job_id(time.time(), IDS),
            "acct",
            "flux-schnell",
            {"prompt": "late"},
            3,
            "t" * 32,
            "fal",
            time.time() - 1,
        ),
    )
    await rig.dispatch([job])
    [done] = await rig.wait([job])
    assert done.status is JobStatus.FAILED
    assert "deadline" in (done.error or "")


async def _until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0) -> None:
    """Until ``check()`` (a plain or an async predicate) holds."""
    deadline = time.monotonic() + timeout
    while not await _value(check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.profile({"never_finish": 1.0, "cancel": {"server_error": 1.0}})
@pytest.mark.overrides({"vendors.fal": {"stuck_after": 0.5, "poll_interval": 0.1}})
async def test_a_task_given_up_keeps_its_slot_until_the_vendor_confirms_the_cancel(
    rig: Rig,
) -> None:
    # Found by the chaos suite (stuck-tasks): the slot was given back although the cancel
    # failed, so the task kept running at the vendor next to the retry: over the limit.
    fal = rig.fakes["fal"]
    [job] = await rig.open("flux-schnell")
    await rig.dispatch([job])

    async def cancel_refused() -> bool:
        return fal.snapshot()["faults"].get("server_error", 0) >= 2

    await _until(cancel_refused)
    assert (await rig.processors["fal"].stats())["inflight"] == 1
    assert fal.snapshot()["tasks"]["created"] == 1  # no retry while the task may still run

    fal.update_profile({"cancel": {"server_error": 0.0}, "never_finish": 0.0})

    async def retried_elsewhere() -> bool:
        return fal.snapshot()["tasks"]["created"] >= 2

    await _until(retried_elsewhere)
    tasks = fal.snapshot()["task_info"]
    first = next(t for t in tasks.values() if t["attempt"] == "1")
    assert first["status"] == "canceled"
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED


@pytest.mark.profile({"never_finish": 1.0})
async def test_a_cancel_reaching_a_restarted_processor_still_cancels_the_vendor_task(
    rig: Rig,
) -> None:
    # Found by the chaos suite (cancel-under-kills): the processor restarted after the
    # ledger canceled the job, so it did not load it and ignored the cancel message; the
    # vendor task ran forever, over the vendor's limit.
    fal = rig.fakes["fal"]
    [job] = await rig.open("flux-schnell")
    await rig.dispatch([job])
    while (await rig.ledger.get_job(job.id)).status is not JobStatus.PROCESSING:
        await asyncio.sleep(0.02)
    await rig.processors["fal"].stop()  # the processor dies ...
    await apply_op(rig.ledger, Cancel(job.id))  # ... the client cancels meanwhile ...
    rig.processors["fal"] = rig.make_processor("fal", seed=1)
    await rig.processors["fal"].start()  # ... it restarts without the job ...
    await rig.processors["fal"].cancel_tasks([job.id])  # ... and the cancel arrives

    async def vendor_task_canceled() -> bool:
        return bool(fal.snapshot()["tasks"]["canceled"] == 1)

    await _until(vendor_task_canceled)
    await _until(lambda: _no_slot_taken(rig))
    assert fal.snapshot()["tasks"]["in_flight"] == 0
    assert (await rig.ledger.balance("acct")).available == 10_000


async def _no_slot_taken(rig: Rig, vendor: str = "fal") -> bool:
    return bool((await rig.processors[vendor].stats())["inflight"] == 0)


class _DiesBeforeMarking:
    """The ledger as a processor sees it, except that a MarkProcessing never returns (the
    processor is killed after its submit, before the task id is recorded) or, with
    ``fail``, raises (the ledger is gone at that moment)."""

    def __init__(self, ledger: Ledger, fail: bool = False) -> None:
        self._ledger = ledger
        self._fail = fail

    async def execute_many(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        if any(isinstance(op, MarkProcessing) for op in ops):
            if self._fail:
                raise LedgerUnavailable("the ledger actor died")
            await asyncio.Event().wait()
        return await self._ledger.execute_many(ops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


async def _lose_a_submit(rig: Rig, vendor: str, model: str) -> Job:
    """Submit one job through a processor that dies before recording the task id, then
    start the processor again; returns the job."""
    [job] = await rig.open(model)
    await rig.processors[vendor].stop()
    dying = rig.make_processor(vendor, ledger=_DiesBeforeMarking(rig.ledger))  # type: ignore[arg-type]
    await dying.start()
    await dying.dispatch([job])
    fake = rig.fakes[vendor]
    await _until(lambda: fake.snapshot()["tasks"]["created"] == 1)
    await dying.stop()
    assert (await rig.ledger.get_job(job.id)).status is JobStatus.QUEUED
    fake.update_profile({"never_finish": 0.0})  # the retry finishes
    rig.processors[vendor] = rig.make_processor(vendor, seed=1)
    await rig.processors[vendor].start()
    return job


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else result


@pytest.mark.profile({"never_finish": 1.0})
@pytest.mark.overrides(
    {"vendors.replicate": {"concurrency": 1, "max_task_time": 1.5, "submit_timeout": 1.0}}
)
async def test_a_task_whose_id_was_never_recorded_keeps_a_slot_until_the_vendor_ends_it(
    rig: Rig,
) -> None:
    # Found by the chaos suite (cancel-under-kills): a processor killed between submit and
    # MarkProcessing left a vendor task nobody knew of; the restarted processor started a
    # new attempt next to it, over the vendor's limit, and the task ran forever.
    replicate = rig.fakes["replicate"]
    job = await _lose_a_submit(rig, "replicate", "video-short")
    stats = await rig.processors["replicate"].stats()
    assert (stats["unrecorded"], stats["inflight"]) == (1, 1)
    [done] = await rig.wait([job])
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 2)
    snapshot = replicate.snapshot()
    first = next(t for t in snapshot["task_info"].values() if t["attempt"] == "1")
    assert first["status"] == "canceled"  # by Cancel-After: replicate ended it itself
    assert snapshot["tasks"]["max_in_flight"] == 1
    assert snapshot["duplicate_attempts"] == []
    await _until(lambda: _no_slot_taken(rig, "replicate"))


@pytest.mark.profile({"never_finish": 1.0})
@pytest.mark.overrides({"vendors.fal": {"concurrency": 1, "max_task_time": 60.0}})
async def test_the_webhook_of_an_unrecorded_task_frees_its_slot(rig: Rig) -> None:
    fal = rig.fakes["fal"]
    job = await _lose_a_submit(rig, "fal", "flux-schnell")
    [orphan] = fal.snapshot()["task_info"].items()
    assert orphan[1]["webhook_url"].endswith(f"?jobline_job_id={job.id}&jobline_attempt=1")
    await asyncio.sleep(0.3)
    assert (await rig.processors["fal"].stats())["inflight"] == 1  # the new attempt waits
    assert fal.snapshot()["tasks"]["created"] == 1
    ended = TaskStatus(TaskState.FAILED, error="request_timeout")
    await rig.processors["fal"].on_webhooks(
        [WebhookEvent("fal", "msg_1", orphan[0], ended, job_id=job.id, attempt=1)]
    )
    [done] = await rig.wait([job], timeout=10)  # long before max_task_time
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 2)


@pytest.mark.profile({"never_finish": 1.0})
async def test_an_attempt_that_cannot_record_its_task_cancels_it(rig: Rig) -> None:
    fal = rig.fakes["fal"]
    [job] = await rig.open("flux-schnell")
    await rig.processors["fal"].stop()
    rig.processors["fal"] = rig.make_processor("fal", ledger=_DiesBeforeMarking(rig.ledger, True))  # type: ignore[arg-type]
    await rig.processors["fal"].start()
    await rig.dispatch([job])
    await _until(lambda: fal.snapshot()["tasks"]["canceled"] == 1)
    await _until(lambda: _no_slot_taken(rig))
    assert fal.snapshot()["tasks"]["in_flight"] == 0


@pytest.mark.profile({"never_finish": 1.0, "cancel": {"server_error": 1.0}})
async def test_an_expired_job_whose_cancel_failed_has_its_task_canceled_later(
    rig: Rig, tmp_path: Path
) -> None:
    # The sweeper expires a processing job nobody follows (its processor died); its one
    # cancel fails, so the task would run on, uncounted. The restarted processor, which
    # never loaded the job, cancels it until the vendor confirms.
    fal = rig.fakes["fal"]
    job = await apply_op(
        rig.ledger,
        OpenJob(
            new_job_id(time.time(), IDS),
            "acct",
            "flux-schnell",
            {"prompt": "late"},
            3,
            "t" * 32,
            "fal",
            time.time() + 1,
        ),
    )
    await rig.dispatch([job])
    while (await rig.ledger.get_job(job.id)).status is not JobStatus.PROCESSING:
        await asyncio.sleep(0.02)
    await rig.processors["fal"].stop()  # the processor dies; it restarts below
    rig.processors["fal"] = rig.make_processor("fal", seed=1)
    sweeper: Sweeper = rig.build(SWEEPER)
    await asyncio.sleep(max(0.0, job.deadline - time.time()))
    report = await sweeper.sweep_once()
    assert report.expired == 1 and report.errors == []
    await rig.processors["fal"].start()  # restarted: the job is failed, so not loaded
    assert (await rig.ledger.get_job(job.id)).status is JobStatus.FAILED
    assert fal.snapshot()["tasks"]["in_flight"] == 1  # the sweeper's cancel was refused
    assert (await rig.processors["fal"].stats())["inflight"] == 1  # its slot is held
    fal.update_profile({"cancel": {"server_error": 0.0}})
    await _until(lambda: fal.snapshot()["tasks"]["canceled"] == 1)
    await _until(lambda: _no_slot_taken(rig))
    await sweeper.stop()
