"""A role's writes to the ledger: coalesced, and the ones that end an attempt retried.

``op`` sends one operation (many callers' operations share one actor call, through a
``Coalescer``) and raises its error. ``settle`` is for the writes that end an attempt
(``Complete``, ``Fail``, ``ScheduleRetry``): when the ledger cannot be reached (its
database locked or gone, its actor restarting) it tries again with backoff until the
write lands or the job's deadline passes. A vendor task that ended in a second must not
wait for the sweeper's next round because SQLite was busy for a moment (field case 8:
with the file locked for 20 s, such jobs completed ~133 s later, through the sweeper).
``until_the_ledger_answers`` is that retry for any call: a processor's start reads with it
(a start that gave up on a ledger restarting left the role broken), and a submitted task's
``MarkProcessing`` is settled when its first send did not land (the task is not cancelled
for a moment of the ledger's).

``attach`` holds an operation back until the job's next write, and sends it in the same
loop turn as that write, so both go in one actor call and one ledger batch (one
transaction): a webhook's receipt is written with the Complete, ScheduleRetry or Fail it
brought about, instead of costing an actor call of its own. ``release`` sends what a job
has attached without waiting for a write (the processor let the job go).

``op(..., linger=s)`` is for a write nothing waits on but its own caller (the vendor task
id of a submit that answered: ``MarkProcessing``): it is held back for at most ``s``
seconds and goes, ahead of it, in the actor call of the role's next write of any job, or
alone when ``s`` is up. A processor writes a few times per job (start, record, complete),
so at a steady rate the record rides with another job's start or complete instead of
costing an actor call of its own (each costs the ledger ~1-2 ms of CPU in Ray's glue).
What lingers is lost if the role stops first (``close``), like what is attached: a
lingering ``MarkProcessing`` leaves its submit in doubt, which the next start resolves
(``actors.in_doubt``), as when the role dies just after a submit.

Every operation is idempotent (``runtime.models``), so a write whose answer was lost and
is sent again changes nothing twice. The sleeping is on the role's injected clock.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from runtime.batching import Coalescer
from runtime.clock import Clock
from runtime.errors import JoblineError, LedgerUnavailable
from runtime.models import LedgerOp, Outcome
from runtime.telemetry import get_logger

log = get_logger("ledger_writes")

SETTLE_BACKOFF = 0.25  # seconds before the first retry of a write that did not land
SETTLE_BACKOFF_CAP = 4.0

T = TypeVar("T")


class LedgerWriter:
    def __init__(
        self,
        execute_many: Callable[[list[LedgerOp]], Awaitable[Sequence[Outcome]]],
        clock: Clock,
    ) -> None:
        self._ops: Coalescer[LedgerOp, Outcome] = Coalescer(execute_many)
        self._clock = clock
        self._attached: dict[str, list[LedgerOp]] = {}  # by job id: ride with its next write
        self._lingering: list[tuple[LedgerOp, asyncio.Future[Outcome]]] = []
        self._linger_timer: asyncio.Task[None] | None = None
        self.retried = 0  # writes sent again because the ledger could not be reached

    async def op(self, op: LedgerOp, *, linger: float = 0.0) -> Outcome:
        """One operation, once; raises its error (``Outcome.unwrap``). What ``attach``
        held back for the same job goes in the same call, and every write that lingers
        goes ahead of it. ``linger`` > 0: this one waits up to that many seconds for
        another write to ride with (the module docstring)."""
        if linger > 0:
            outcome = await self._linger(op, linger)
            outcome.unwrap()
            return outcome
        if self._lingering:
            self._send_lingering()
        job_id = getattr(op, "job_id", "")
        riders = self._attached.pop(job_id, None)
        if not riders:
            outcome = await self._ops.submit(op)
            outcome.unwrap()
            return outcome
        first, *ridden = await asyncio.gather(
            self._ops.call(op), *(self._ops.call(r) for r in riders), return_exceptions=True
        )
        self._check_riders(job_id, riders, ridden)
        if isinstance(first, BaseException):
            raise first
        first.unwrap()
        return first

    def _linger(self, op: LedgerOp, linger: float) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Outcome] = loop.create_future()
        self._lingering.append((op, waiter))
        if self._linger_timer is None:
            self._linger_timer = loop.create_task(self._send_lingering_after(linger))
        return waiter

    async def _send_lingering_after(self, seconds: float) -> None:
        await self._clock.sleep(seconds)
        self._linger_timer = None
        self._send_lingering()

    def _send_lingering(self) -> None:
        """Into the next actor call, in the order they came, ahead of what follows."""
        lingering, self._lingering = self._lingering, []
        for op, waiter in lingering:
            if not waiter.done():  # else its caller stopped waiting (the role stops)
                self._ops.submit(op).add_done_callback(functools.partial(_pass_on, waiter))

    def close(self) -> None:
        """Drop what lingers, unsent (the role stops; see the module docstring)."""
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        lingering, self._lingering = self._lingering, []
        for _, waiter in lingering:
            waiter.cancel()

    def attach(self, job_id: str, op: LedgerOp) -> None:
        """Send ``op`` with the next write of ``job_id`` (``op`` must be idempotent: it
        is lost if this process stops first)."""
        self._attached.setdefault(job_id, []).append(op)

    def holds(self, job_id: str) -> bool:
        """Whether ``job_id`` has operations attached."""
        return job_id in self._attached

    async def release(self, job_id: str) -> None:
        """Send what ``job_id`` has attached now, on its own (no write of the job follows)."""
        riders = self._attached.pop(job_id, [])
        if riders:
            self._send_lingering()
            ridden = await asyncio.gather(
                *(self._ops.call(r) for r in riders), return_exceptions=True
            )
            self._check_riders(job_id, riders, list(ridden), keep=False)

    def _check_riders(
        self,
        job_id: str,
        riders: list[LedgerOp],
        ridden: Sequence[Outcome | BaseException],
        keep: bool = True,
    ) -> None:
        """Riders that did not reach the ledger ride with the job's next write (``keep``);
        those the ledger refused, or with no write to come, are logged and dropped."""
        for rider, result in zip(riders, ridden, strict=True):
            if isinstance(result, BaseException) and keep:
                self.attach(job_id, rider)
                continue
            error = result if isinstance(result, BaseException) else result.error
            if error is not None:
                log.warning(
                    "an attached write did not land",
                    extra={"job_id": job_id, "error": f"{type(rider).__name__}: {error}"},
                )

    async def settle(self, op: LedgerOp, deadline: float, *, linger: float = 0.0) -> Outcome:
        """``op`` until it lands: an unreachable ledger is asked again with backoff until
        ``deadline``, past which the last error is raised (the sweeper then settles the
        job). Any other error (the ledger refused the operation) is raised at once. Each
        send may linger as ``op``'s does."""

        def retrying(error: Exception) -> None:
            self.retried += 1
            log.warning(
                "ledger write did not land; trying again",
                extra={"job_id": getattr(op, "job_id", None), "error": str(error)},
            )

        return await until_the_ledger_answers(
            lambda: self.op(op, linger=linger), self._clock, deadline=deadline, retrying=retrying
        )


async def until_the_ledger_answers(
    call: Callable[[], Awaitable[T]],
    clock: Clock,
    *,
    retrying: Callable[[Exception], None],
    deadline: float = math.inf,
) -> T:
    """``call()`` again, with backoff (``SETTLE_BACKOFF`` doubling up to
    ``SETTLE_BACKOFF_CAP`` seconds on ``clock``), while the ledger cannot be reached
    (``LedgerUnavailable``, or any error of its actor's call: restarting, gone);
    ``retrying(error)`` is told before each wait. Past ``deadline`` (clock seconds) the
    last such error is raised; any other ``JoblineError`` (the ledger refused the
    request) is raised at once."""
    delay = SETTLE_BACKOFF
    while True:
        try:
            return await call()
        except JoblineError as exc:
            if not isinstance(exc, LedgerUnavailable):
                raise
            error: Exception = exc
        except Exception as exc:  # the ledger's actor unreachable (restarting, gone)
            error = exc
        if clock.time() + delay >= deadline:
            raise error
        retrying(error)
        await clock.sleep(delay)
        delay = min(delay * 2, SETTLE_BACKOFF_CAP)


def _pass_on(waiter: asyncio.Future[Outcome], sent: asyncio.Future[Outcome]) -> None:
    """What a lingering write's call brought, to the caller waiting for it."""
    if waiter.done():
        return
    if sent.cancelled():
        waiter.cancel()
    elif (error := sent.exception()) is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(sent.result())
