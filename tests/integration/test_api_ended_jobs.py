"""A gateway answers an ended job from memory: exact (an ended job never changes again),
never a live job, and never to another account."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from runtime.api import context
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
        self.stuck = False  # reads never answer, as a ledger actor stuck in a long batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        self.job_reads += 1
        if self.down:
            raise ConnectionError("the ledger actor died")
        if self.stuck:
            await asyncio.Event().wait()
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


async def test_an_ended_job_answered_from_memory_is_the_same_answer_byte_for_byte(
    make_api: MakeApi,
) -> None:
    api = await make_api()
    account = await api.account()
    job = await api.submitted(account, prompt="ends soon")
    live = await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)
    live_type = live.headers["Content-Type"]
    await api.complete(job["id"])
    answers = []
    for _ in range(3):  # the first reads the ledger; the others come from memory
        response = await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)
        assert response.status == 200
        answers.append((response.headers["Content-Type"], await response.read()))
        assert response.headers["X-Jobline-Trace-Id"] == job["trace_id"]
    assert answers[0] == answers[1] == answers[2]
    content_type, body = answers[0]
    assert content_type == live_type == "application/json; charset=utf-8"
    ended = json.loads(body)
    assert ended["status"] == "completed" and ended["result_url"].endswith("/result")
    assert {k: v for k, v in ended.items() if k not in CHANGED} == {
        k: v for k, v in (await live.json()).items() if k not in CHANGED
    }


CHANGED = {"status", "result_url", "outputs", "updated_at", "attempts", "vendor_task_id"}


async def test_a_read_the_ledger_does_not_answer_in_time_is_a_503_and_frees_the_request(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[CountedLedger] = []

    def wrap(ledger: Ledger) -> CountedLedger:
        counted.append(CountedLedger(ledger))
        return counted[0]

    api = await make_api(wrap_ledger=wrap)
    account = await api.account()
    job = await api.submitted(account, prompt="stays queued")
    monkeypatch.setattr(context, "LEDGER_TIMEOUT", 0.3)
    counted[0].stuck = True
    started = asyncio.get_running_loop().time()
    response = await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)
    took = asyncio.get_running_loop().time() - started
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (503, "ledger_unavailable")
    assert "no answer within" in body["error"]["message"]
    assert 0.3 <= took < 5.0
    counted[0].stuck = False  # the next read is answered: nothing was left waiting
    response = await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)
    assert (response.status, (await response.json())["status"]) == (200, "queued")
