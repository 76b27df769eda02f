"""Sweeper: periodic repair of what messages and actors lost.

Every ``sweeper.interval`` seconds:

- jobs past their whole deadline are failed and refunded (their vendor task, if any,
  is canceled first; if that cancel fails, the vendor's processor retries it until the
  vendor confirms);
- ``queued`` jobs that have not moved for a while are handed back to their vendor's
  processor, which takes the ones it does not already hold (a lost dispatch, a
  processor restarted before it loaded them);
- ``processing`` jobs unchanged for their vendor's ``stuck_after`` are handed back to
  their processor, which takes the ones it does not follow (its attempt crashed, it
  restarted) and polls them: nothing is asked of the vendor for a task within its
  model's bounds, unless the processor cannot be reached (then the vendor is asked, as
  below);
- ``processing`` jobs past their model's bounds (``max_queue_time + max_run_time``: the
  processor would have given them up by then) are checked at the vendor: a task that
  succeeded has every output stored and its job completed here (a zombie: the vendor
  finished, the webhook was lost and nobody is polling); any other is handed back to
  the processor, which cancels it and applies the retry rules.

Downloading, storing and completing a zombie, and canceling a task, go through
``actors.finishing.JobFinisher``, as in the processor. The sweeper only ever asks the
ledger for moves the ledger's rules allow; racing the
processor or a late webhook is safe because a settled job absorbs every later move.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from actors.finishing import JobFinisher, vendor_model
from actors.ledger_writes import LedgerWriter
from runtime.clock import Clock
from runtime.config import JoblineConfig
from runtime.errors import JoblineError
from runtime.models import Fail, Job, LedgerOp, Outcome
from runtime.ports import LedgerPort, Router
from runtime.results import ResultStore
from runtime.states import JobStatus
from runtime.telemetry import Family, Metrics, get_logger
from runtime.tracing import JobTracer
from runtime.vendors import TaskState, VendorClient

log = get_logger("sweeper")

RECOVERY_KINDS = ("expired", "redispatched", "zombie_completed", "handed_back")
INVARIANT_CHECK_INTERVAL = 60.0  # seconds between the ledger's invariant checks


@dataclass
class SweepReport:
    expired: int = 0
    redispatched: int = 0
    zombies_completed: int = 0
    handed_back: int = 0
    errors: list[str] = field(default_factory=list)


class Sweeper:
    def __init__(
        self,
        config: JoblineConfig,
        ledger: LedgerPort,
        router: Router,
        clients: Mapping[str, VendorClient],
        results: ResultStore,
        *,
        clock: Clock,
        metrics: Metrics,
        tracer: JobTracer,
    ) -> None:
        self.config = config
        self._ledger = ledger
        self._router = router
        self._clients = clients
        self._clock = clock
        self.metrics = metrics
        self._tracer = tracer
        self._writer = LedgerWriter(ledger.execute_many, clock)
        self._finisher = JobFinisher(config, self._writer, clients, results, metrics, tracer, clock)
        for kind in RECOVERY_KINDS:  # exported at 0 before the first recovery
            self.metrics.sweeper_recoveries.labels(kind)
        self._invariants_checked_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.sweeps = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()

    async def collect_metrics(self) -> list[Family]:
        return self.metrics.collect()

    async def ping(self) -> bool:
        return True

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self.config.sweeper.interval)
            try:
                await self.sweep_once()
            except Exception:  # keep sweeping: the next round may find the ledger back
                log.exception("sweep failed")

    async def sweep_once(self) -> SweepReport:
        report = SweepReport()
        now = self._clock.time()
        await self._expire(now, report)
        await self._redispatch_queued(now, report)
        await self._check_stuck(now, report)
        # One counter row (the ledger keeps it with the dead letters), never the letters.
        self.metrics.dead_letters_open.set(await self._ledger.open_dead_letters())
        await self._check_invariants(now)
        self.sweeps += 1
        return report

    async def _check_invariants(self, now: float) -> None:
        """Have the ledger check I1, I2, I5 now and then (it exports the violations)."""
        last = self._invariants_checked_at
        if last is not None and now - last < INVARIANT_CHECK_INTERVAL:
            return
        self._invariants_checked_at = now
        try:
            violations = await self._ledger.check_invariants()
        except Exception:
            log.exception("invariant check failed")
            return
        if violations:
            log.error("invariants violated", extra={"error": f"{violations} violations"})

    async def _expire(self, now: float, report: SweepReport) -> None:
        not_canceled: list[Job] = []
        for job in await self._ledger.expired_jobs(now):
            if (
                job.status is JobStatus.PROCESSING
                and job.vendor_task_id
                and not await self._finisher.cancel_at_vendor(job, job.vendor_task_id)
            ):
                not_canceled.append(job)
            with self._tracer.span("settle", job.trace_id, job_id=job.id, outcome="expired"):
                fail = Fail(job.id, "deadline passed", True)
                outcome = await self._execute(fail)
            if outcome.error is None and outcome.changed:
                report.expired += 1
                self.metrics.sweeper_recoveries.labels("expired").inc()
                self.metrics.credits.labels("released").inc(job.cost)
                self.metrics.jobs.labels(job.model, job.vendor, "failed").inc()
        # A task whose cancel failed still runs at the vendor, and no processor may follow
        # its job any more: the processor cancels it until the vendor confirms.
        for vendor, batch in _by_vendor(not_canceled).items():
            try:
                await self._router.processor(vendor).cancel_tasks([job.id for job in batch])
            except Exception as exc:
                report.errors.append(f"{vendor}: {exc}")

    async def _redispatch_queued(self, now: float, report: SweepReport) -> None:
        stale = now - self.config.sweeper.interval
        jobs = await self._ledger.jobs_by_status(JobStatus.QUEUED, updated_before=stale)
        for vendor, batch in _by_vendor(jobs).items():
            try:
                taken = await self._router.processor(vendor).adopt(batch)
            except Exception as exc:
                report.errors.append(f"{vendor}: {exc}")
                continue
            report.redispatched += taken
            if taken:
                self.metrics.sweeper_recoveries.labels("redispatched").inc(taken)

    async def _check_stuck(self, now: float, report: SweepReport) -> None:
        jobs = await self._ledger.jobs_by_status(JobStatus.PROCESSING)
        quiet = [
            job
            for job in jobs
            if job.vendor_task_id
            and now - job.updated_at >= self.config.vendors[job.vendor].stuck_after
        ]
        for vendor, batch in _by_vendor(quiet).items():
            past = {j.id for j in batch if now - j.updated_at >= self._bound(j)}
            hand_back = [j for j in batch if j.id not in past or not await self._zombie(j, report)]
            try:
                taken = await self._router.processor(vendor).adopt(hand_back)
            except Exception as exc:  # nobody follows them now: ask the vendor instead
                report.errors.append(f"{vendor}: {exc}")
                for job in hand_back:
                    if job.id not in past:
                        await self._zombie(job, report)
                continue
            report.handed_back += taken
            if taken:
                self.metrics.sweeper_recoveries.labels("handed_back").inc(taken)

    def _bound(self, job: Job) -> float:
        """How long the job's task may live: its model's queue and run bounds."""
        return self.config.models[job.model].task_bound

    async def _zombie(self, job: Job, report: SweepReport) -> bool:
        """Complete the job if its vendor task succeeded with nobody noticing."""
        if not await self._settle_if_succeeded(job):
            return False
        report.zombies_completed += 1
        self.metrics.sweeper_recoveries.labels("zombie_completed").inc()
        return True

    async def _settle_if_succeeded(self, job: Job) -> bool:
        """A zombie: the vendor task succeeded and nobody settled the job; complete it."""
        client = self._clients[job.vendor]
        assert job.vendor_task_id is not None
        try:
            status = await client.status(
                vendor_model(self.config, job), job.vendor_task_id, trace_id=job.trace_id
            )
            if status.state is not TaskState.SUCCEEDED:
                return False
            outcome = await self._finisher.complete(
                job, status.outputs, retry_downloads=False, outcome="zombie_completed"
            )
        except (JoblineError, OSError) as exc:  # the processor retries what failed here
            log.warning("zombie check failed", extra={"job_id": job.id, "error": str(exc)})
            return False
        if outcome.error is None and outcome.changed:
            log.info("zombie completed", extra={"job_id": job.id, "trace_id": job.trace_id})
            return True
        return False

    async def _execute(self, op: LedgerOp) -> Outcome:
        return (await self._ledger.execute_many([op]))[0]


def _by_vendor(jobs: list[Job]) -> dict[str, list[Job]]:
    grouped: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        grouped[job.vendor].append(job)
    return grouped
