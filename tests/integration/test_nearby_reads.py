"""A gateway on the ledger's machine reads jobs from the ledger's file, with no actor
call: exact (a write the ledger answered is seen at once), never a 404 the ledger would
not give, and never from a file that is not the ledger's."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actors.ledger import CreditLedger
from runtime.clock import SYSTEM_CLOCK
from runtime.config import StorageConfig
from runtime.ledger import Ledger
from runtime.ledger_nearby import FileIdentity, file_identity
from runtime.ledger_reads import jobs as read_jobs
from runtime.models import Job, MarkProcessing, StartAttempt
from runtime.telemetry import Metrics
from tests.integration.api_fixtures import MakeApi, make_api_fixture  # noqa: F401


class LedgerOnThisMachine:
    """The ledger, telling its file's identity as the ledger actor does, and counting
    the job reads that reach it."""

    def __init__(self, ledger: Ledger, identity: FileIdentity | None) -> None:
        self._ledger = ledger
        self._identity = identity
        self.job_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def file_identity(self) -> FileIdentity | None:
        return self._identity

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        self.job_reads += 1
        return await self._ledger.get_jobs(job_ids)


async def _settle() -> None:
    await asyncio.sleep(0.05)  # the reader's identity check, in the background


async def test_live_reads_come_from_the_file_exactly_and_stop_when_it_is_replaced(
    make_api: MakeApi, tmp_path: Path
) -> None:
    db = tmp_path / "api-0" / "jobline.db"  # the harness's first ledger
    wrapped: list[LedgerOnThisMachine] = []

    def wrap(ledger: Ledger) -> LedgerOnThisMachine:
        wrapped.append(LedgerOnThisMachine(ledger, file_identity(db)))
        return wrapped[0]

    storage = StorageConfig(database=db, results=tmp_path / "results")
    api = await make_api(storage=storage, wrap_ledger=wrap)
    ledger = wrapped[0]
    account = await api.account()
    job = await api.submitted(account, prompt="stays live")

    async def status(job_id: str) -> tuple[int, Any]:
        response = await api.client.get(f"/v1/jobs/{job_id}", headers=account.auth)
        body = await response.json()
        return response.status, body.get("status")

    assert await status(job["id"]) == (200, "queued")  # the first read: through the ledger
    assert ledger.job_reads == 1
    await _settle()
    assert await status(job["id"]) == (200, "queued")
    await api.ledger.execute_many([StartAttempt(job["id"], 1, job["vendor"], 0)])
    await api.ledger.execute_many([MarkProcessing(job["id"], 1, "task-1")])
    assert await status(job["id"]) == (200, "processing")  # what the ledger answered: seen
    assert ledger.job_reads == 1  # ... and no read reached the ledger

    unknown = "job_" + "0" * 26
    assert await status(unknown) == (404, None)  # not in the file: asked of the ledger
    assert ledger.job_reads == 2

    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    copy.replace(db)  # another file in the ledger's place (the ledger keeps its own open)
    assert await status(job["id"]) == (200, "processing")
    assert ledger.job_reads == 3  # not read from a file that is not the ledger's


async def test_no_file_reads_without_the_ledgers_identity(
    make_api: MakeApi, tmp_path: Path
) -> None:
    db = tmp_path / "api-0" / "jobline.db"
    wrapped: list[LedgerOnThisMachine] = []

    def wrap(ledger: Ledger) -> LedgerOnThisMachine:
        other = FileIdentity("another machine", 1, 2)  # the ledger runs elsewhere
        wrapped.append(LedgerOnThisMachine(ledger, other))
        return wrapped[0]

    storage = StorageConfig(database=db, results=tmp_path / "results")
    api = await make_api(storage=storage, wrap_ledger=wrap)
    account = await api.account()
    job = await api.submitted(account, prompt="live")
    for expected_reads in (1, 2, 3):
        response = await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)
        assert response.status == 200
        assert wrapped[0].job_reads == expected_reads
        await _settle()


async def test_the_ledger_actor_tells_the_identity_of_the_file_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "jobline.db"
    ledger = CreditLedger(path, SYSTEM_CLOCK, Metrics("ledger-test"))
    assert await ledger.file_identity() is None  # nothing open yet
    await ledger.start()
    try:
        identity = await ledger.file_identity()
        assert identity is not None and identity == file_identity(path)
        conn = sqlite3.connect(path)
        try:
            assert read_jobs(conn, ["job_none"]) == [None]  # a plain reader opens it
        finally:
            conn.close()
    finally:
        await ledger.stop()
    assert await ledger.file_identity() is None
