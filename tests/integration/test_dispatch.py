"""Where the gateway sends a new job (DESIGN §3.1): the first vendor of the model's route
whose circuit is not open.

The whole runtime in this process (``Testbed(mode="in-process")``: the same actor
classes, no Ray) with fake vendors on loopback. Field case: every job went to
``route[0]``; while that vendor's circuit was open, each job paid a ledger write and an
actor hop to be failed over to the next vendor.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from loadtests.testbed import Testbed
from runtime.invariants import check_invariants

FLUX = "flux-schnell"  # route: fal, then replicate
OVERRIDES: dict[str, dict[str, Any]] = {
    "retry": {"base": 0.05, "cap": 0.2},
    # fal's circuit opens at its second failure and stays open for the whole test.
    "circuit": {"failure_threshold": 2, "cooldown": 120.0},
    "vendors.fal": {"poll_interval": 0.1},
    "vendors.replicate": {"poll_interval": 0.1},
}


async def until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_new_jobs_skip_a_vendor_whose_circuit_is_open(tmp_path: Path) -> None:
    async with Testbed(tmp_path, mode="in-process", overrides=OVERRIDES) as bed:
        bed.fakes["fal"].start_outage(300)
        # Jobs sent before the gateway knows: fal refuses them, its circuit opens, they
        # fail over to replicate.
        first = [await submitted(bed, f"early {i}") for i in range(3)]

        async def fal_open() -> bool:
            return bool((await bed.call("processor-fal", "stats"))["circuit"] == "open")

        await until(fal_open)

        # Within about a second the gateway has heard, and sends new jobs to replicate.
        async def sent_to_replicate() -> bool:
            await asyncio.sleep(0.2)
            job = await submitted(bed, "probe")
            first.append(job)
            return bool(job["vendor"] == "replicate")

        await until(sent_to_replicate)
        done = await bed.client.wait_all([job["id"] for job in first], timeout=60)
        assert {job["status"] for job in done.values()} == {"completed"}
        failovers_before = (await bed.call("processor-fal", "stats"))["failovers"]
        assert failovers_before > 0  # the early jobs bounced off fal

        later = [await submitted(bed, f"later {i}") for i in range(5)]
        assert {(job["vendor"], job["status"]) for job in later} == {("replicate", "queued")}
        done = await bed.client.wait_all([job["id"] for job in later], timeout=60)
        for job in later:
            assert done[job["id"]]["status"] == "completed"
            assert done[job["id"]]["attempts"] == 1 and done[job["id"]]["vendor"] == "replicate"
            history = await bed.call("ledger", "history", job["id"])
            # Opened on replicate: no failover retry, one ledger write and one hop fewer.
            statuses = [entry.status.value for entry in history]
            assert statuses == ["queued", "processing", "completed"]
        stats = await bed.call("processor-fal", "stats")
        assert stats["failovers"] == failovers_before  # no job bounced off fal any more
        assert check_invariants(bed.config.storage.database) == []


async def submitted(bed: Testbed, prompt: str) -> dict[str, Any]:
    status, job = await bed.client.submit(FLUX, {"prompt": prompt})
    assert status == 202, job
    return dict(job)
