"""SIGKILL a process in the middle of its batches: nothing committed is lost, nothing
half-written survives, and the invariants hold."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.invariants import check_invariants
from runtime.ledger import Ledger
from runtime.models import Cancel, Complete, OpenJob
from runtime.states import JobStatus
from tests.ledger_ops import apply_op

ROOT = Path(__file__).resolve().parents[2]

# Many concurrent callers carry jobs through their whole life; a job id is printed only
# once open_job has returned, i.e. once its batch has committed.
WORKER = """
import asyncio, sys
from runtime.ledger import Ledger
from runtime.models import (
    Cancel, Complete, CreateAccount, Fail, Grant, MarkProcessing, OpenJob, ScheduleRetry,
    StartAttempt,
)

async def main(path):
    ledger = await Ledger.open(path)

    async def do(op):
        (await ledger.execute(op)).unwrap()

    await do(CreateAccount("acct", "hash"))
    await do(Grant("acct", 10**12, "initial"))
    print("ready", flush=True)

    async def carry(worker):
        for i in range(10**9):
            job_id = f"w{worker}-{i}"
            await do(OpenJob(job_id, "acct", "flux", {"i": i}, 3, "t", "fal", 1e12,
                             idempotency_key=job_id, request_hash="h"))
            print(job_id, flush=True)
            await do(StartAttempt(job_id, 1, "fal", 0))
            if i % 5 == 0:
                await do(Cancel(job_id))
                continue
            await do(MarkProcessing(job_id, 1, "task-" + job_id))
            if i % 4 == 1:
                await do(ScheduleRetry(job_id, 1, 0.0, "503", 1, "replicate"))
            elif i % 2:
                await do(Complete(job_id, "results/" + job_id))
            else:
                await do(Fail(job_id, "rejected"))

    await asyncio.gather(*[carry(w) for w in range(64)])

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("kill_after", [300, 3000])
def test_sigkill_mid_batch_loses_nothing_and_breaks_nothing(
    tmp_path: Path, kill_after: int
) -> None:
    path = tmp_path / "ledger.db"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    opened: list[str] = []
    deadline = time.monotonic() + 20
    try:
        if proc.stdout.readline().strip() != "ready":
            pytest.fail(proc.communicate(timeout=10)[1])
        while len(opened) < kill_after and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            opened.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    opened += out.split()
    assert proc.returncode == -signal.SIGKILL
    assert len(opened) >= kill_after, "the worker stopped early"

    assert check_invariants(path) == []
    conn = sqlite3.connect(path)
    try:
        known = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        keys = conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0]
    finally:
        conn.close()
    missing = set(opened) - known
    assert not missing, f"{len(missing)} acknowledged jobs lost, e.g. {sorted(missing)[:3]}"
    assert keys == len(known)  # every job was opened with a key: one key, one job

    asyncio.run(_reopen_and_go_on(path))
    assert check_invariants(path) == []


async def _reopen_and_go_on(path: Path) -> None:
    """The database a killed process left behind opens and takes new work."""
    ledger = await Ledger.open(path)
    try:
        for job in await ledger.jobs_by_status(JobStatus.PROCESSING, limit=50):
            await apply_op(ledger, Complete(job.id, "results/" + job.id))
        for job in await ledger.jobs_by_status(JobStatus.QUEUED, limit=50):
            await apply_op(ledger, Cancel(job.id))
        await apply_op(ledger, OpenJob("after-crash", "acct", "flux", {}, 3, "t", "fal", 1e12))
    finally:
        await ledger.close()
