"""LedgerWriter's lingering writes (``actors.ledger_writes``): a write that may wait rides
in the actor call of the role's next write, ahead of it, or goes alone when its time is
up; a role that stops drops it unsent. A real ledger file records what landed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from actors.ledger_writes import LedgerWriter
from runtime.clock import SYSTEM_CLOCK
from runtime.errors import LedgerUnavailable
from runtime.ledger import Ledger, new_job_id
from runtime.models import LedgerOp, MarkProcessing, OpenJob, Outcome, StartAttempt
from runtime.states import JobStatus
from tests.ledger_ops import funded_ledger

IDS = random.Random(16)


@contextlib.asynccontextmanager
async def funded(tmp_path: Path) -> AsyncIterator[Ledger]:
    ledger = await funded_ledger(tmp_path / "ledger.db", time.time)
    try:
        yield ledger
    finally:
        await ledger.close()


class CountingLedger:
    """The ledger's ``execute_many``, counting actor calls and what each carried."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.calls: list[list[str]] = []
        self.down = False

    async def execute_many(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        self.calls.append([type(op).__name__ for op in ops])
        if self.down:
            raise LedgerUnavailable("the ledger actor died")
        return await self.ledger.execute_many(ops)


async def _started_jobs(ledger: Ledger, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        job_id = new_job_id(time.time(), IDS)
        await ledger.execute(OpenJob(job_id, "acct", "m", {}, 1, "t" * 32, "fal", time.time() + 60))
        await ledger.execute(StartAttempt(job_id, 1, "fal", 0))
        ids.append(job_id)
    return ids


async def test_a_lingering_write_rides_ahead_of_the_next_write(tmp_path: Path) -> None:
    async with funded(tmp_path) as ledger:
        a, b = await _started_jobs(ledger, 2)
        counting = CountingLedger(ledger)
        writer = LedgerWriter(counting.execute_many, SYSTEM_CLOCK)
        marked = asyncio.create_task(writer.op(MarkProcessing(a, 1, "task-a"), linger=30.0))
        await asyncio.sleep(0.05)
        assert counting.calls == []  # nothing sent: it waits for a write to ride with
        await writer.op(MarkProcessing(b, 1, "task-b"))
        assert counting.calls == [["MarkProcessing", "MarkProcessing"]]  # one call, a first
        outcome = await marked
        assert outcome.value.status is JobStatus.PROCESSING
        assert outcome.value.vendor_task_id == "task-a"


async def test_a_lingering_write_goes_alone_when_its_time_is_up(tmp_path: Path) -> None:
    async with funded(tmp_path) as ledger:
        [a] = await _started_jobs(ledger, 1)
        counting = CountingLedger(ledger)
        writer = LedgerWriter(counting.execute_many, SYSTEM_CLOCK)
        started = time.monotonic()
        outcome = await writer.op(MarkProcessing(a, 1, "task-a"), linger=0.1)
        assert 0.1 <= time.monotonic() - started < 5.0
        assert counting.calls == [["MarkProcessing"]]
        assert (await ledger.get_job(a)).status is JobStatus.PROCESSING
        assert outcome.changed


async def test_a_lingering_write_raises_what_its_call_raised(tmp_path: Path) -> None:
    async with funded(tmp_path) as ledger:
        [a] = await _started_jobs(ledger, 1)
        counting = CountingLedger(ledger)
        counting.down = True
        writer = LedgerWriter(counting.execute_many, SYSTEM_CLOCK)
        with pytest.raises(LedgerUnavailable):
            await writer.op(MarkProcessing(a, 1, "task-a"), linger=0.01)


async def test_a_stopping_role_drops_what_lingers_unsent(tmp_path: Path) -> None:
    async with funded(tmp_path) as ledger:
        [a] = await _started_jobs(ledger, 1)
        counting = CountingLedger(ledger)
        writer = LedgerWriter(counting.execute_many, SYSTEM_CLOCK)
        marked = asyncio.create_task(writer.op(MarkProcessing(a, 1, "task-a"), linger=0.1))
        await asyncio.sleep(0.01)
        marked.cancel()
        writer.close()
        await asyncio.sleep(0.2)
        assert counting.calls == []
        job = await ledger.get_job(a)  # still in doubt: the next start looks for its task
        assert (job.status, job.vendor_task_id) == (JobStatus.QUEUED, None)
