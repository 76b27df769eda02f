"""Writing to a ``Ledger`` in tests: one operation value at a time, as every caller does."""

from __future__ import annotations

from typing import Any

from runtime.ledger import Ledger
from runtime.models import LedgerOp


async def apply_op(ledger: Ledger, op: LedgerOp) -> Any:
    """Run ``op``; its value (a Job, a Balance, ...), or the LedgerError it raised."""
    return (await ledger.execute(op)).unwrap()
