"""The gateway's view of the vendors' circuits: where a new job starts on its route, and
how often the gateway asks the processors (a real ledger, recording fake processors)."""

from __future__ import annotations

from typing import Any

from tests.integration.api_fixtures import MakeApi, make_api_fixture  # noqa: F401
from tests.integration.conftest import eventually

FLUX = "flux-schnell"  # route: fal, then replicate


class ManualClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


async def test_new_jobs_start_at_the_first_vendor_whose_circuit_is_not_open(
    make_api: MakeApi,
) -> None:
    clock = ManualClock()
    api = await make_api(clock=clock)
    router = api.router
    account = await api.account(credits=1_000)
    router.processors["fal"].circuit = "open"

    first = await api.submitted(account, model=FLUX)  # the view is empty: route[0]
    assert (first["vendor"], first["status"]) == ("fal", "queued")
    await eventually(lambda: router.processors["fal"].stats_calls == 1)

    jobs = [await api.submitted(account, model=FLUX, prompt=f"p{i}") for i in range(10)]
    assert {job["vendor"] for job in jobs} == {"replicate"}
    await eventually(lambda: len(router.processors["replicate"].dispatched) == 10)
    assert {job.route_position for job in router.processors["replicate"].dispatched} == {1}
    # No refresh within the second, whatever the number of jobs.
    assert calls(api) == {"fal": 1, "replicate": 1}


async def test_with_every_circuit_open_a_job_starts_where_it_would_end_up(
    make_api: MakeApi,
) -> None:
    clock = ManualClock()
    api = await make_api(clock=clock)
    account = await api.account(credits=1_000)
    for processor in api.router.processors.values():
        processor.circuit = "open"
    await api.submitted(account, model=FLUX)
    await eventually(lambda: calls(api) == {"fal": 1, "replicate": 1})
    job = await api.submitted(account, model=FLUX, prompt="all open")
    assert job["vendor"] == "replicate"  # the route's last vendor: it waits there

    # A second later the view is refreshed again: fal's circuit closed meanwhile.
    api.router.processors["fal"].circuit = "half_open"
    clock.now += 1.0
    await api.submitted(account, model=FLUX, prompt="refresh")
    await eventually(lambda: calls(api) == {"fal": 2, "replicate": 2})
    job = await api.submitted(account, model=FLUX, prompt="back to fal")
    assert job["vendor"] == "fal"


def calls(api: Any) -> dict[str, int]:
    return {vendor: p.stats_calls for vendor, p in api.router.processors.items()}
