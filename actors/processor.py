"""VendorProcessor: one per vendor; carries each of its jobs from the queue to the end.

Theory of operation
-------------------
The processor holds the vendor's concurrency slots. A job takes a slot just before it
is submitted and keeps it until the vendor task ends (succeeded, failed, canceled, or
our cancel confirmed), so the vendor never sees more tasks from jobline than its limit.

    queue (not_before order) ──slot + rate token + circuit──▶ attempt:
        StartAttempt ─▶ submit ─▶ MarkProcessing(task id) ─▶ wait (webhook | poll)
        ─▶ slot freed ─▶ download ─▶ ResultStore ─▶ Complete (capture)
    transient error ─▶ ScheduleRetry (backoff) on this vendor, or fail over to the next
                       vendor of the route when this one's attempts are spent or its
                       circuit is open
    permanent error or route spent ─▶ Fail (release + dead letter)

What happens after a failure is decided by a pure function of values
(``runtime.policies.after_failure``), applied here. Slots are ``actors.slots.Slot``
objects, whose release is idempotent; a download and the Complete go through
``actors.finishing.JobFinisher``, which the sweeper shares.

Every step is one ledger operation; the ledger's compare-and-set on ``attempt`` and its
terminal guard make a stale or duplicate step a no-op, so a restarted processor, the
sweeper and a late webhook can all touch one job without settling it twice. Ledger
operations go through a Coalescer: concurrent jobs share one actor call.

On start the processor loads every ``queued`` or ``processing`` job the ledger says is
on its vendor: ``processing`` jobs are resumed by polling their vendor task id (never
submitted again) and take a slot each; ``queued`` jobs go back in the queue.

A submit whose answer was lost (a timeout, a 5xx, a connection cut: the vendor may have
created the task), and a processor stopped between a submit and its MarkProcessing,
leave a vendor task whose id nobody recorded: the submit is "in doubt" (the ledger marks
it until the attempt is recorded or retried). Such a task cannot be polled or canceled,
but it counts against the vendor's limit, so the processor holds a slot for it (on start,
for each submit in doubt in the ledger) until the task shows itself (a webhook: its URL
names the job and attempt) or until the vendor must have ended it (``max_task_time``,
which replicate enforces through ``Cancel-After``). The job itself goes on with a new
attempt: done twice at the vendor, charged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from actors.finishing import JobFinisher, vendor_model
from actors.slots import Slot, Slots
from runtime.batching import Coalescer
from runtime.clock import Clock
from runtime.config import JoblineConfig, VendorConfig
from runtime.errors import (
    VendorError,
    VendorPermanentError,
    VendorRefused,
    VendorTaskFailed,
    VendorTimeout,
    VendorTransientError,
    VendorUnavailable,
)
from runtime.models import (
    Fail,
    Job,
    LedgerOp,
    MarkProcessing,
    Outcome,
    ScheduleRetry,
    StartAttempt,
)
from runtime.policies import (
    CircuitBreaker,
    CircuitState,
    Failure,
    Next,
    TokenBucket,
    after_failure,
    classify,
    when_circuit_refuses,
)
from runtime.ports import LedgerPort, Router
from runtime.results import ResultStore
from runtime.states import JobStatus
from runtime.telemetry import Family, Metrics, get_logger
from runtime.tracing import JobTracer, Span
from runtime.vendors import TaskState, TaskStatus, VendorClient, WebhookEvent
from runtime.webhooks import ATTEMPT_PARAM, JOB_PARAM

log = get_logger("processor")

CIRCUIT_GAUGE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
EARLY_EVENT_TTL = 600.0  # seconds a webhook for a not-yet-known task is kept
MAX_POLL_INTERVAL = 10.0


@dataclass(slots=True)
class _Held:
    """A job this processor is responsible for right now."""

    job: Job
    task_id: str | None = None
    cancel_requested: bool = False
    queued: bool = False  # waiting in the queue (not in an attempt)
    waiter: asyncio.Future[TaskStatus] | None = None


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
        self._ops: Coalescer[LedgerOp, Outcome] = Coalescer(ledger.execute_many)
        self._client = client
        self._router = router
        self._clock = clock
        self._rng = rng
        self._retry = config.retry.policy()
        self._breaker = CircuitBreaker(config.circuit.policy())
        self._bucket = TokenBucket(vendor.requests_per_second or None)
        self.metrics = metrics
        self._tracer = tracer
        self._finisher = JobFinisher(
            config, self._op, {vendor.name: client}, results, metrics, tracer
        )
        self._slots = slots
        slots.on_release(self._slot_freed)
        self._queue: list[tuple[float, int, str]] = []  # (not_before, seq, job id)
        self._seq = itertools.count()
        self._held: dict[str, _Held] = {}
        self._by_task: dict[str, str] = {}  # vendor task id -> job id
        self._early: dict[str, tuple[float, TaskStatus]] = {}  # webhooks before the task id
        # Submits in doubt (job id, attempt) -> resolved when their task is seen ending.
        self._unrecorded: dict[tuple[str, int], asyncio.Future[None]] = {}
        # How long after its attempt was recorded such a task may still run: it was created
        # within submit_timeout, and the vendor ends it task_lifetime after its creation.
        self._unrecorded_lifetime = vendor.submit_timeout + vendor.task_lifetime
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump_task: asyncio.Task[None] | None = None
        self._counters = {"retries": 0, "failovers": 0, "completed": 0, "failed": 0}
        self.metrics.vendor_limit.labels(vendor.name).set(vendor.concurrency)
        for kind in ("captured", "released"):  # exported at 0 before the first event
            self.metrics.credits.labels(kind)
        self._publish_gauges()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load this vendor's unfinished jobs from the ledger and start working."""
        if self._pump_task is not None:
            return
        jobs = await self._ledger.jobs_for_vendor(
            self.vendor.name, [JobStatus.QUEUED, JobStatus.PROCESSING]
        )
        in_doubt = await self._ledger.submits_in_doubt(
            self.vendor.name, self._clock.time() - self._unrecorded_lifetime
        )
        for job in in_doubt:
            self._hold_for_unrecorded(job)
        for job in jobs:
            self._take(job)
        self._pump_task = asyncio.create_task(self._pump())
        log.info(
            "started",
            extra={
                "vendor": self.vendor.name,
                "error": f"recovered {len(jobs)} jobs, {len(in_doubt)} submits in doubt",
            },
        )

    async def stop(self) -> None:
        tasks = [t for t in (self._pump_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pump_task = None
        with contextlib.suppress(Exception):
            await self._client.close()

    # --- the port other actors call -----------------------------------------------------

    async def dispatch(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self._take(job)

    async def adopt(self, jobs: Sequence[Job]) -> int:
        return sum(1 for job in jobs if self._take(job))

    async def on_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        now = self._clock.time()
        for event in events:
            job_id = self._by_task.get(event.task_id)
            held = self._held.get(job_id) if job_id else None
            if held is not None and held.waiter is not None and not held.waiter.done():
                if event.status.state.ended:
                    held.waiter.set_result(event.status)
            elif event.status.state.ended:
                self._early[event.task_id] = (now, event.status)
                if job_id is None and event.job_id is not None and event.attempt is not None:
                    unrecorded = self._unrecorded.get((event.job_id, event.attempt))
                    if unrecorded is not None and not unrecorded.done():
                        unrecorded.set_result(None)  # that task ended: its slot is free
        self._forget_old_early_events(now)

    async def cancel_tasks(self, job_ids: Sequence[str]) -> None:
        not_held = []
        for job_id in job_ids:
            held = self._held.get(job_id)
            if held is None:
                not_held.append(job_id)
                continue
            held.cancel_requested = True
            if held.task_id is None:
                self._wakeup.set()  # a queued job: the pump drops it
            else:
                self._spawn(self._finisher.cancel_at_vendor(held.job, held.task_id))
        if not_held:
            # Not followed here (this processor restarted after the ledger ended the job,
            # so it never loaded it): its vendor task may still run, and nobody else would
            # ever cancel it.
            for job in await self._ledger.get_jobs(not_held):
                if (
                    job is not None
                    and job.status in (JobStatus.CANCELED, JobStatus.FAILED)
                    and job.vendor == self.vendor.name
                    and job.vendor_task_id is not None
                ):
                    slot = self._slots.take()
                    self._spawn(self._cancel_unfollowed(job, job.vendor_task_id, slot))

    async def stats(self) -> dict[str, Any]:
        now = self._clock.time()
        return {
            "vendor": self.vendor.name,
            "limit": self.vendor.concurrency,
            "inflight": self._slots.taken,
            "queued": len(self._queue),
            "held": len(self._held),
            "unrecorded": len(self._unrecorded),
            "circuit": self._breaker.state(now).value,
            **self._counters,
        }

    async def collect_metrics(self) -> list[Family]:
        self._publish_gauges()
        return self.metrics.collect()

    # --- the queue ----------------------------------------------------------------------

    def _take(self, job: Job) -> bool:
        """Hold a job the ledger says is ours; False if already held or not ours."""
        if job.id in self._held or job.terminal or job.vendor != self.vendor.name:
            return False
        held = _Held(job, task_id=job.vendor_task_id)
        self._held[job.id] = held
        if job.status is JobStatus.PROCESSING and job.vendor_task_id:
            slot = self._slots.take()  # the vendor is running it: it holds a slot already
            self._by_task[job.vendor_task_id] = job.id
            self._spawn(self._resume(held, slot))
        else:
            self._enqueue(held)
        self._publish_gauges()
        return True

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
        if self._breaker.state(self._clock.time()) is CircuitState.OPEN:
            self._fail_over_queue("circuit open")
        while self._queue:
            if not self._slots.has_room():
                return None  # a slot freed wakes us
            now = self._clock.time()
            not_before, _, job_id = self._queue[0]
            held = self._held.get(job_id)
            if held is None or not held.queued:
                heapq.heappop(self._queue)  # a stale entry
                continue
            if held.cancel_requested or now >= held.job.deadline:
                heapq.heappop(self._queue)
                held.queued = False
                self._spawn(self._drop_queued(held))
                continue
            if not_before > now:
                return not_before - now
            if not self._breaker.allow(now):
                if when_circuit_refuses(self._has_next_vendor(held.job)) is Next.FAIL_OVER:
                    heapq.heappop(self._queue)
                    held.queued = False
                    self._spawn(self._fail_over(held, "circuit open"))
                    continue
                return max(self._breaker.delay_until_allowed(now), 0.05)  # Next.WAIT
            wait = self._bucket.reserve(now)
            heapq.heappop(self._queue)
            held.queued = False
            self._spawn(self._attempt(held, wait, self._slots.take()))
        return None

    def _fail_over_queue(self, reason: str) -> None:
        """Hand every queued job that has a next vendor on to it."""
        staying: list[tuple[float, int, str]] = []
        for entry in self._queue:
            held = self._held.get(entry[2])
            if held is None or not held.queued:
                continue
            if self._has_next_vendor(held.job) and not held.cancel_requested:
                held.queued = False
                self._spawn(self._fail_over(held, reason))
            else:
                staying.append(entry)
        heapq.heapify(staying)
        self._queue = staying

    # --- one attempt --------------------------------------------------------------------

    async def _attempt(self, held: _Held, rate_wait: float, slot: Slot) -> None:
        job = held.job
        marked = False
        try:
            with slot:
                if rate_wait > 0:
                    await self._clock.sleep(rate_wait)
                attempt = job.attempts + 1
                start = await self._op(
                    StartAttempt(job.id, attempt, self.vendor.name, job.route_position)
                )
                job = held.job = start.value
                if job.terminal or job.attempts != attempt or job.status is not JobStatus.QUEUED:
                    return  # canceled, expired or taken over meanwhile
                try:
                    with self._span("vendor.submit", job, attempt=attempt):
                        task_id = await self._client.submit(
                            vendor_model(self.config, job),
                            job.input,
                            job_id=job.id,
                            attempt=attempt,
                            trace_id=job.trace_id,
                            webhook_url=self._webhook_url(job.id, attempt),
                        )
                except VendorError as exc:
                    self._record_vendor_result(exc)
                    if isinstance(exc, VendorTimeout | VendorUnavailable):
                        # In doubt: the vendor may have created the task and lost only
                        # the answer. It counts against the limit until it shows itself.
                        self._hold_for_unrecorded(job)
                    slot.release()
                    await self._after_failure(held, attempt, exc)
                    return
                held.task_id = task_id
                self._by_task[task_id] = job.id
                job = held.job = (await self._op(MarkProcessing(job.id, attempt, task_id))).value
                marked = True
                if job.terminal or held.cancel_requested:
                    await self._finisher.cancel_at_vendor(job, task_id)
                status = await self._traced_wait(held, task_id, attempt)
                slot.release()
                await self._finish(held, attempt, status)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or the ledger gone: the sweeper will recover the job
            log.exception("attempt crashed", extra={"job_id": job.id, "trace_id": job.trace_id})
            if held.task_id is not None and not marked:
                # The task runs with no record of its id: the job will get a new attempt,
                # so nobody else would ever end this one.
                self._spawn(self._cancel_unfollowed(job, held.task_id, self._slots.take()))
        finally:
            self._drop_unless_queued(held)

    async def _resume(self, held: _Held, slot: Slot) -> None:
        """A processing job found at start-up: poll its task, never submit it again."""
        job = held.job
        assert held.task_id is not None
        try:
            with slot:
                status = await self._traced_wait(held, held.task_id, job.attempts)
                slot.release()
                await self._finish(held, job.attempts, status)
        except asyncio.CancelledError:
            raise
        except Exception:  # the sweeper will recover the job
            log.exception("resume crashed", extra={"job_id": job.id, "trace_id": job.trace_id})
        finally:
            self._drop_unless_queued(held)

    async def _traced_wait(self, held: _Held, task_id: str, attempt: int) -> TaskStatus | None:
        with self._span("vendor.wait", held.job, attempt=attempt, task_id=task_id) as span:
            status = await self._wait(held, task_id)
            ended = TaskState.FAILED if status is None else status.state
            span.set_attribute("jobline.outcome", ended.value)
            return status

    async def _wait(self, held: _Held, task_id: str) -> TaskStatus | None:
        """Until the vendor task ends: a webhook, or polling with backoff as the fallback.

        None: no end within ``stuck_after``; the task was canceled (until the vendor
        confirmed) and is given up on."""
        early = self._early.pop(task_id, None)
        if early is not None and not early[1].result_pending:
            return early[1]
        loop = asyncio.get_running_loop()
        held.waiter = loop.create_future()
        step = vendor_model(self.config, held.job)
        give_up_at = self._clock.time() + self.vendor.stuck_after
        interval = self.vendor.poll_interval
        if early is not None:  # it succeeded, but its webhook had no outputs: read them now
            interval = 0.0
        while True:
            try:
                pushed = await asyncio.wait_for(asyncio.shield(held.waiter), timeout=interval)
                if not pushed.result_pending:
                    return pushed
                held.waiter = loop.create_future()  # the outputs are at the vendor: poll
                interval = 0.0
            except TimeoutError:
                pass
            try:
                status = await self._client.status(step, task_id, trace_id=held.job.trace_id)
            except VendorError:  # cannot read it now; stuck_after bounds how long we try
                status = None
            if status is not None and status.state.ended:
                return status
            if self._clock.time() >= give_up_at:
                await self._cancel_until_confirmed(held.job, task_id)
                return None
            interval = min(max(interval * 1.5, self.vendor.poll_interval), MAX_POLL_INTERVAL)

    async def _finish(self, held: _Held, attempt: int, status: TaskStatus | None) -> None:
        """The vendor task ended (None: we gave up on it): complete, retry or fail."""
        job = held.job
        if status is None:
            self._breaker.record_failure(self._clock.time())
            reason = f"no result after {self.vendor.stuck_after:.0f}s"
            await self._after_failure(held, attempt, VendorTimeout(self.vendor.name, reason))
        elif status.state is TaskState.SUCCEEDED:
            self._breaker.record_success(self._clock.time())
            await self._store_and_complete(held, attempt, status)
        elif status.state is TaskState.CANCELED and (held.cancel_requested or job.terminal):
            pass  # canceled by the client: the ledger released the hold already
        elif status.state is TaskState.FAILED and status.permanent:
            await self._fail(job, f"{self.vendor.name}: {status.error or 'failed'}")
        else:  # the vendor ran the task and it failed (or the vendor canceled it)
            self._breaker.record_failure(self._clock.time())
            reason = status.error or f"vendor task {status.state.value}"
            await self._after_failure(held, attempt, VendorTaskFailed(self.vendor.name, reason))

    async def _store_and_complete(self, held: _Held, attempt: int, status: TaskStatus) -> None:
        job = held.job
        if status.output_url is None:
            await self._after_failure(
                held, attempt, VendorTransientError(self.vendor.name, "succeeded without output")
            )
            return
        try:
            outcome = await self._finisher.complete(job, status.output_url, attempt=attempt)
        except VendorTransientError as exc:
            await self._after_failure(held, attempt, exc)
            return
        except VendorPermanentError as exc:
            await self._fail(job, str(exc))
            return
        if outcome.changed:
            self._counters["completed"] += 1

    # --- failure paths ------------------------------------------------------------------

    async def _after_failure(self, held: _Held, attempt: int, exc: BaseException) -> None:
        """Retry here with backoff, fail over, or fail: ``runtime.policies.after_failure``."""
        job = held.job
        now = self._clock.time()
        failure = Failure(
            error_class=classify(exc),
            retry_after=exc.retry_after if isinstance(exc, VendorTransientError) else None,
            vendor_attempts=job.vendor_attempts,
            circuit_open=self._breaker.state(now) is CircuitState.OPEN,
            has_next_vendor=self._has_next_vendor(job),
            now=now,
            deadline=job.deadline,
        )
        decision = after_failure(failure, self._retry, self._rng)
        if decision.next is Next.RETRY:
            assert decision.not_before is not None
            await self._retry_here(held, attempt, decision.not_before, exc)
        elif decision.next is Next.FAIL_OVER:
            await self._fail_over(held, str(exc), attempt)
        elif decision.next is Next.EXPIRE:
            await self._fail(job, f"the deadline comes before the next retry: {exc}", expired=True)
        elif decision.next is Next.ROUTE_SPENT:
            await self._fail(job, f"every vendor of the route failed; last: {exc}")
        else:  # Next.FAIL: permanent for this job
            await self._fail(job, str(exc))

    async def _retry_here(
        self, held: _Held, attempt: int, not_before: float, exc: BaseException
    ) -> None:
        job = held.job
        outcome = await self._op(
            ScheduleRetry(
                job.id, attempt, not_before, str(exc), job.route_position, self.vendor.name
            )
        )
        self._counters["retries"] += 1
        self.metrics.retries.labels(self.vendor.name, type(exc).__name__).inc()
        if outcome.changed:
            self._requeue(held, outcome.value)

    async def _fail_over(self, held: _Held, reason: str, attempt: int | None = None) -> None:
        job = held.job
        route = self.config.models[job.model].route
        position = job.route_position + 1
        target = route[position].vendor
        try:
            outcome = await self._op(
                ScheduleRetry(
                    job.id,
                    job.attempts if attempt is None else attempt,
                    self._clock.time(),
                    f"failover from {self.vendor.name}: {reason}",
                    position,
                    target,
                )
            )
        finally:
            # Not held here any more, whatever the ledger answered: a job the ledger still
            # has queued on this vendor is handed back by the sweeper, and adopted.
            self._drop(job.id)
        if not outcome.changed:
            return
        self._counters["failovers"] += 1
        self.metrics.failovers.labels(self.vendor.name, target).inc()
        log.info(
            "failover",
            extra={"job_id": job.id, "trace_id": job.trace_id, "vendor": target, "error": reason},
        )
        try:
            with self._span("dispatch", job, from_vendor=self.vendor.name, vendor=target):
                await self._router.processor(target).dispatch([outcome.value])
        except Exception:  # the sweeper re-dispatches queued jobs nobody holds
            log.warning("failover dispatch failed", extra={"job_id": job.id, "vendor": target})

    async def _fail(self, job: Job, error: str, *, expired: bool = False) -> None:
        try:
            with self._span("settle", job, outcome="failed", error=error):
                outcome = await self._op(Fail(job.id, error, expired=expired))
        finally:
            self._drop(job.id)  # the sweeper hands back a job the ledger has not ended
        if outcome.changed:
            self._counters["failed"] += 1
            self._finisher.count_terminal(outcome.value)
            self.metrics.dead_letters.labels(job.model).inc()
            self.metrics.credits.labels("released").inc(job.cost)
            log.warning(
                "job failed", extra={"job_id": job.id, "trace_id": job.trace_id, "error": error}
            )

    async def _drop_queued(self, held: _Held) -> None:
        job = held.job
        if not held.cancel_requested and self._clock.time() >= job.deadline:
            await self._fail(job, "deadline passed before a vendor took the job", expired=True)
        self._drop(job.id)

    async def _cancel_unfollowed(self, job: Job, task_id: str, slot: Slot) -> None:
        """Cancel a task no attempt follows (its job was canceled while this processor was
        away, or its id never reached the ledger). The task counts against the vendor's
        limit until the vendor confirms: the caller took a slot for it when it found it."""
        with slot:
            await self._cancel_until_confirmed(job, task_id)

    def _hold_for_unrecorded(self, job: Job) -> None:
        """Hold a slot for the task a submit in doubt may have started (module docstring)."""
        key = (job.id, job.attempts)
        if key in self._unrecorded:
            return
        self._unrecorded[key] = asyncio.get_running_loop().create_future()
        slot = self._slots.take()
        until = job.updated_at + self._unrecorded_lifetime
        self._spawn(self._release_unrecorded(key, until, slot))

    async def _release_unrecorded(self, key: tuple[str, int], until: float, slot: Slot) -> None:
        with slot:
            try:
                with contextlib.suppress(TimeoutError):
                    timeout = max(until - self._clock.time(), 0)
                    await asyncio.wait_for(self._unrecorded[key], timeout)
            finally:
                del self._unrecorded[key]

    async def _cancel_until_confirmed(self, job: Job, task_id: str) -> None:
        """Cancel a task we give up on, retrying until the vendor confirms.

        The caller holds the task's slot meanwhile: a task whose cancel failed still runs
        at the vendor and counts against its limit (I4), so the slot is only given back
        once the vendor said the task is canceled (or had ended), or at the job's
        deadline, but not before the vendor must have ended it itself (``max_task_time``
        from now: an expired job's deadline has passed already).
        """
        interval = self.vendor.poll_interval
        give_up_at = max(job.deadline, self._clock.time() + self.vendor.task_lifetime)
        while not await self._finisher.cancel_at_vendor(job, task_id):
            if self._clock.time() >= give_up_at:
                log.error(
                    "vendor never confirmed the cancel; giving the slot back",
                    extra={"job_id": job.id, "trace_id": job.trace_id, "vendor": self.vendor.name},
                )
                return
            await self._clock.sleep(interval)
            interval = min(interval * 1.5, MAX_POLL_INTERVAL)

    # --- small parts --------------------------------------------------------------------

    async def _op(self, op: LedgerOp) -> Outcome:
        outcome = await self._ops.call(op)
        outcome.unwrap()
        return outcome

    def _span(
        self, name: str, job: Job, **attributes: Any
    ) -> contextlib.AbstractContextManager[Span]:
        fields = {"job_id": job.id, "vendor": self.vendor.name, **attributes}
        return self._tracer.span(name, job.trace_id, **fields)

    def _enqueue(self, held: _Held) -> None:
        held.queued = True
        heapq.heappush(self._queue, (held.job.not_before, next(self._seq), held.job.id))
        self._wakeup.set()

    def _requeue(self, held: _Held, job: Job) -> None:
        held.job = job
        if held.task_id is not None:
            self._by_task.pop(held.task_id, None)
        held.task_id = None
        held.waiter = None
        self._enqueue(held)

    def _drop(self, job_id: str) -> None:
        held = self._held.pop(job_id, None)
        if held is not None and held.task_id is not None:
            self._by_task.pop(held.task_id, None)
        self._publish_gauges()

    def _drop_unless_queued(self, held: _Held) -> None:
        """After an attempt: keep the job only if it went back in the queue (a retry)."""
        if self._held.get(held.job.id) is held and not held.queued:
            self._drop(held.job.id)

    def _slot_freed(self) -> None:
        self._wakeup.set()
        self._publish_gauges()

    def _record_vendor_result(self, exc: VendorError) -> None:
        if isinstance(exc, VendorTransientError | VendorRefused):
            self._breaker.record_failure(self._clock.time())

    def _has_next_vendor(self, job: Job) -> bool:
        return job.route_position + 1 < len(self.config.models[job.model].route)

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
        self.metrics.vendor_inflight.labels(name).set(self._slots.taken)
        self.metrics.queue_depth.labels(name).set(len(self._queue))
        self.metrics.circuit_state.labels(name).set(
            CIRCUIT_GAUGE[self._breaker.state(self._clock.time())]
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
