"""CreditLedger: the one actor that owns the SQLite ledger.

A thin shell around ``runtime.ledger.Ledger``: it opens the database when it starts
(and again when Ray restarts it), counts credits moved for the metrics, and answers
the reads of ``runtime.ports.LedgerPort``, one explicit method each (mypy checks the
class against the port, below). Every write arrives as a list of operations
(``execute_many``), which the ledger commits together with any other caller's pending
operations in one transaction.

Opening: where a ledger must already exist (``must_exist`` says why: the config, the
deployment's record, a restart), a missing file raises ``LedgerMissing`` instead of
creating a second, empty ledger. Stopping: every write already submitted lands, both
connections close, and the WAL is checkpointed into the main file and truncated, so
that the ``.db`` file alone then holds everything (a copy of it is a whole backup).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from runtime.clock import Clock
from runtime.errors import LedgerMissing
from runtime.ledger import THREADED, Ledger, LedgerMode
from runtime.ledger_nearby import FileIdentity, file_identity
from runtime.models import (
    AccountLimits,
    AccountPage,
    AccountThrottle,
    ApiKeyPage,
    Balance,
    DeadLetterPage,
    EntryPage,
    Job,
    JobHistoryEntry,
    KeyMatch,
    KeyRevocation,
    LedgerOp,
    Orphan,
    Outcome,
    Page,
)
from runtime.ports import LedgerPort
from runtime.states import JobStatus
from runtime.telemetry import Family, Metrics, get_logger

log = get_logger("ledger")


class CreditLedger:
    def __init__(
        self,
        path: Path,
        clock: Clock,
        metrics: Metrics,
        *,
        must_exist: str | None = None,
        mode: LedgerMode = THREADED,
    ) -> None:
        self._path = path
        self._clock = clock
        self._must_exist = must_exist  # why the file must be there; None: create it
        self._mode = mode
        self._ledger: Ledger | None = None
        self._identity: FileIdentity | None = None  # the file it opened (not in memory)
        self.metrics = metrics

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        if self._ledger is None:
            if self._must_exist is not None and not self._path.is_file():
                raise LedgerMissing(str(self._path), self._must_exist)
            created = not self._path.exists()
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._ledger = await Ledger.open(self._path, clock=self._clock.time, mode=self._mode)
            if not self._mode.memory:
                self._identity = file_identity(self._path)
            verb = "created" if created else "opened"
            log.info("ledger %s at %s", verb, self._path, extra={"notice": True})

    async def stop(self) -> None:
        """Let every submitted write land, close, and fold the WAL into the ``.db`` file."""
        if self._ledger is not None:
            ledger, self._ledger = self._ledger, None
            self._identity = None
            await ledger.close()
            if self._mode.memory:  # no file, no WAL (a simulation's ledger)
                return
            busy = await asyncio.to_thread(checkpoint, self._path)
            if busy:
                log.warning(
                    "ledger closed, but another connection kept its WAL from being "
                    "checkpointed: %s",
                    self._path,
                )
            else:
                log.info("ledger closed and checkpointed: %s", self._path, extra={"notice": True})

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("CreditLedger used before start()")
        return self._ledger

    async def execute_many(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        self.metrics.ledger_batch_size.observe(len(ops))
        return await self.ledger.execute_many(ops)

    async def collect_metrics(self) -> list[Family]:
        counts = await self.ledger.counts()
        for status, n in counts.items():
            self.metrics.jobs_by_status.labels(status).set(n)
        return self.metrics.collect()

    async def check_invariants(self) -> int:
        """Check I1, I2, I5 on the database (off the event loop); exported as a gauge."""
        violations = await self.ledger.check_invariants()
        self.metrics.invariant_violations.set(len(violations))
        return len(violations)

    async def ping(self) -> bool:
        return self._ledger is not None

    async def file_identity(self) -> FileIdentity | None:
        """The identity of the database file this ledger has open (None: none open, or
        in memory): a process on the same machine that finds this file at the configured
        path may read it directly (``runtime.ledger_nearby``)."""
        return self._identity

    # --- the reads of LedgerPort (see runtime.ledger.Ledger for each) --------------------

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        return await self.ledger.get_jobs(job_ids)

    async def get_job(self, job_id: str, account_id: str | None = None) -> Job:
        return await self.ledger.get_job(job_id, account_id)

    async def list_jobs(
        self,
        account_id: str,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        return await self.ledger.list_jobs(account_id, status, limit, cursor)

    async def jobs_for_vendor(self, vendor: str, statuses: Sequence[JobStatus]) -> list[Job]:
        return await self.ledger.jobs_for_vendor(vendor, statuses)

    async def submits_in_doubt(self, vendor: str, updated_after: float) -> list[Job]:
        return await self.ledger.submits_in_doubt(vendor, updated_after)

    async def orphans(self, vendor: str, now: float) -> list[Orphan]:
        return await self.ledger.orphans(vendor, now)

    async def jobs_by_status(
        self, status: JobStatus, updated_before: float | None = None, limit: int = 1000
    ) -> list[Job]:
        return await self.ledger.jobs_by_status(status, updated_before, limit)

    async def expired_jobs(self, now: float, limit: int = 1000) -> list[Job]:
        return await self.ledger.expired_jobs(now, limit)

    async def history(self, job_id: str, after_seq: int = 0) -> list[JobHistoryEntry]:
        return await self.ledger.history(job_id, after_seq)

    async def account_history(
        self, account_id: str, after_seq: int, limit: int = 500
    ) -> list[JobHistoryEntry]:
        return await self.ledger.account_history(account_id, after_seq, limit)

    async def accounts_changed(
        self, after_seq: int | None, limit: int = 5000
    ) -> tuple[int, list[str]]:
        return await self.ledger.accounts_changed(after_seq, limit)

    async def accounts(self, limit: int = 50, cursor: str | None = None) -> AccountPage:
        return await self.ledger.accounts(limit, cursor)

    async def statement(
        self,
        account_id: str,
        limit: int = 100,
        cursor: str | None = None,
        newest_first: bool = False,
    ) -> EntryPage:
        return await self.ledger.statement(account_id, limit, cursor, newest_first)

    async def balance(self, account_id: str) -> Balance:
        return await self.ledger.balance(account_id)

    async def keys_for_hashes(self, key_hashes: Sequence[str]) -> list[KeyMatch | None]:
        return await self.ledger.keys_for_hashes(key_hashes)

    async def revocations(
        self, after_seq: int | None, limit: int = 1000
    ) -> tuple[int, list[KeyRevocation]]:
        return await self.ledger.revocations(after_seq, limit)

    async def api_keys(
        self, account_id: str, limit: int = 50, cursor: str | None = None
    ) -> ApiKeyPage:
        return await self.ledger.api_keys(account_id, limit, cursor)

    async def account_limits(self, account_id: str) -> AccountLimits:
        return await self.ledger.account_limits(account_id)

    async def slot_weights(self, account_ids: Sequence[str]) -> dict[str, float]:
        return await self.ledger.slot_weights(account_ids)

    async def account_throttle(self, account_id: str) -> AccountThrottle:
        return await self.ledger.account_throttle(account_id)

    async def dead_letters(
        self, limit: int = 100, include_redriven: bool = False, cursor: str | None = None
    ) -> DeadLetterPage:
        return await self.ledger.dead_letters(limit, include_redriven, cursor)

    async def open_dead_letters(self) -> int:
        return await self.ledger.open_dead_letters()

    async def counts(self) -> dict[str, int]:
        return await self.ledger.counts()


def checkpoint(path: Path) -> bool:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` on a closed ledger: every transaction of the WAL
    copied into the database file and the WAL emptied (SQLite removes it when this, the
    last connection, closes). True if another connection kept it busy."""
    conn = sqlite3.connect(path, timeout=10.0)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    return bool(busy)


# mypy checks here that the actor offers every call of the port, with the port's types.
_SERVES_THE_PORT: type[LedgerPort] = CreditLedger
