"""CreditLedger: the one actor that owns the SQLite ledger.

A thin shell around ``runtime.ledger.Ledger``: it opens the database when it starts
(and again when Ray restarts it), counts credits moved for the metrics, and answers
the reads of ``runtime.ports.LedgerPort``. Every write arrives as a list of operations
(``execute_many``), which the ledger commits together with any other caller's pending
operations in one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runtime.invariants import check_invariants
from runtime.ledger import Ledger
from runtime.models import LedgerOp, Outcome
from runtime.telemetry import Family, Metrics, get_logger

log = get_logger("ledger")


class CreditLedger:
    def __init__(self, path: Path, clock: Callable[[], float], metrics: Metrics | None = None):
        self._path = path
        self._clock = clock
        self._ledger: Ledger | None = None
        self.metrics = metrics or Metrics("ledger")

    async def start(self) -> None:
        if self._ledger is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._ledger = await Ledger.open(self._path, clock=self._clock)
            log.info("ledger open", extra={"error": str(self._path)})

    async def stop(self) -> None:
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None

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
        violations = await asyncio.to_thread(check_invariants, self._path)
        self.metrics.invariant_violations.set(len(violations))
        return len(violations)

    async def ping(self) -> bool:
        return self._ledger is not None

    def __getattr__(self, name: str) -> Any:
        """The reads of LedgerPort (get_job, list_jobs, balance, ...) go to the ledger."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.ledger, name)
