"""The invariants (DESIGN §4), checked while the simulation runs, not only at its end.

:class:`Watch` sees every ledger batch as it is answered (the simulation's ledger port
hands it each batch of operations with their outcomes) and keeps a shadow of what the
ledger said: each job's status, holds and settlements, each account's grants, captures
and holds. After every batch it checks what that batch touched, at the cost of a few
dictionary lookups per operation:

- I1: an account's available credit (grants - captures - open holds) never goes below 0;
- I2: a job has exactly one hold, and a terminal job exactly one settlement, of the kind
  its status calls for (a capture for ``completed``, a release otherwise); a terminal job
  never changes again;
- I5: an ``Idempotency-Key`` names one job; a webhook id is recorded once.

Every virtual second (:meth:`Watch.tick`) it checks what changes with time:

- I3: no job that got a ``202`` is still open past its deadline plus the sweeper's grace
  (two intervals and a vendor timeout: the sweeper expires such jobs on its next round);
- I4: no vendor counted more tasks in flight than the vendor's configured concurrency
  (the in-memory fakes count, and do not enforce, so this is jobline's own restraint);
- I5: no vendor task was started twice for one attempt of a job (the fake counts the job
  and attempt each submit named).

And when 1000, 2000, 4000, ... jobs have ended, and at the end, the ledger's database is
read whole by ``runtime.invariants`` (I1, I2, I5 again, trusting nothing the shadow or the
writer keeps). I6 is probed by the clients (``loadtests.sim.clients``): another account's
job is ``404``, a forged webhook is refused and changes nothing. And an exception that no
task handled is reported as a ``bug`` finding at the end (``loadtests.sim.run``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from loadtests.sim.trace import Trace
from runtime.config import JoblineConfig
from runtime.models import (
    Cancel,
    Complete,
    CreateAccount,
    Fail,
    Grant,
    Job,
    LedgerOp,
    MarkProcessing,
    OpenJob,
    Outcome,
    RecordWebhook,
    Redrive,
    ScheduleRetry,
    StartAttempt,
    Violation,
)
from runtime.states import JobStatus
from vendors_fake.memory import MemoryVendor

TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})
SETTLEMENT = {JobStatus.COMPLETED: "capture", JobStatus.FAILED: "release"}


@dataclass(slots=True)
class JobRecord:
    """What the ledger said of one job, and when (virtual seconds)."""

    id: str
    account: str
    model: str
    cost: int
    opened_at: float
    deadline: float
    status: JobStatus = JobStatus.QUEUED
    vendor: str = ""
    holds: int = 1
    settlements: tuple[str, ...] = ()  # a tuple of strings: nothing for the collector to walk
    ended_at: float | None = None
    attempts: int = 0
    retries: int = 0
    failovers: int = 0


@dataclass(slots=True)
class AccountRecord:
    granted: int = 0
    captured: int = 0
    held: int = 0


@dataclass
class Counts:
    """What happened, for the report."""

    batches: int = 0
    ops: int = 0
    attempts: int = 0
    retries: int = 0
    failovers: int = 0
    captures: int = 0
    releases: int = 0
    dead_letters: int = 0
    expired: int = 0
    webhooks_recorded: int = 0
    webhooks_duplicate: int = 0
    op_errors: int = 0


class Watch:
    def __init__(
        self,
        config: JoblineConfig,
        trace: Trace,
        now: Callable[[], float],
        vendors: Mapping[str, MemoryVendor],
        *,
        epoch: float,
    ) -> None:
        self.config = config
        self.trace = trace
        self.now = now  # virtual seconds since the start
        self.epoch = epoch
        self.vendors = vendors
        self.jobs: dict[str, JobRecord] = {}
        self.accounts: dict[str, AccountRecord] = {}
        self.keys: dict[tuple[str, str], str] = {}  # (account, key) -> job id
        self.counts = Counts()
        self.violations: list[Violation] = []
        self.context: list[str] = []  # the trace around the first violation
        self.open = 0  # jobs not terminal yet
        self.ended: list[JobRecord] = []  # in the order they ended
        self.on_violation: Callable[[Violation], None] | None = None
        self._deadlines: list[tuple[float, str]] = []  # (deadline + grace, job id)
        self.last_deadline = 0.0
        self._duplicates = dict.fromkeys(vendors, 0)
        self._reported: set[str] = set()
        self._max_in_flight = dict.fromkeys(vendors, 0)
        sweeper = config.sweeper.interval
        timeout = max(v.poll_timeout + v.submit_timeout for v in config.vendors.values())
        self.grace = 2 * sweeper + timeout

    # --- findings ---------------------------------------------------------------------

    def violation(self, invariant: str, subject: str, detail: str) -> None:
        found = Violation(invariant, subject, detail)
        self.trace.add("violation", invariant, subject, detail)
        if not self.violations:
            self.context = self.trace.tail(60)
        self.violations.append(found)
        if self.on_violation is not None:
            self.on_violation(found)

    # --- every ledger batch -------------------------------------------------------------

    def batch(self, ops: Sequence[LedgerOp], outcomes: Sequence[Outcome]) -> None:
        self.counts.batches += 1
        self.counts.ops += len(ops)
        for op, outcome in zip(ops, outcomes, strict=True):
            if outcome.error is not None:
                self.counts.op_errors += 1
                self.trace.add(
                    "op-error", type(op).__name__, _job_of(op), type(outcome.error).__name__
                )
                continue
            self._apply(op, outcome)

    def _apply(self, op: LedgerOp, outcome: Outcome) -> None:
        kind = type(op)
        if kind is OpenJob or kind is Redrive:
            self._opened(op, outcome)
            return
        if kind is RecordWebhook:
            assert isinstance(op, RecordWebhook)
            self.counts.webhooks_recorded += outcome.changed
            self.counts.webhooks_duplicate += not outcome.changed
            self.trace.add("webhook-recorded", op.vendor, op.webhook_id, int(outcome.changed))
            return
        if kind is CreateAccount:
            assert isinstance(op, CreateAccount)
            account = self.accounts.setdefault(op.account_id, AccountRecord())
            if outcome.changed:
                account.granted += op.credits  # the creation grant
            return
        if kind is Grant:
            assert isinstance(op, Grant)
            if outcome.changed:
                self.accounts.setdefault(op.account_id, AccountRecord()).granted += op.amount
            return
        job = outcome.value
        if not isinstance(job, Job):
            return
        record = self.jobs.get(job.id)
        self.trace.add(kind.__name__, job.id, job.status.value, int(outcome.changed), job.vendor)
        if record is None:
            return  # a job of before this run (a ledger reopened): not watched
        if not outcome.changed:
            if record.status in TERMINAL and job.status is not record.status:
                self.violation("I5", job.id, f"terminal {record.status} read back as {job.status}")
            return
        if record.status in TERMINAL:
            self.violation("I2", job.id, f"{kind.__name__} changed a {record.status.value} job")
            return
        if kind is StartAttempt:
            record.attempts += 1
            self.counts.attempts += 1
        elif kind is ScheduleRetry:
            assert isinstance(op, ScheduleRetry)
            if op.vendor != record.vendor:
                record.failovers += 1
                self.counts.failovers += 1
            else:
                record.retries += 1
                self.counts.retries += 1
        record.vendor = job.vendor
        if job.status in TERMINAL:
            self._settled(record, job, kind is Fail and isinstance(op, Fail) and op.expired)
        else:
            record.status = job.status

    def _opened(self, op: LedgerOp, outcome: Outcome) -> None:
        job = outcome.value
        assert isinstance(job, Job)
        if isinstance(op, OpenJob) and op.idempotency_key is not None:
            key = (op.account_id, op.idempotency_key)
            known = self.keys.setdefault(key, job.id)
            if known != job.id:
                self.violation("I5", f"{key[0]}/{key[1]}", f"names jobs {known} and {job.id}")
        if not outcome.changed:
            return
        if job.id in self.jobs:
            self.violation("I2", job.id, "opened twice (a second hold)")
            return
        now = self.now()
        record = JobRecord(
            job.id, job.account_id, job.model, job.cost, now, job.deadline - self.epoch,
            vendor=job.vendor,
        )  # fmt: skip
        self.jobs[job.id] = record
        self.open += 1
        heapq.heappush(self._deadlines, (record.deadline + self.grace, job.id))
        self.last_deadline = max(self.last_deadline, record.deadline)
        account = self.accounts.setdefault(job.account_id, AccountRecord())
        account.held += job.cost
        available = account.granted - account.captured - account.held
        self.trace.add("opened", job.id, job.account_id, job.model, job.vendor)
        if available < 0:
            self.violation("I1", job.account_id, f"available {available} after opening {job.id}")

    def _settled(self, record: JobRecord, job: Job, expired: bool) -> None:
        status = job.status
        want = SETTLEMENT.get(status, "release")
        record.settlements += (want,)
        record.status = status
        record.ended_at = self.now()
        self.open -= 1
        self.ended.append(record)
        account = self.accounts.setdefault(record.account, AccountRecord())
        account.held -= record.cost
        if want == "capture":
            account.captured += record.cost
            self.counts.captures += 1
        else:
            self.counts.releases += 1
        if status is JobStatus.FAILED:
            self.counts.dead_letters += 1
            self.counts.expired += expired
        if len(record.settlements) != 1 or record.holds != 1:
            self.violation(
                "I2", record.id, f"{record.holds} holds, settlements {list(record.settlements)}"
            )
        if account.granted - account.captured - account.held < 0:
            self.violation("I1", record.account, f"available below 0 after {record.id}")

    # --- every virtual second -----------------------------------------------------------

    def tick(self) -> None:
        now = self.now()
        while self._deadlines and self._deadlines[0][0] < now:
            _, job_id = heapq.heappop(self._deadlines)
            record = self.jobs[job_id]
            if record.status not in TERMINAL:
                self.violation(
                    "I3", job_id, f"still {record.status.value} {now - record.deadline:.1f}s "
                    "past its deadline",
                )  # fmt: skip
        for name, fake in self.vendors.items():
            self._check_vendor(name, fake)

    def _check_vendor(self, name: str, fake: MemoryVendor) -> None:
        stats = fake.core.stats
        limit = self.config.vendors[name].concurrency
        if stats.max_in_flight > self._max_in_flight[name]:
            self._max_in_flight[name] = stats.max_in_flight
            if stats.max_in_flight > limit:
                self.violation("I4", name, f"{stats.max_in_flight} tasks in flight, limit {limit}")
        # The fake counts each (job, attempt) its submits named: more tasks than pairs
        # means a second task for one attempt (every submit of jobline names its job).
        created = stats.tasks["created"]
        if created - len(stats.attempts) > self._duplicates[name]:
            self._duplicates[name] = created - len(stats.attempts)
            for attempt, n in stats.attempts.items():
                if n > 1 and attempt not in self._reported:
                    self._reported.add(attempt)
                    self.violation("I5", attempt, f"{n} {name} tasks started for one attempt")

    def max_in_flight(self, vendor: str) -> int:
        return self._max_in_flight[vendor]

    # --- at the end ---------------------------------------------------------------------

    def finish(self, full: Sequence[Violation]) -> None:
        """The end of the run: every opened job ended (I3), and the database's check."""
        self.tick()
        for record in self.jobs.values():
            if record.status not in TERMINAL:
                self.violation("I3", record.id, f"still {record.status.value} at the end")
        for found in full:
            self.violation(found.invariant, found.subject, f"(database) {found.detail}")


def _job_of(op: LedgerOp) -> str:
    if isinstance(op, OpenJob | Redrive | StartAttempt | MarkProcessing | ScheduleRetry):
        return op.job_id
    if isinstance(op, Complete | Fail | Cancel):
        return op.job_id
    return "-"
