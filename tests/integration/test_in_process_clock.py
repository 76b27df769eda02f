"""The wiring runs every role in one process on the clock it is given (no Ray): the
gateway, the ledger and the sweeper read that clock, never the wall's."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from loadtests.testbed import Testbed
from runtime.clock import SYSTEM_CLOCK
from vendors_fake.profile import merge_profile, preset

BEHIND = 3 * 3600.0  # far beyond any deadline: a role reading the wall clock shows


class BehindClock:
    """The system clock, three hours behind."""

    def time(self) -> float:
        return SYSTEM_CLOCK.time() - BEHIND

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


async def test_every_role_runs_on_the_clock_it_is_given(tmp_path: Path) -> None:
    never_finish = merge_profile(preset("calm"), {"never_finish": 1.0})
    bed = Testbed(tmp_path, profile=never_finish, mode="in-process", clock=BehindClock())
    async with bed:
        status, job = await bed.client.submit("flux-schnell", {"prompt": "a clock"})
        assert status == 202, job
        while (await bed.client.job(job["id"]))[1]["status"] != "processing":
            await asyncio.sleep(0.05)
        wall = time.time()
        # The gateway's and the ledger's times come from the clock ...
        assert wall - BEHIND - 60 < job["created_at"] < wall - BEHIND + 1
        # ... and so does the job's deadline, which the sweeper reads the same clock
        # against: on the wall clock it would have passed three hours ago.
        report = await bed.runtime.object("sweeper").sweep_once()
        assert report.expired == 0 and report.errors == []
        assert (await bed.client.job(job["id"]))[1]["status"] == "processing"

        status, canceled = await bed.client.request("POST", f"/v1/jobs/{job['id']}/cancel")
        assert (status, canceled["status"]) == (200, "canceled")
        entries = await bed.client.entries()
        assert [e["kind"] for e in entries] == ["grant", "hold", "release"]
        assert all(wall - BEHIND - 60 < e["created_at"] < wall - BEHIND + 1 for e in entries)
