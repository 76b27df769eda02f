"""A role's writes to the ledger: coalesced, and the ones that end an attempt retried.

``op`` sends one operation (many callers' operations share one actor call, through a
``Coalescer``) and raises its error. ``settle`` is for the writes that end an attempt
(``Complete``, ``Fail``, ``ScheduleRetry``): when the ledger cannot be reached (its
database locked or gone, its actor restarting) it tries again with backoff until the
write lands or the job's deadline passes. A vendor task that ended in a second must not
wait for the sweeper's next round because SQLite was busy for a moment (field case 8:
with the file locked for 20 s, such jobs completed ~133 s later, through the sweeper).

Every operation is idempotent (``runtime.models``), so a write whose answer was lost and
is sent again changes nothing twice. The sleeping is on the role's injected clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from runtime.batching import Coalescer
from runtime.clock import Clock
from runtime.errors import JoblineError, LedgerUnavailable
from runtime.models import LedgerOp, Outcome
from runtime.telemetry import get_logger

log = get_logger("ledger_writes")

SETTLE_BACKOFF = 0.25  # seconds before the first retry of a write that did not land
SETTLE_BACKOFF_CAP = 4.0


class LedgerWriter:
    def __init__(
        self,
        execute_many: Callable[[list[LedgerOp]], Awaitable[Sequence[Outcome]]],
        clock: Clock,
    ) -> None:
        self._ops: Coalescer[LedgerOp, Outcome] = Coalescer(execute_many)
        self._clock = clock
        self.retried = 0  # writes sent again because the ledger could not be reached

    async def op(self, op: LedgerOp) -> Outcome:
        """One operation, once; raises its error (``Outcome.unwrap``)."""
        outcome = await self._ops.call(op)
        outcome.unwrap()
        return outcome

    async def settle(self, op: LedgerOp, deadline: float) -> Outcome:
        """``op`` until it lands: an unreachable ledger is asked again with backoff until
        ``deadline``, past which the last error is raised (the sweeper then settles the
        job). Any other error (the ledger refused the operation) is raised at once."""
        delay = SETTLE_BACKOFF
        while True:
            try:
                return await self.op(op)
            except JoblineError as exc:
                if not isinstance(exc, LedgerUnavailable):
                    raise
                error: Exception = exc
            except Exception as exc:  # the ledger's actor unreachable (restarting, gone)
                error = exc
            if self._clock.time() + delay >= deadline:
                raise error
            self.retried += 1
            log.warning(
                "ledger write did not land; trying again",
                extra={"job_id": getattr(op, "job_id", None), "error": str(error)},
            )
            await self._clock.sleep(delay)
            delay = min(delay * 2, SETTLE_BACKOFF_CAP)
