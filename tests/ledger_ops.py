"""Writing to a ``Ledger`` in tests: one operation value at a time, as every caller does;
a settable clock, and a ledger with one funded account."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.ledger import Ledger
from runtime.models import CreateAccount, LedgerOp


async def apply_op(ledger: Ledger, op: LedgerOp) -> Any:
    """Run ``op``; its value (a Job, a Balance, ...), or the LedgerError it raised."""
    return (await ledger.execute(op)).unwrap()


class Clock:
    """A settable clock: replays happen at a later time, so a replay that writes shows."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 1.0) -> None:
        self.now += seconds


async def funded_ledger(path: Path, clock: Clock, credits: int = 100) -> Ledger:
    """A new ledger at ``path`` with account ``acct`` (key ``key-1``) holding ``credits``."""
    ledger = await Ledger.open(path, clock)
    await apply_op(ledger, CreateAccount("acct", "hash-acct", credits=credits, key_id="key-1"))
    return ledger
