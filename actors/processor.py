"""VendorProcessor: one per vendor; carries each of its jobs from the queue to the end.

Theory of operation
-------------------
The processor holds the vendor's concurrency slots. A job takes a slot just before it
is submitted and keeps it until the vendor task ends (succeeded, failed, canceled, or
our cancel confirmed), so the vendor never sees more tasks from jobline than its limit.

    queue (fair share) ──slot + rate token + circuit──▶ attempt:
        StartAttempt ─▶ submit ─▶ MarkProcessing(task id) ─▶ wait (webhook | poll)
        ─▶ slot freed ─▶ every output ─▶ ResultStore ─▶ Complete (capture)
    submit in doubt ─▶ the task is looked for (actors.in_doubt): found ─▶ adopted, as
                       if the submit had answered; none ─▶ retry; unknown ─▶ an orphan
                       keeps a slot, the job retries
    transient error ─▶ ScheduleRetry (backoff) on this vendor, or fail over to the next
                       vendor of the route when this one's attempts are spent or its
                       circuit is open; with no vendor left, wait for the circuit's probe
    vendor-wide refusal (account, billing, model) ─▶ the circuit opens for
                       circuit.refused_cooldown; fail over at once, or wait
    permanent error ─▶ Fail (release + dead letter)

How long a task may wait in the vendor's queue and run is its model's
(``runtime.task_bounds``, ``actors.waiting``): a task reported queued or running within
those bounds is never given up on; replicate is told the bound (``Cancel-After``).

The next job to start is taken round-robin across the accounts with a job ready
(``runtime.fairness.FairQueue``, weighted by each account's ``slot_weight``, read from
the ledger when an account first queues here and every ``WEIGHTS_TTL`` seconds): one
account's burst delays another account's job by about one slot turnover, not by the
whole burst. A free slot is kept for each account holding none that was active lately,
at most ``[fairness] headroom`` of them (``runtime.fairness.Headroom``), so a quiet
account's job next to a flood starts at once instead of after a turnover.

What happens after a failure is decided by a pure function of values
(``runtime.policies.after_failure``), applied here. Slots are ``actors.slots.Slot``
objects, whose release is idempotent; downloads and the Complete go through
``actors.finishing.JobFinisher``, which the sweeper shares: a download or storage
problem retries the download, never the vendor task.

Every step is one ledger operation; the ledger's compare-and-set on ``attempt`` and its
terminal guard make a stale or duplicate step a no-op, so a restarted processor, the
sweeper and a late webhook can all touch one job without settling it twice. The writes
that end an attempt are retried until they land (``actors.ledger_writes``).

On start the processor loads every ``queued`` or ``processing`` job the ledger says is
on its vendor: ``processing`` jobs are resumed by polling their vendor task id (never
submitted again) and take a slot each; ``queued`` jobs go back in the queue; a job whose
last submit is in doubt (the processor stopped between the submit and recording the id)
has its task looked for first, and every orphan the ledger knows keeps a slot. The task of
a job canceled while processing is such an orphan, with its id, from the ledger's Cancel
until the vendor confirms its cancel: a processor restarted meanwhile holds a slot for it
and cancels it, before its first new attempt (I4).

Work paid for and thrown away is counted by reason in
``jobline_vendor_wasted_tasks_total`` (``WASTE_REASONS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from actors.finishing import (
    JobFinisher,
    vendor_model,
)
from actors.in_doubt import Doubt, SubmitsInDoubt
from actors.ledger_writes import LedgerWriter, until_the_ledger_answers
from actors.outcomes import HeldJob, Outcomes
from actors.slots import Slot, Slots
from actors.waiting import Followed, TaskWaiter
from runtime.clock import Clock
from runtime.config import JoblineConfig, VendorConfig
from runtime.errors import (
    JoblineError,
    LedgerUnavailable,
    VendorError,
    VendorSubmitInDoubt,
    VendorTimeout,
    VendorTransientError,
    VendorUnavailable,
)
from runtime.fairness import DEFAULT_WEIGHT, FairQueue, Headroom
from runtime.models import (
    EndOrphan,
    Job,
    MarkProcessing,
    Orphan,
    RecordOrphan,
    RecordWebhook,
    StartAttempt,
)
from runtime.policies import (
    CircuitBreaker,
    CircuitState,
    Next,
    TokenBucket,
    when_circuit_refuses,
)
from runtime.ports import LedgerPort, Router
from runtime.results import ResultStore
from runtime.states import JobStatus
from runtime.task_bounds import TaskBounds, TaskWatch
from runtime.telemetry import Family, Metrics, get_logger
from runtime.tracing import JobTracer, Span
from runtime.vendors import FoundTask, TaskState, TaskStatus, VendorClient, WebhookEvent
from runtime.webhooks import ATTEMPT_PARAM, JOB_PARAM

log = get_logger("processor")
T = TypeVar("T")

CIRCUIT_GAUGE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
EARLY_EVENT_TTL = 600.0  # seconds a webhook for a not-yet-known task is kept
START_BACKOFF = 1.0  # seconds before a job whose attempt could not be recorded is tried again
WEIGHTS_TTL = 10.0  # seconds the accounts' slot weights are trusted before they are read again
# Seconds a submitted task's MarkProcessing may wait to ride in the actor call of another
# write of this processor (``LedgerWriter.op``): at 17 jobs/s a vendor's processor writes
# every ~30 ms, so it nearly always rides; alone, it costs a status read this much lag.
RECORD_LINGER = 0.1


class VendorProcessor:
    def __init__(
        self,
        vendor: VendorConfig,
        config: JoblineConfig,
        ledger: LedgerPort,
        client: VendorClient,
        results: ResultStore,
        router: Router,
        *,
        clock: Clock,
        rng: random.Random,
        slots: Slots,
        metrics: Metrics,
        tracer: JobTracer,
    ) -> None:
        self.vendor = vendor
        self.config = config
        self._ledger = ledger
        self._writer = LedgerWriter(ledger.execute_many, clock)
        self._client = client
        self._router = router
        self._clock = clock
        self._breaker = CircuitBreaker(config.circuit.policy())
        self._circuit_seen = CircuitState.CLOSED  # the last state logged
        self._bucket = TokenBucket(vendor.requests_per_second or None)
        self.metrics = metrics
        # This vendor's gauges, labelled once: they are set at every step of every job.
        self._gauges = (
            metrics.vendor_inflight.labels(vendor.name),
            metrics.queue_depth.labels(vendor.name),
            metrics.circuit_state.labels(vendor.name),
        )
        self._webhook_gauges = (
            metrics.webhooks_arriving.labels(vendor.name),
            metrics.webhooks_lost.labels(vendor.name),
        )
        self._webhooks_lost_seen = 0
        self._tracer = tracer
        self._finisher = JobFinisher(
            config, self._writer, {vendor.name: client}, results, metrics, tracer, clock
        )
        self._waiter = TaskWaiter(vendor, client, clock, on_unreadable=self._read_failed)
        self._doubt = SubmitsInDoubt(
            vendor, config, client, self._writer, self._waiter, clock, metrics, self._spawn
        )
        self._slots = slots
        slots.on_release(self._slot_freed)
        self._queue = FairQueue()
        self._headroom = Headroom(config.fairness.headroom, config.fairness.window)
        self._weights: dict[str, float] = {}  # account -> slot weight, as last read
        self._unweighed: set[str] = set()  # accounts queued here whose weight is not read
        self._weights_read_at = -math.inf
        self._weights_task: asyncio.Task[None] | None = None
        self._held: dict[str, HeldJob] = {}
        self._by_task: dict[str, str] = {}  # vendor task id -> job id
        self._early: dict[str, tuple[float, TaskStatus]] = {}  # webhooks before the task id
        self._canceling: set[str] = set()  # task ids no attempt follows, canceled here
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump_task: asyncio.Task[None] | None = None
        self._outcomes = Outcomes(
            vendor,
            config,
            writer=self._writer,
            finisher=self._finisher,
            router=router,
            breaker=self._breaker,
            rng=rng,
            clock=clock,
            metrics=metrics,
            tracer=tracer,
            requeue=self._requeue,
            drop=self._drop,
            on_circuit_change=self._publish_gauges,
        )
        self.metrics.vendor_limit.labels(vendor.name).set(vendor.concurrency)
        for kind in ("captured", "released"):  # exported at 0 before the first event
            self.metrics.credits.labels(kind)
        self._publish_gauges()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load this vendor's unfinished jobs, submits in doubt and orphans; start working."""
        if self._pump_task is not None:
            return
        # A processor (re)started while the ledger cannot be reached (its actor restarting,
        # its database failing) waits for it: calls to this role wait for its start, and
        # a start that gave up would leave the vendor without a processor until a restart.
        in_doubt, jobs, orphans = await self._until_the_ledger_answers(self._recovery_reads)
        for job in in_doubt:
            self._take_in_doubt(job)
        for job in jobs:
            self._take(job)
        for orphan in orphans:
            if orphan.task_id is None:
                self._doubt.hold(
                    orphan.job_id, orphan.attempt, orphan.model, orphan.since, orphan.until,
                    self._slots.take(), trace_id=orphan.trace_id,
                )  # fmt: skip
        left_running = [o for o in orphans if o.task_id and o.task_id not in self._by_task]
        if left_running:  # tasks of jobs that ended before the vendor confirmed their cancel
            ended = await self._until_the_ledger_answers(
                lambda: self._ledger.get_jobs([o.job_id for o in left_running])
            )
            for orphan, ended_job in zip(left_running, ended, strict=True):
                assert orphan.task_id is not None
                if ended_job is not None:
                    task = self._unfollowed(ended_job, orphan.attempt, orphan.task_id)
                    self._cancel_unfollowed(task)
        self._pump_task = asyncio.create_task(self._pump())
        log.info(
            "started",
            extra={
                "vendor": self.vendor.name,
                "error": f"recovered {len(jobs)} jobs, {len(in_doubt)} submits in doubt, "
                f"{len(orphans)} orphans",
            },
        )

    async def _recovery_reads(self) -> tuple[list[Job], list[Job], list[Orphan]]:
        """What a start recovers, read as of now: submits in doubt, unfinished jobs and
        orphans."""
        now = self._clock.time()
        in_doubt = await self._ledger.submits_in_doubt(self.vendor.name, now - self._longest_life())
        jobs = await self._ledger.jobs_for_vendor(
            self.vendor.name, [JobStatus.QUEUED, JobStatus.PROCESSING]
        )
        # Read after the jobs: a job canceled in between is either among them (its attempt
        # follows the task) or its task is among the orphans, never neither.
        orphans = await self._ledger.orphans(self.vendor.name, now)
        return in_doubt, jobs, orphans

    async def _until_the_ledger_answers(self, read: Callable[[], Awaitable[T]]) -> T:
        def retrying(error: Exception) -> None:
            log.warning(
                "cannot load from the ledger yet; trying again",
                extra={"vendor": self.vendor.name, "error": str(error)},
            )

        return await until_the_ledger_answers(read, self._clock, retrying=retrying)

    async def stop(self) -> None:
        tasks = [t for t in (self._pump_task, self._weights_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._writer.close()  # a task id not recorded yet: in doubt, resolved on start
        self._pump_task = None
        with contextlib.suppress(Exception):
            await self._client.close()

    def _longest_life(self) -> float:
        """The longest a task of this vendor lives after its submit (any model on it)."""
        lives = [
            self.vendor.task_lifetime_for(model)
            for model in self.config.models.values()
            if any(step.vendor == self.vendor.name for step in model.route)
        ]
        return self.vendor.submit_timeout + max(lives, default=self.vendor.task_lifetime)

    # --- the port other actors call -----------------------------------------------------

    async def dispatch(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self._take(job)

    async def adopt(self, jobs: Sequence[Job]) -> int:
        return sum(1 for job in jobs if self._take(job))

    async def on_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        now = self._clock.time()
        for event in events:
            self._waiter.webhook_came(event.task_id)
            job_id = self._by_task.get(event.task_id)
            held = self._held.get(job_id) if job_id else None
            if held is not None and held.followed is not None:
                held.followed.push(event.status)
                continue
            if job_id is None and self._doubt.on_event(event, now):
                continue  # a submit in doubt resolved, or an orphan ended
            if event.status.state.ended:
                self._early[event.task_id] = (now, event.status)
        self._forget_old_early_events(now)

    async def take_webhooks(self, events: Sequence[WebhookEvent]) -> list[str]:
        answers = []
        for event in events:
            self._waiter.webhook_came(event.task_id)
            job_id = self._by_task.get(event.task_id)
            held = self._held.get(job_id) if job_id else None
            if held is None or held.followed is None or held.followed.task_id != event.task_id:
                answers.append("")
            elif event.webhook_id in held.webhook_ids:
                answers.append("duplicate")
            else:
                held.webhook_ids.add(event.webhook_id)
                self._writer.attach(held.job.id, RecordWebhook(self.vendor.name, event.webhook_id))
                held.followed.push(event.status)
                answers.append("taken")
        return answers

    async def cancel_tasks(self, job_ids: Sequence[str]) -> None:
        not_held = []
        for job_id in job_ids:
            held = self._held.get(job_id)
            if held is None:
                not_held.append(job_id)
                continue
            held.cancel_requested = True
            self._doubt.stop_waiting(job_id)
            if held.task_id is None:
                if held.queued and self._queue.discard(job_id):
                    held.queued = False  # the ledger released it already: just forget it
                    self._spawn(self._drop_queued(held))
            else:
                if held.followed is not None and held.followed.watch.started:
                    held.ran_when_canceled = True
                    self._outcomes.waste("client_canceled")
                self._spawn(self._finisher.cancel_at_vendor(held.job, held.task_id))
        if not_held:
            # Not followed here (this processor restarted after the ledger ended the job,
            # so it never loaded it): its vendor task may still run, and nobody else would
            # ever cancel it. A slot each is taken before the ledger is read, so no attempt
            # starts in one meanwhile.
            slots = [self._slots.take() for _ in not_held]
            for job, slot in zip(await self._ledger.get_jobs(not_held), slots, strict=True):
                if (
                    job is not None
                    and job.status in (JobStatus.CANCELED, JobStatus.FAILED)
                    and job.vendor == self.vendor.name
                    and job.vendor_task_id is not None
                ):
                    orphan = await self._remember_unfollowed(job, job.attempts, job.vendor_task_id)
                    self._cancel_unfollowed(orphan, slot)
                else:
                    slot.release()

    async def stats(self) -> dict[str, Any]:
        now = self._clock.time()
        return {
            "vendor": self.vendor.name,
            "limit": self.vendor.concurrency,
            "inflight": self._slots.taken,
            "queued": len(self._queue),
            "held": len(self._held),
            "unrecorded": self._doubt.held,
            "circuit": self._breaker.state(now).value,
            **self._outcomes.counters,
            "in_doubt": dict(self._doubt.counts),
            "wasted": {**self._outcomes.wasted, "late_orphan": self._doubt.counts["late_orphans"]},
            "ledger_retries": self._writer.retried,
            "webhooks_arriving": self._waiter.webhooks.arriving(now),
            "webhooks_lost": self._waiter.webhooks.lost,
        }

    async def collect_metrics(self) -> list[Family]:
        self._publish_gauges()
        return self.metrics.collect()

    # --- the queue ----------------------------------------------------------------------

    def _take(self, job: Job) -> bool:
        """Hold a job the ledger says is ours; False if already held or not ours."""
        if job.id in self._held or job.terminal or job.vendor != self.vendor.name:
            return False
        held = HeldJob(job, task_id=job.vendor_task_id)
        self._held[job.id] = held
        if job.status is JobStatus.PROCESSING and job.vendor_task_id:
            slot = self._take_slot(job.account_id)  # the vendor runs it: it holds a slot
            self._by_task[job.vendor_task_id] = job.id
            self._spawn(self._resume(held, slot))
        else:
            self._enqueue(held)
        self._publish_gauges()
        return True

    def _take_in_doubt(self, job: Job) -> None:
        """A job whose last submit is in doubt (this processor stopped mid-submit): its
        task is looked for before anything else; a terminal job's keeps a slot."""
        slot = self._take_slot(job.account_id)
        since = job.updated_at  # its StartAttempt, just before the submit
        model = vendor_model(self.config, job)
        if job.terminal or job.status is not JobStatus.QUEUED:
            until = since + self._doubt.lifetime(job)
            self._doubt.hold(job.id, job.attempts, model, since, until, slot, trace_id=job.trace_id)
            return
        held = HeldJob(job)
        self._held[job.id] = held
        self._spawn(self._attempt_in_doubt(held, job.attempts, since, slot))

    async def _pump(self) -> None:
        """Start attempts while there are ready jobs, free slots, rate and circuit."""
        while True:
            self._wakeup.clear()
            delay = self._start_ready_jobs()
            self._publish_gauges()
            if delay is None:
                await self._wakeup.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=max(delay, 0.001))

    def _start_ready_jobs(self) -> float | None:
        """Start what can start now; return how long until something might, or None."""
        now = self._clock.time()
        if self._breaker.state(now) is CircuitState.OPEN:
            self._fail_over_queue("circuit open")
        self._read_weights_when_due(now)
        while self._queue:
            if not self._slots.has_room():
                return None  # a slot freed wakes us
            now = self._clock.time()
            skip = self._skip_at(now)
            entry = self._queue.peek(now, skip)
            if entry is None:
                # Nothing ready, or only accounts the headroom holds back for now.
                kept = self._headroom.wake_at(now) if skip is not None else None
                times = [t for t in (self._queue.next_ready_at(), kept) if t is not None]
                return min(times) - now if times else None
            held = self._held.get(entry.job_id)
            if held is None or not held.queued:
                self._queue.discard(entry.job_id)  # a stale entry
                continue
            if held.cancel_requested or now >= held.job.deadline:
                self._queue.discard(entry.job_id)
                held.queued = False
                self._spawn(self._drop_queued(held))
                continue
            if not self._breaker.allow(now):
                if when_circuit_refuses(self._outcomes.has_next_vendor(held.job)) is Next.FAIL_OVER:
                    self._queue.discard(entry.job_id)
                    held.queued = False
                    self._spawn(self._outcomes.fail_over(held, "circuit open"))
                    continue
                return max(self._breaker.delay_until_allowed(now), 0.05)  # Next.WAIT
            wait = self._bucket.reserve(now)
            self._queue.pop(now, skip)  # its account's turn is used
            held.queued = False
            self._spawn(self._attempt(held, wait, self._take_slot(entry.account)))
        return None

    def _skip_at(self, now: float) -> Callable[[str], bool] | None:
        """Which accounts pass their turn now: those the headroom holds back (when the
        slots free are within the headroom), or None."""
        free = self._slots.limit - self._slots.taken
        if free > self._headroom.slots:
            return None
        queue, headroom = self._queue, self._headroom
        return lambda account: not headroom.may_take(account, free, now, queue.queued)

    def _take_slot(self, account: str) -> Slot:
        """A slot held for ``account``'s job (counted by the headroom until given back)."""
        self._headroom.took(account)
        return self._slots.take(account)

    def _fail_over_queue(self, reason: str) -> None:
        """Hand every queued job that has a next vendor on to it."""
        for entry in self._queue:
            held = self._held.get(entry.job_id)
            if held is None or not held.queued:
                self._queue.discard(entry.job_id)
            elif self._outcomes.has_next_vendor(held.job) and not held.cancel_requested:
                self._queue.discard(entry.job_id)
                held.queued = False
                self._spawn(self._outcomes.fail_over(held, reason))

    def _read_weights_when_due(self, now: float) -> None:
        """Read the queued accounts' slot weights when one is new here or they are old."""
        if self._weights_task is not None or not self._queue:
            return
        if self._unweighed or now - self._weights_read_at >= WEIGHTS_TTL:
            accounts = self._queue.accounts()  # O(accounts queued): once per read only
            self._unweighed.clear()
            self._weights_read_at = now
            self._weights_task = asyncio.get_running_loop().create_task(
                self._read_weights(accounts)
            )

    async def _read_weights(self, accounts: list[str]) -> None:
        try:
            weights = await self._ledger.slot_weights(accounts)
        except Exception as exc:  # the weights stay as they were; tried again later
            log.warning("slot weights not read", extra={"error": str(exc)})
            weights = {}
            accounts = [a for a in accounts if a not in self._weights]
        finally:
            self._weights_task = None
        known = {a: self._weights[a] for a in self._queue.accounts() if a in self._weights}
        for account in accounts:
            known[account] = weight = weights.get(account, DEFAULT_WEIGHT)
            self._queue.set_weight(account, weight)
        self._weights = known
        self._wakeup.set()

    # --- one attempt --------------------------------------------------------------------

    async def _attempt(self, held: HeldJob, rate_wait: float, slot: Slot) -> None:
        job = held.job
        try:
            if rate_wait > 0:
                await self._clock.sleep(rate_wait)
            attempt = job.attempts + 1
            with self._span("ledger.start_attempt", job, attempt=attempt):
                started = await self._start_attempt(held, attempt)
            if not started:
                slot.release()
                return
            job = held.job
            since = self._clock.time()
            try:
                with self._span("vendor.submit", job, attempt=attempt):
                    task_id = await self._client.submit(
                        vendor_model(self.config, job),
                        job.input,
                        job_id=job.id,
                        attempt=attempt,
                        trace_id=job.trace_id,
                        webhook_url=self._webhook_url(job.id, attempt),
                        cancel_after=self._cancel_after(job),
                    )
            except VendorSubmitInDoubt as exc:
                self._breaker.record_failure(self._clock.time())
                await self._resolve_doubt(held, attempt, since, slot, exc)
                return
            except VendorError as exc:
                self._record_vendor_result(exc)
                slot.release()
                await self._outcomes.after_failure(held, attempt, exc)
                return
            await self._follow(
                held, attempt, FoundTask(task_id, TaskStatus(TaskState.PENDING)), slot, since
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or the ledger gone: the sweeper will recover the job
            log.exception("attempt crashed", extra={"job_id": job.id, "trace_id": job.trace_id})
        finally:
            slot.release()
            self._drop_unless_queued(held)

    async def _start_attempt(self, held: HeldJob, attempt: int) -> bool:
        """Record the attempt (StartAttempt); False if the job cannot go on now: ended,
        taken over, or the ledger unreachable (then it is queued again, with a backoff)."""
        job = held.job
        op = StartAttempt(job.id, attempt, self.vendor.name, job.route_position)
        try:
            start = await self._writer.op(op)
        except Exception as exc:  # the ledger unreachable: try again soon, do not strand it
            if isinstance(exc, JoblineError) and not isinstance(exc, LedgerUnavailable):
                raise
            log.warning("attempt not recorded", extra={"job_id": job.id, "error": str(exc)})
            self._enqueue(held, self._clock.time() + START_BACKOFF)
            return False
        job = held.job = start.value
        return not (job.terminal or job.attempts != attempt or job.status is not JobStatus.QUEUED)

    async def _attempt_in_doubt(
        self, held: HeldJob, attempt: int, since: float, slot: Slot
    ) -> None:
        """A job found on start with its last submit in doubt: resolve it first."""
        job = held.job
        try:
            reason = VendorSubmitInDoubt(self.vendor.name, "the processor stopped mid-submit")
            await self._resolve_doubt(held, attempt, since, slot, reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("in-doubt recovery crashed", extra={"job_id": job.id})
        finally:
            slot.release()
            self._drop_unless_queued(held)

    async def _resolve_doubt(
        self, held: HeldJob, attempt: int, since: float, slot: Slot, exc: VendorSubmitInDoubt
    ) -> None:
        """The submit's answer was lost: adopt its task, retry, or leave an orphan."""
        job = held.job
        model = vendor_model(self.config, job)
        with self._span("vendor.in_doubt", job, attempt=attempt):
            found = await self._doubt.resolve(job, attempt, model, since)
        if isinstance(found, FoundTask):
            await self._follow(held, attempt, found, slot, since)
            return
        if found is Doubt.UNKNOWN:
            until = await self._doubt.record(job, attempt, model, since)
            self._doubt.hold(
                job.id, attempt, model, since, until, slot.hand_over(), trace_id=job.trace_id
            )
        slot.release()
        if not held.cancel_requested:
            await self._outcomes.after_failure(held, attempt, exc)

    async def _follow(
        self, held: HeldJob, attempt: int, task: FoundTask, slot: Slot, since: float
    ) -> None:
        """Record the task's id, wait for its end, free the slot, and finish the job."""
        job = held.job
        held.task_id = task.task_id
        self._by_task[task.task_id] = job.id
        op = MarkProcessing(job.id, attempt, task.task_id)
        try:
            # Sent again while the ledger cannot be reached: a task the vendor bills is
            # not thrown away for a moment of it (a 5-s ledger restart cancelled it, and
            # the job ran a second task). A refusal (the job ended or was taken over)
            # comes at once.
            marked = await self._writer.settle(op, job.deadline, linger=RECORD_LINGER)
        except Exception:
            # The task runs with no record of its id: the job will get a new attempt, so
            # nobody else would ever end this one.
            self._cancel_unfollowed(self._unfollowed(job, attempt, task.task_id), slot.hand_over())
            raise
        job = held.job = marked.value
        if job.terminal or held.cancel_requested:
            await self._remember_unfollowed(job, attempt, task.task_id)
            await self._finisher.cancel_at_vendor(job, task.task_id)
        status = await self._traced_wait(held, task.task_id, attempt, since, task.status)
        slot.release()
        self._forget_unfollowed(held, attempt, task.task_id)
        await self._outcomes.finish(held, attempt, status)

    async def _resume(self, held: HeldJob, slot: Slot) -> None:
        """A processing job found at start-up: poll its task, never submit it again."""
        job = held.job
        assert held.task_id is not None
        try:
            with slot:
                status = await self._traced_wait(held, held.task_id, job.attempts, job.updated_at)
                slot.release()
                self._forget_unfollowed(held, job.attempts, held.task_id)
                await self._outcomes.finish(held, job.attempts, status)
        except asyncio.CancelledError:
            raise
        except Exception:  # the sweeper will recover the job
            log.exception("resume crashed", extra={"job_id": job.id, "trace_id": job.trace_id})
        finally:
            self._drop_unless_queued(held)

    async def _traced_wait(
        self,
        held: HeldJob,
        task_id: str,
        attempt: int,
        since: float,
        known: TaskStatus | None = None,
    ) -> TaskStatus | None:
        """Wait for the task's end within its model's bounds (``actors.waiting``)."""
        job = held.job
        model = self.config.models[job.model]
        bounds = TaskBounds(model.max_queue_time, model.max_run_time, self.vendor.stuck_after)
        held.followed = followed = Followed(task_id, TaskWatch(bounds, since))
        early = self._early.pop(task_id, None)
        if early is not None:
            known = early[1]
        if known is not None:
            followed.watch.saw(known.state, self._clock.time())
        cancel_until = max(job.deadline, self._clock.time() + self._doubt.lifetime(job))
        with self._span("vendor.wait", job, attempt=attempt, task_id=task_id) as span:
            status = await self._waiter.wait(
                followed, vendor_model(self.config, job), job.trace_id, known,
                cancel_until=cancel_until,
            )  # fmt: skip
            ended = TaskState.FAILED if status is None else status.state
            span.set_attribute("jobline.outcome", ended.value)
        return status

    async def _drop_queued(self, held: HeldJob) -> None:
        job = held.job
        if not held.cancel_requested and self._clock.time() >= job.deadline:
            await self._outcomes.fail(
                job, "deadline passed before a vendor took the job", expired=True
            )
        self._drop(job.id)

    def _unfollowed(self, job: Job, attempt: int, task_id: str) -> Orphan:
        """The task of ``(job, attempt)`` as an orphan no attempt follows: it may run until
        the job's deadline or the vendor's own end of it, whichever is later."""
        now = self._clock.time()
        until = max(job.deadline, now + self._doubt.lifetime(job))
        model = vendor_model(self.config, job)
        return Orphan(job.id, attempt, self.vendor.name, model, now, until, job.trace_id, task_id)

    async def _remember_unfollowed(self, job: Job, attempt: int, task_id: str) -> Orphan:
        """A task whose job ended (or is ending) may still run: the ledger keeps it as an
        orphan with its id before its cancel goes out, so a processor restarted before the
        vendor confirms the cancel still holds its slot and cancels it (``start``).
        One try: the slot is held here either way; only a restart at the same moment as a
        ledger outage would forget the task."""
        orphan = self._unfollowed(job, attempt, task_id)
        op = RecordOrphan(
            orphan.job_id, orphan.attempt, orphan.vendor, orphan.model, orphan.since,
            orphan.until, task_id,
        )  # fmt: skip
        try:
            await self._writer.op(op)
        except Exception as exc:
            log.warning("unfollowed task not recorded", extra={"job_id": job.id, "error": str(exc)})
        return orphan

    def _cancel_unfollowed(self, orphan: Orphan, slot: Slot | None = None) -> None:
        """Cancel a task no attempt follows (its job ended while this processor was away or
        before the vendor confirmed the cancel, or its id never reached the ledger) until
        the vendor confirms. The task counts against the vendor's limit meanwhile: it holds
        ``slot`` (a new one if None). A task canceled here already takes no second slot."""
        assert orphan.task_id is not None
        if orphan.task_id in self._canceling:
            if slot is not None:
                slot.release()
            return
        self._canceling.add(orphan.task_id)
        self._spawn(self._cancel_until_confirmed(orphan, slot or self._slots.take()))

    async def _cancel_until_confirmed(self, orphan: Orphan, slot: Slot) -> None:
        assert orphan.task_id is not None
        try:
            with slot:
                await self._waiter.cancel_until_confirmed(
                    orphan.model, orphan.task_id, orphan.until, trace_id=orphan.trace_id,
                    job_id=orphan.job_id,
                )  # fmt: skip
        finally:
            self._canceling.discard(orphan.task_id)
        with contextlib.suppress(Exception):  # left open, it is canceled again after a restart
            await self._writer.op(EndOrphan(orphan.job_id, orphan.attempt, orphan.task_id))

    def _forget_unfollowed(self, held: HeldJob, attempt: int, task_id: str) -> None:
        """The task of a canceled job ended while this processor followed it."""
        if held.cancel_requested or held.job.terminal:
            self._spawn(self._writer.op(EndOrphan(held.job.id, attempt, task_id)))

    # --- small parts --------------------------------------------------------------------

    def _span(
        self, name: str, job: Job, **attributes: Any
    ) -> contextlib.AbstractContextManager[Span]:
        fields = {"job_id": job.id, "vendor": self.vendor.name, **attributes}
        return self._tracer.span(name, job.trace_id, **fields)

    def _enqueue(self, held: HeldJob, not_before: float | None = None) -> None:
        held.queued = True
        job = held.job
        at = job.not_before if not_before is None else not_before
        weight = self._weights.get(job.account_id)
        if weight is None:
            self._unweighed.add(job.account_id)
        self._queue.push(job.id, job.account_id, at, weight)
        self._headroom.queued(job.account_id, self._clock.time())
        self._wakeup.set()

    def _requeue(self, held: HeldJob, job: Job) -> None:
        held.job = job
        if held.task_id is not None:
            self._by_task.pop(held.task_id, None)
        held.task_id = None
        held.followed = None
        self._enqueue(held)

    def _drop(self, job_id: str) -> None:
        if self._writer.holds(job_id):  # receipts with no write of the job left to ride
            self._spawn(self._writer.release(job_id))
        held = self._held.pop(job_id, None)
        if held is not None and held.task_id is not None:
            self._by_task.pop(held.task_id, None)
        self._publish_gauges()

    def _drop_unless_queued(self, held: HeldJob) -> None:
        """After an attempt: keep the job only if it went back in the queue (a retry)."""
        if self._held.get(held.job.id) is held and not held.queued:
            self._drop(held.job.id)

    def _slot_freed(self, owner: str | None) -> None:
        if owner is not None:
            self._headroom.gave_back(owner, self._clock.time())
        self._wakeup.set()
        self._publish_gauges()

    def _read_failed(self, exc: VendorError) -> None:
        """A task's state could not be read: a vendor answering 5xx or nothing counts
        against the circuit (``CircuitBreaker.record_read_failure``); a 429 or a refusal
        does not (the vendor is up). Once open, the queued jobs fail over."""
        if isinstance(exc, (VendorUnavailable, VendorTimeout)):
            was = self._breaker.state(self._clock.time())
            self._breaker.record_read_failure(self._clock.time())
            if self._breaker.state(self._clock.time()) is not was:
                self._wakeup.set()

    def _record_vendor_result(self, exc: VendorError) -> None:
        if isinstance(exc, VendorTransientError):
            self._breaker.record_failure(self._clock.time())

    def _cancel_after(self, job: Job) -> float:
        """The task's own deadline at the vendor (replicate's ``Cancel-After``)."""
        return self.vendor.task_lifetime_for(self.config.models[job.model])

    def _webhook_url(self, job_id: str, attempt: int) -> str:
        reference = urlencode({JOB_PARAM: job_id, ATTEMPT_PARAM: attempt})
        return f"{self.config.gateway.public_url}/v1/webhooks/{self.vendor.name}?{reference}"

    def _forget_old_early_events(self, now: float) -> None:
        if len(self._early) > 1000:
            for task_id, (at, _) in list(self._early.items()):
                if now - at > EARLY_EVENT_TTL:
                    del self._early[task_id]

    def _publish_gauges(self) -> None:
        name = self.vendor.name
        inflight, queue_depth, circuit = self._gauges
        inflight.set(self._slots.taken)
        queue_depth.set(len(self._queue))
        now = self._clock.time()
        state = self._breaker.state(now)
        circuit.set(CIRCUIT_GAUGE[state])
        arriving, lost = self._webhook_gauges
        webhooks = self._waiter.webhooks
        arriving.set(1 if webhooks.arriving(now) else 0)
        if webhooks.lost > self._webhooks_lost_seen:
            lost.inc(webhooks.lost - self._webhooks_lost_seen)
            self._webhooks_lost_seen = webhooks.lost
        if state is not self._circuit_seen:
            self._circuit_seen = state
            if state is CircuitState.OPEN:
                log.warning("circuit opened: jobs fail over", extra={"vendor": name})
            else:
                log.info(
                    "circuit %s",
                    state.value.replace("_", "-"),
                    extra={"vendor": name, "notice": True},
                )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._step_ended)

    def _step_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The ledger or a vendor failed under a background step (a failover, a drop, a
            # cancel): the job stays in the ledger, where the sweeper finds it.
            log.error("background step failed", exc_info=task.exception())
