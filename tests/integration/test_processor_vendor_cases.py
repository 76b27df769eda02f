"""Today's processor with the new vendor shapes: it stays sane until the runtime side of
issue 12 gives each case its full treatment (circuit cooldowns per error class, every
output stored, submits in doubt adopted)."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.states import JobStatus
from runtime.vendors import TaskState, TaskStatus, WebhookEvent
from tests.integration.test_processor import Rig, rig  # noqa: F401  (the fixture)
from vendors_fake.png import expected_png


@pytest.mark.profile({"refusal": {"status": 403, "models": ["fal-ai/*"]}})
async def test_a_locked_account_fails_the_job_over_instead_of_failing_it(rig: Rig) -> None:  # noqa: F811
    """Field case 2: fal answered 403 "User is locked. Reason: Exhausted balance": 12 of 12
    jobs failed and were dead-lettered, none reached the second vendor of the route."""
    jobs = await rig.open("flux-schnell", 4)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)
    assert {j.status for j in done} == {JobStatus.COMPLETED}
    assert {j.vendor for j in done} == {"replicate"}
    assert all(j.attempts == 2 for j in done)  # one refused at fal, one served elsewhere
    assert rig.fakes["fal"].snapshot()["faults"]["refused_403"] == 4


@pytest.mark.profile({"run_time": {"kind": "fixed", "seconds": 0.5}})
@pytest.mark.overrides({"vendors.fal": {"poll_interval": 30.0, "stuck_after": 60.0}})
async def test_a_success_whose_webhook_had_no_payload_reads_its_outputs(rig: Rig) -> None:  # noqa: F811
    """Field case 5: fal's webhook said OK with payload null and payload_error: the task
    was run again five times and the job refunded. The processor reads the result instead."""
    [job] = await rig.open("flux-schnell")
    await rig.dispatch([job])
    fake = rig.fakes["fal"]
    deadline = time.monotonic() + 10
    while not any(t.phase.ended for t in fake.tasks.values()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    (task_id,) = fake.tasks
    pending = TaskStatus(TaskState.SUCCEEDED, result_pending=True)
    await rig.processors["fal"].on_webhooks([WebhookEvent("fal", task_id, task_id, pending)])
    [done] = await rig.wait([job], timeout=10)  # long before the 30 s poll
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)
    assert await rig.results.get(done.result_key or "") == expected_png(job.input)
    assert fake.snapshot()["tasks"]["created"] == 1
