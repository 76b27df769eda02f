"""Schema 6: every output of a completed job, and orphans (submits in doubt left behind)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.ledger import Ledger
from runtime.ledger_migrations import MIGRATIONS, SCHEMA_VERSION
from runtime.models import (
    Cancel,
    Complete,
    CreateAccount,
    EndOrphan,
    Grant,
    Orphan,
    RecordOrphan,
    StoredOutput,
)
from tests.ledger_ops import Clock, apply_op
from tests.unit.test_ledger import open_job, to_processing

OUTPUTS = (
    StoredOutput("job-1.png", "image/png", 120, "a.png", "images[0]"),
    StoredOutput("job-1-1.png", "image/png", 130, "b.png", "images[1]"),
    StoredOutput("job-1-2.json", "application/json", 42, None, "*"),
)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    ledger = await Ledger.open(tmp_path / "ledger.db", Clock())
    await apply_op(ledger, CreateAccount("acct", "hash-acct"))
    await apply_op(ledger, Grant("acct", 1000, "initial"))
    yield ledger
    await ledger.close()


def test_outputs_and_orphans_arrive_with_schema_six() -> None:
    six = " ".join(step for step in MIGRATIONS[5] if isinstance(step, str))
    assert "ADD COLUMN outputs" in six and "CREATE TABLE orphans" in six
    assert SCHEMA_VERSION >= 6


async def test_a_completed_job_keeps_every_output(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1")
    job = await apply_op(ledger, Complete("job-1", OUTPUTS[0].key, OUTPUTS))
    assert job.outputs == OUTPUTS and job.result_key == "job-1.png"
    assert (await ledger.get_job("job-1")).outputs == OUTPUTS
    api = job.to_api()
    assert [o["url"] for o in api["outputs"]] == [f"/v1/jobs/job-1/outputs/{i}" for i in range(3)]
    assert api["outputs"][2] == {
        "index": 2,
        "content_type": "application/json",
        "size": 42,
        "name": None,
        "url": "/v1/jobs/job-1/outputs/2",
    }


async def test_completions_of_a_batch_keep_each_jobs_own_outputs(ledger: Ledger) -> None:
    """Complete runs share one UPDATE (``_Batch.apply_run``); each job keeps its list."""
    ids = [f"job-{i}" for i in range(5)]
    for job_id in ids:
        await to_processing(ledger, job_id)
    ops = [
        Complete(job_id, f"{job_id}.png", (StoredOutput(f"{job_id}.png", "image/png", i + 1),))
        for i, job_id in enumerate(ids)
    ]
    outcomes = await ledger.execute_many(ops)
    assert all(o.changed for o in outcomes)
    for i, job_id in enumerate(ids):
        assert (await ledger.get_job(job_id)).outputs[0].size == i + 1


async def test_a_job_completed_before_schema_six_shows_its_one_result(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1")
    job = await apply_op(ledger, Complete("job-1", "job-1.mp4"))
    assert job.outputs == ()
    assert job.to_api()["outputs"] == [
        {
            "index": 0,
            "content_type": "video/mp4",
            "size": None,
            "name": None,
            "url": "/v1/jobs/job-1/outputs/0",
        }
    ]


async def test_orphans_are_open_until_they_end_or_their_time_passes(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1")
    trace = (await ledger.get_job("job-1")).trace_id  # an orphan's requests carry its job's
    assert trace
    await apply_op(ledger, RecordOrphan("job-1", 1, "fal", "m", 900.0, 2_000.0))
    replay = await ledger.execute(RecordOrphan("job-1", 1, "fal", "m", 900.0, 9_999.0))
    assert not replay.changed  # idempotent: the first record stands
    await apply_op(ledger, RecordOrphan("job-1", 2, "fal", "m", 950.0, 3_000.0))
    assert await ledger.orphans("fal", 1_500.0) == [
        Orphan("job-1", 1, "fal", "m", 900.0, 2_000.0, trace),
        Orphan("job-1", 2, "fal", "m", 950.0, 3_000.0, trace),
    ]
    assert await ledger.orphans("replicate", 1_500.0) == []
    assert await ledger.orphans("fal", 2_500.0) == [
        Orphan("job-1", 2, "fal", "m", 950.0, 3_000.0, trace)
    ]
    assert (await ledger.execute(EndOrphan("job-1", 2, "req-9"))).changed
    assert not (await ledger.execute(EndOrphan("job-1", 2, "req-9"))).changed
    assert await ledger.orphans("fal", 1_500.0) == [
        Orphan("job-1", 1, "fal", "m", 900.0, 2_000.0, trace)
    ]


async def test_the_task_of_an_ended_job_is_kept_as_an_orphan_with_its_id(ledger: Ledger) -> None:
    # A job canceled before the vendor confirmed its task's cancel: a processor restarted
    # meanwhile reads the task id back and cancels it (actors.processor.start).
    await to_processing(ledger, "job-1")
    trace = (await ledger.get_job("job-1")).trace_id
    await apply_op(ledger, RecordOrphan("job-1", 1, "fal", "m", 900.0, 2_000.0, "req-1"))
    assert await ledger.orphans("fal", 1_000.0) == [
        Orphan("job-1", 1, "fal", "m", 900.0, 2_000.0, trace, "req-1")
    ]
    assert (await ledger.execute(EndOrphan("job-1", 1, "req-1"))).changed
    assert await ledger.orphans("fal", 1_000.0) == []


async def test_canceling_a_processing_job_keeps_its_task_as_an_orphan(ledger: Ledger) -> None:
    # In the Cancel's own transaction: a processor down at that moment finds the task when
    # it restarts, before it starts anything in the task's slot (actors.processor.start).
    await to_processing(ledger, "job-1")
    await open_job(ledger, "job-2")  # queued: no task at the vendor
    await apply_op(ledger, Cancel("job-1"))
    await apply_op(ledger, Cancel("job-2"))
    await apply_op(ledger, Cancel("job-1"))  # a replay records nothing more
    now = 1_000.0  # the fixture's clock
    [orphan] = await ledger.orphans("fal", now)
    assert (orphan.job_id, orphan.attempt, orphan.task_id) == ("job-1", 1, "task-job-1")
    assert orphan.model == "" and orphan.since == now and orphan.until > now + 3600
    assert (await ledger.execute(EndOrphan("job-1", 1, "task-job-1"))).changed
    assert await ledger.orphans("fal", now) == []
