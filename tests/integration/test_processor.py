"""VendorProcessor in one process (``tests.integration.processor_rig``): a real ledger
file, real fake vendors on loopback, the real vendor adapters and result store, no Ray."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from actors.processor import VendorProcessor
from actors.sweeper import Sweeper
from actors.wiring import SWEEPER, Customization
from runtime.errors import LedgerFault, LedgerUnavailable
from runtime.ledger import Ledger, new_job_id
from runtime.models import (
    Cancel,
    Job,
    LedgerOp,
    MarkProcessing,
    OpenJob,
    Outcome,
    RecordOrphan,
)
from runtime.results import result_key_for
from runtime.states import JobStatus
from runtime.vendors import TaskState, TaskStatus, VendorClient, WebhookEvent
from tests.integration.processor_rig import IDS, Rig, no_orphan, no_slot_taken, until
from tests.ledger_ops import apply_op
from vendors_fake.png import expected_png


def untraced(rig: Rig) -> dict[str, dict[str, int]]:
    """Requests the fakes saw without a job's trace id, by vendor and route (DESIGN §3:
    every request made for a job carries it; fal's key set is nobody's job)."""
    missing = {
        name: {r: n for r, n in fake.snapshot()["trace_id_missing"].items() if r != "jwks"}
        for name, fake in ((name, rig.fakes[name]) for name in rig.fakes.urls)
    }
    return {name: routes for name, routes in missing.items() if routes}


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
    await until(lambda: retries_by_reason(replicate).get("VendorTaskFailed", 0) >= 1)
    rig.fakes["replicate"].update_profile({"failure": 0.0})  # the next attempt succeeds
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED and done.attempts >= 2
    assert set(retries_by_reason(replicate)) == {"VendorTaskFailed"}


@pytest.mark.profile({"never_finish": 1.0})
@pytest.mark.overrides({"models.video-short": {"max_run_time": 0.5}})
async def test_a_retry_after_giving_up_on_a_task_counts_a_timeout(rig: Rig) -> None:
    replicate = rig.processors["replicate"]
    [job] = await rig.open("video-short")
    await rig.dispatch([job])
    await until(lambda: retries_by_reason(replicate).get("VendorTimeout", 0) >= 1)
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
    assert len((await rig.ledger.dead_letters()).items) == 3


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
    await rig.until_processing(job)
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
    assert untraced(rig) == {}  # the cancel carried the job's trace id too


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


@pytest.mark.profile({"never_finish": 1.0, "cancel": {"server_error": 1.0}})
@pytest.mark.overrides({"models.flux-schnell": {"max_run_time": 0.5}})
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

    await until(cancel_refused)
    assert (await rig.processors["fal"].stats())["inflight"] == 1
    assert fal.snapshot()["tasks"]["created"] == 1  # no retry while the task may still run

    fal.update_profile({"cancel": {"server_error": 0.0}, "never_finish": 0.0})

    async def retried_elsewhere() -> bool:
        return fal.snapshot()["tasks"]["created"] >= 2

    await until(retried_elsewhere)
    tasks = fal.snapshot()["task_info"]
    first = next(t for t in tasks.values() if t["attempt"] == "1")
    assert first["status"] == "canceled"
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED
    assert untraced(rig) == {}


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
    await rig.until_processing(job)
    await rig.processors["fal"].stop()  # the processor dies ...
    await apply_op(rig.ledger, Cancel(job.id))  # ... the client cancels meanwhile ...
    rig.processors["fal"] = rig.make_processor("fal", seed=1)
    await rig.processors["fal"].start()  # ... it restarts without the job ...
    await rig.processors["fal"].cancel_tasks([job.id])  # ... and the cancel arrives

    async def vendor_task_canceled() -> bool:
        return bool(fal.snapshot()["tasks"]["canceled"] == 1)

    await until(vendor_task_canceled)
    await until(lambda: no_slot_taken(rig))
    assert fal.snapshot()["tasks"]["in_flight"] == 0
    assert (await rig.ledger.balance("acct")).available == 10_000
    assert untraced(rig) == {}


@pytest.mark.profile({"never_finish": 1.0, "cancel": {"server_error": 1.0}})
async def test_a_processor_killed_before_the_vendor_confirmed_a_cancel_cancels_it_after_restart(
    rig: Rig,
) -> None:
    # The processor took the cancel, and was killed before the vendor confirmed it. The
    # ledger had ended the job, so a restarted processor never loaded it: the task ran on
    # at the vendor, uncounted, next to a new one in its slot.
    fal = rig.fakes["fal"]
    [job] = await rig.open("flux-schnell")
    await rig.dispatch([job])
    await rig.until_processing(job)
    await apply_op(rig.ledger, Cancel(job.id))
    await rig.processors["fal"].cancel_tasks([job.id])  # its first cancel is refused ...
    await until(lambda: fal.snapshot()["faults"].get("server_error", 0) >= 1)
    await rig.processors["fal"].stop()  # ... and the processor is killed
    rig.processors["fal"] = rig.make_processor("fal", seed=1)
    await rig.processors["fal"].start()
    assert fal.snapshot()["tasks"]["in_flight"] == 1
    assert (await rig.processors["fal"].stats())["inflight"] == 1  # the task keeps its slot
    fal.update_profile({"cancel": {"server_error": 0.0}})
    await until(lambda: fal.snapshot()["tasks"]["canceled"] == 1)
    await until(lambda: no_slot_taken(rig))
    await until(lambda: no_orphan(rig))  # ended once confirmed
    assert fal.snapshot()["tasks"]["created"] == 1
    assert (await rig.ledger.balance("acct")).available == 10_000
    assert untraced(rig) == {}


@pytest.mark.profile({"never_finish": 1.0, "cancel": {"server_error": 1.0}})
@pytest.mark.overrides({"vendors.fal": {"concurrency": 1}})
async def test_a_job_canceled_while_its_processor_was_down_keeps_its_slot_from_the_restart(
    rig: Rig,
) -> None:
    # Found by CI (chaos cancel-under-kills under load: replicate 7 in flight, limit 6):
    # two jobs were canceled while their processor restarted. The restarted processor did
    # not load them (ended) and started queued jobs in every slot before the cancel
    # messages reached it; their tasks still ran at the vendor. The ledger's Cancel now
    # keeps the task as an orphan, which the restarted processor holds before any attempt.
    fal = rig.fakes["fal"]
    [running, waiting] = await rig.open("flux-schnell", 2)
    await rig.dispatch([running])
    await rig.until_processing(running)
    await rig.processors["fal"].stop()  # the processor dies ...
    await apply_op(rig.ledger, Cancel(running.id))  # ... its job is canceled meanwhile
    rig.processors["fal"] = rig.make_processor("fal", seed=1)
    await rig.processors["fal"].start()  # loads `waiting`, queued, and the canceled task
    await until(lambda: fal.snapshot()["faults"].get("server_error", 0) >= 2)
    assert fal.snapshot()["tasks"]["created"] == 1  # `waiting` waits: the slot is taken
    assert (await rig.processors["fal"].stats())["inflight"] == 1
    fal.update_profile({"cancel": {"server_error": 0.0}, "never_finish": 0.0})
    [done] = await rig.wait([waiting])
    assert done.status is JobStatus.COMPLETED
    assert fal.snapshot()["tasks"]["canceled"] == 1
    assert fal.snapshot()["tasks"]["max_in_flight"] == 1
    await until(lambda: no_orphan(rig))
    await rig.processors["fal"].cancel_tasks([running.id])  # the late cancel message
    await until(lambda: no_slot_taken(rig))
    assert fal.snapshot()["tasks"]["created"] == 2
    assert untraced(rig) == {}


class _DiesBeforeMarking:
    """The ledger as a processor sees it, except that a MarkProcessing never returns (the
    processor is killed after its submit, before the task id is recorded) or, with
    ``fail``, raises that error (the first ``times`` times; then it is recorded)."""

    def __init__(
        self, ledger: Ledger, fail: Exception | None = None, times: int = 1_000_000
    ) -> None:
        self._ledger = ledger
        self._fail = fail
        self._times = times

    async def execute_many(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        if any(isinstance(op, MarkProcessing) for op in ops) and self._times > 0:
            if self._fail is not None:
                self._times -= 1
                raise self._fail
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
    await until(lambda: fake.snapshot()["tasks"]["created"] == 1)
    await dying.stop()
    assert (await rig.ledger.get_job(job.id)).status is JobStatus.QUEUED
    fake.update_profile({"never_finish": 0.0})  # the retry finishes
    rig.processors[vendor] = rig.make_processor(vendor, seed=1)
    await rig.processors[vendor].start()
    return job


@pytest.mark.profile({"run_time": {"kind": "fixed", "seconds": 1.0}})
@pytest.mark.overrides({"vendors.replicate": {"concurrency": 1}})
async def test_a_restarted_processor_adopts_the_task_its_stopped_submit_created(
    rig: Rig,
) -> None:
    # Found by the chaos suite (cancel-under-kills): a processor killed between submit and
    # MarkProcessing left a vendor task nobody knew of; the restarted processor started a
    # new attempt next to it, over the vendor's limit. replicate lists its predictions:
    # the restarted processor finds the task by its webhook URL and follows it.
    replicate = rig.fakes["replicate"]
    job = await _lose_a_submit(rig, "replicate", "video-short")
    [done] = await rig.wait([job])
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)
    snapshot = replicate.snapshot()
    assert snapshot["tasks"]["created"] == 1 and snapshot["tasks"]["max_in_flight"] == 1
    [task] = snapshot["task_info"].values()
    assert task["delivered"] and done.vendor_task_id == snapshot["task_ids"][0]
    assert (await rig.processors["replicate"].stats())["in_doubt"]["adopted"] == 1
    await until(lambda: no_slot_taken(rig, "replicate"))
    assert untraced(rig) == {}  # the list look-ups carried the job's trace id too


class _AnswerHeard(Customization):
    """Every vendor client tells ``answered`` when a submit has its answer (the task id)."""

    def __init__(self) -> None:
        self.answered = asyncio.Event()

    def vendor_client(self, client: VendorClient) -> VendorClient:
        answered = self.answered

        class Heard:
            def __getattr__(self, name: str) -> Any:
                return getattr(client, name)

            async def submit(self, *args: Any, **kwargs: Any) -> str:
                task_id: str = await client.submit(*args, **kwargs)
                answered.set()
                return task_id

        return cast(VendorClient, Heard())


@pytest.mark.parametrize(
    ("vendor", "model"), [("replicate", "video-short"), ("fal", "flux-schnell")]
)
@pytest.mark.profile({"run_time": {"kind": "fixed", "seconds": 1.0}})
@pytest.mark.overrides({"vendors.replicate": {"concurrency": 1}, "vendors.fal": {"concurrency": 1}})
async def test_a_processor_stopped_while_its_task_id_waits_to_ride_loses_nothing(
    rig: Rig, vendor: str, model: str
) -> None:
    # The task id of a submit that answered waits up to RECORD_LINGER to ride in the
    # processor's next ledger call (LedgerWriter.op(linger=...)). A processor that stops
    # then never sends it: the job is left with its submit in doubt, and the restarted
    # processor adopts the task (replicate: its list; fal: its webhook naming job and
    # attempt): run once, billed once, captured once.
    [job] = await rig.open(model)
    await rig.processors[vendor].stop()
    heard = _AnswerHeard()
    stopping = rig.make_processor(vendor, customization=heard)
    await stopping.start()
    await stopping.dispatch([job])
    await heard.answered.wait()
    await stopping.stop()  # at once: its MarkProcessing lingers still
    left = await rig.ledger.get_job(job.id)
    assert (left.status, left.attempts, left.vendor_task_id) == (JobStatus.QUEUED, 1, None)
    rig.processors[vendor] = rig.make_processor(vendor, seed=1)
    await rig.processors[vendor].start()
    [done] = await rig.wait([job])
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)
    snapshot = rig.fakes[vendor].snapshot()
    assert snapshot["tasks"]["created"] == 1 and snapshot["duplicate_attempts"] == []
    assert done.vendor_task_id == snapshot["task_ids"][0]
    assert (await rig.processors[vendor].stats())["in_doubt"]["adopted"] == 1
    balance = await rig.ledger.balance("acct")
    assert (balance.balance, balance.held) == (10_000 - job.cost, 0)  # one capture


@pytest.mark.profile({"never_finish": 1.0, "webhooks": {"lost": 1.0}, "max_task_time": 1.5})
@pytest.mark.overrides(
    {
        "vendors.fal": {
            "concurrency": 1,
            "max_task_time": 1.5,
            "orphan_wait": 0.3,
            "submit_timeout": 1.0,
        }
    }
)
async def test_a_task_that_never_shows_itself_keeps_a_slot_until_the_vendor_ends_it(
    rig: Rig,
) -> None:
    # fal lists nothing and this task's webhook is lost: after orphan_wait the job moves on,
    # and the orphan keeps a slot until the vendor must have ended it (max_task_time), so
    # the new attempt (concurrency 1) waits for it: never two tasks in flight.
    fal = rig.fakes["fal"]
    job = await _lose_a_submit(rig, "fal", "flux-schnell")
    fal.update_profile({"webhooks": {"lost": 0.0}})
    stats = await rig.processors["fal"].stats()
    assert stats["inflight"] == 1
    [done] = await rig.wait([job])
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 2)
    snapshot = fal.snapshot()
    first = next(t for t in snapshot["task_info"].values() if t["attempt"] == "1")
    assert first["status"] == "failed"  # the vendor ended it at its own limit
    assert snapshot["tasks"]["max_in_flight"] == 1
    assert snapshot["duplicate_attempts"] == []
    assert (await rig.processors["fal"].stats())["in_doubt"]["orphaned"] == 1
    await until(lambda: no_slot_taken(rig, "fal"))
    assert untraced(rig) == {}


async def test_an_orphan_found_on_start_is_looked_up_with_its_jobs_trace_id(rig: Rig) -> None:
    # An orphan read back from the ledger once sent its list look-ups with no trace id.
    [job] = await rig.open("video-short")
    await apply_op(rig.ledger, Cancel(job.id))
    now = time.time()
    await apply_op(rig.ledger, RecordOrphan(job.id, 1, "replicate", "m", now - 1, now + 30))
    await rig.processors["replicate"].stop()
    rig.processors["replicate"] = rig.make_processor("replicate", seed=1)
    await rig.processors["replicate"].start()  # holds the orphan, looks it up in the list
    replicate = rig.fakes["replicate"]
    await until(lambda: "predictions.list" in replicate.snapshot()["requests"])
    await until(lambda: no_slot_taken(rig, "replicate"))  # the list showed none: let go
    assert untraced(rig) == {}


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
async def test_an_attempt_whose_task_record_is_refused_cancels_it(rig: Rig) -> None:
    fal = rig.fakes["fal"]
    [job] = await rig.open("flux-schnell")
    await rig.processors["fal"].stop()
    refused = _DiesBeforeMarking(rig.ledger, LedgerFault("MarkProcessing", "a bug"))
    rig.processors["fal"] = rig.make_processor("fal", ledger=refused)  # type: ignore[arg-type]
    await rig.processors["fal"].start()
    await rig.dispatch([job])
    await until(lambda: fal.snapshot()["tasks"]["canceled"] == 1)
    await until(lambda: no_slot_taken(rig))
    assert fal.snapshot()["tasks"]["in_flight"] == 0
    assert untraced(rig) == {}


async def test_an_attempt_keeps_its_task_while_the_ledger_cannot_record_it_for_a_moment(
    rig: Rig,
) -> None:
    """The ledger restarting as a task's id is recorded: the record is sent again until it
    lands, and the task (which the vendor bills) is followed, not cancelled."""
    fal = rig.fakes["fal"]
    [job] = await rig.open("flux-schnell")
    await rig.processors["fal"].stop()
    blip = _DiesBeforeMarking(rig.ledger, LedgerUnavailable("the ledger actor died"), times=2)
    rig.processors["fal"] = rig.make_processor("fal", ledger=blip)  # type: ignore[arg-type]
    await rig.processors["fal"].start()
    await rig.dispatch([job])
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED and done.attempts == 1
    assert fal.snapshot()["tasks"]["canceled"] == 0


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
    await rig.until_processing(job)
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
    await until(lambda: fal.snapshot()["tasks"]["canceled"] == 1)
    await until(lambda: no_slot_taken(rig))
    await sweeper.stop()
    assert untraced(rig) == {}  # the sweeper's cancel and the processor's carried it


@pytest.mark.profile({"never_finish": 1.0})
@pytest.mark.overrides({"vendors.fal": {"poll_interval": 0.1, "concurrency": 1}})
async def test_an_outage_seen_only_by_status_reads_opens_the_circuit_and_the_queue_fails_over(
    rig: Rig,
) -> None:
    # Found by a newcomer running the demo: with every fal slot holding a running task, an
    # outage (503 to every request) went unseen: nothing was submitted, failed status reads
    # did not count against the circuit, and fal's queued jobs waited the outage out.
    jobs = await rig.open("flux-schnell", 2)
    await rig.dispatch(jobs)

    async def one_processing() -> bool:
        now = await rig.ledger.get_jobs([j.id for j in jobs])
        return sum(j is not None and j.status is JobStatus.PROCESSING for j in now) == 1

    await until(one_processing)
    rig.fakes["fal"].start_outage(60)

    async def failed_over() -> bool:
        now = await rig.ledger.get_jobs([j.id for j in jobs])
        return any(j is not None and j.vendor == "replicate" for j in now)

    await until(failed_over)
    stats = await rig.processors["fal"].stats()
    assert stats["circuit"] == "open" and stats["failovers"] == 1, stats
    assert rig.fakes["fal"].snapshot()["tasks"]["created"] == 1  # nothing submitted meanwhile


def status_reads(rig: Rig, vendor: str = "fal") -> int:
    route = "requests.status" if vendor == "fal" else "predictions.get"
    return sum(rig.fakes[vendor].snapshot()["requests"].get(route, {}).values())


@pytest.mark.profile({"run_time": {"kind": "fixed", "seconds": 0.3}})
@pytest.mark.overrides({"vendors.fal": {"poll_interval": 0.1, "fallback_poll_interval": 3.0}})
async def test_tasks_are_not_polled_while_webhooks_arrive_and_a_lost_one_is_polled(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # Field case (issue 16): with webhooks arriving, ~40% of tasks were polled in a race
    # with their webhook (for fal two reads: the status and the result).
    caplog.set_level(logging.INFO)
    jobs = await rig.open("flux-schnell", 10)
    await rig.dispatch(jobs)
    assert {j.status for j in await rig.wait(jobs)} == {JobStatus.COMPLETED}
    assert status_reads(rig) > 0  # 0.3-s tasks polled from 0.1 s on
    before = status_reads(rig)
    jobs = await rig.open("flux-schnell", 5)
    await rig.dispatch(jobs)
    assert {j.status for j in await rig.wait(jobs)} == {JobStatus.COMPLETED}
    assert status_reads(rig) == before  # their webhooks ended them, no poll ran
    assert (await rig.processors["fal"].stats())["webhooks_arriving"] is True
    rig.fakes["fal"].update_profile({"webhooks": {"lost": 1.0}})
    [job] = await rig.open("flux-schnell")
    started = time.monotonic()
    await rig.dispatch([job])
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED  # found by the fallback poll
    assert time.monotonic() - started >= 2.5
    assert status_reads(rig) > before

    async def lost() -> bool:  # its webhook did not follow within 5 s: polls are back
        stats = await rig.processors["fal"].stats()
        return bool(stats["webhooks_lost"] == 1 and not stats["webhooks_arriving"])

    await until(lost, timeout=10)
    said = [r.getMessage() for r in caplog.records if getattr(r, "vendor", "") == "fal"]
    assert [m for m in said if m.startswith("webhooks arrive")] == [
        "webhooks arrive: a task's status is first polled after 3 s (fallback_poll_interval)"
    ]
    assert any(m.startswith("a webhook did not arrive") for m in said)  # an operator sees it
    metrics = {
        (s.name, dict(s.labels).get("vendor")): s.value
        for family in await rig.processors["fal"].collect_metrics()
        for s in family.samples
    }
    assert metrics[("jobline_vendor_webhooks_lost_total", "fal")] == 1
    assert metrics[("jobline_vendor_webhooks_arriving", "fal")] == 0


@pytest.mark.profile({"run_time": {"kind": "fixed", "seconds": 0.3}})
@pytest.mark.overrides({"vendors.fal": {"poll_interval": 0.1, "fallback_poll_interval": 3.0}})
async def test_late_webhooks_put_polls_back_to_the_poll_interval(rig: Rig) -> None:
    # Review (wave 9): webhooks 6 s late kept polls waiting for the fallback, every task
    # holding its slot until then, and the vendor's backlog grew without end.
    jobs = await rig.open("flux-schnell", 12)
    await rig.dispatch(jobs)
    await rig.wait(jobs)
    assert (await rig.processors["fal"].stats())["webhooks_arriving"] is True
    rig.fakes["fal"].update_profile(
        {"webhooks": {"delayed": 1.0, "delay": {"kind": "fixed", "seconds": 4.0}}}
    )
    [first] = await rig.open("flux-schnell")
    await rig.dispatch([first])
    await rig.wait([first])  # found by the 3-s poll: the webhook was later than that
    assert (await rig.processors["fal"].stats())["webhooks_arriving"] is False
    jobs = await rig.open("flux-schnell", 8)
    started = time.monotonic()
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)
    assert {j.status for j in done} == {JobStatus.COMPLETED}
    assert time.monotonic() - started < 2.5  # polled from 0.1 s on, not waiting 3 s
