"""A gateway answers an ended job from memory: exact (an ended job never changes again),
never a live job, and never to another account."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.ledger import Ledger
from runtime.models import Job
from tests.integration.api_fixtures import MakeApi, make_api_fixture  # noqa: F401


class CountedLedger:
    """The ledger, counting the job reads that reach it; ``down`` makes them fail as a
    dead ledger actor's would."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.job_reads = 0
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        self.job_reads += 1
        if self.down:
            raise ConnectionError("the ledger actor died")
        return await self._ledger.get_jobs(job_ids)


async def test_an_ended_job_is_read_from_the_ledger_once_and_a_live_one_every_time(
    make_api: MakeApi,
) -> None:
    counted: list[CountedLedger] = []

    def wrap(ledger: Ledger) -> CountedLedger:
        counted.append(CountedLedger(ledger))
        return counted[0]

    api = await make_api(wrap_ledger=wrap)
    ledger = counted[0]
    account, other = await api.account(), await api.account(name="other")
    job = await api.submitted(account, prompt="ends soon")
    live = await api.submitted(account, prompt="stays queued")

    async def read(job_id: str, auth: dict[str, str]) -> tuple[int, Any]:
        response = await api.client.get(f"/v1/jobs/{job_id}", headers=auth)
        return response.status, await response.json()

    for _ in range(2):  # queued: read from the ledger each time, so never stale
        assert (await read(job["id"], account.auth))[1]["status"] == "queued"
    assert ledger.job_reads == 2
    await api.complete(job["id"])
    status, ended = await read(job["id"], account.auth)
    assert (status, ended["status"]) == (200, "completed")
    assert ledger.job_reads == 3

    ledger.down = True
    for _ in range(3):
        assert await read(job["id"], account.auth) == (200, ended)
    assert ledger.job_reads == 3  # the ended job came from memory
    status, body = await read(job["id"], other.auth)
    assert (status, body["error"]["code"]) == (404, "job_not_found")  # isolation holds
    status, body = await read(live["id"], account.auth)
    assert (status, body["error"]["code"]) == (503, "ledger_unavailable")  # live: the ledger
    assert ledger.job_reads == 4
