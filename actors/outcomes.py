"""What happens to a job once its vendor task ended or its attempt failed, for one
vendor's processor: complete it with every output, retry it here, let it wait for the
circuit, fail it over, or fail it (``runtime.policies.after_failure`` decides; this
applies the decision with ledger writes that retry until they land).

Work paid for and thrown away is counted here by reason (``WASTE_REASONS``):
``jobline_vendor_wasted_tasks_total{vendor,reason}``.

Money (``runtime.refunds``): every attempt whose task the vendor ran (seen running,
succeeded or failed: ``TaskWatch.ran``; a task canceled while still queued is not billed)
is recorded as a ``VendorCharge`` at its route
step's ``cost`` (with the Complete when it succeeded; a ``RecordCharge`` otherwise),
whatever then becomes of the job. A job the vendor rejected for its own input (a task
failed ``permanent``, a submit refused with ``VendorInputRejected``) fails keeping the
model's fee (``JoblineConfig.input_rejected_fee``) and counts against its account's
throttle (``[throttle]``); every other failure is refunded in full. A vendor model name
in jobline.toml that cannot exist at the vendor (``VendorModelInvalid``) is a config
error, not the job's input: refunded in full, counted in ``jobline_config_errors_total``.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.finishing import (
    DownloadsExpired,
    JobFinisher,
    OutputRefused,
    OutputTooLarge,
    count_charge,
    vendor_charge,
)
from actors.ledger_writes import LedgerWriter
from actors.waiting import Followed
from runtime.circuit import CircuitBreaker, CircuitState
from runtime.clock import Clock
from runtime.config import JoblineConfig, VendorConfig
from runtime.errors import (
    VendorAuthError,
    VendorBillingError,
    VendorInputRejected,
    VendorModelInvalid,
    VendorPermanentError,
    VendorRefused,
    VendorTaskFailed,
    VendorTimeout,
    VendorTransientError,
)
from runtime.models import CHARGE_OUTCOMES, Fail, Job, RecordCharge, ScheduleRetry
from runtime.policies import Failure, Next, after_failure, classify
from runtime.ports import Router
from runtime.states import JobStatus
from runtime.telemetry import Metrics, get_logger
from runtime.tracing import JobTracer, Span
from runtime.vendors import TaskState, TaskStatus

log = get_logger("processor")

WASTE_REASONS = (
    "timeout",  # given up on past its model's bounds after it started
    "client_canceled",  # the client canceled the job while its task ran
    "job_ended",  # it succeeded after its job had ended (deadline)
    "too_large",  # an output past the model's max_output_bytes
    "untrusted_output",  # an output outside the vendor's output_hosts
    "output_gone",  # the vendor deleted an output before it was stored
    "no_output",  # it succeeded with nothing to store
    "not_stored",  # its outputs could not be read or stored by the job's deadline
    "late_orphan",  # a submit in doubt whose task showed itself after the job moved on
)
CHARGE_PATIENCE = 5.0  # seconds a charge's write is retried before it is logged and left
REFUSAL_REASONS = {VendorAuthError: "auth", VendorBillingError: "billing"}  # else model_gone


@dataclass(slots=True)
class HeldJob:
    """A job a processor is responsible for right now."""

    job: Job
    task_id: str | None = None
    cancel_requested: bool = False
    queued: bool = False  # waiting in the queue (not in an attempt)
    followed: Followed | None = None  # the vendor task being waited on
    webhook_ids: set[str] = field(default_factory=set)  # taken here (take_webhooks)
    ran_when_canceled: bool = False  # its task had started when the client canceled


class Outcomes:
    """The end of one attempt, applied (see the module docstring)."""

    def __init__(
        self,
        vendor: VendorConfig,
        config: JoblineConfig,
        *,
        writer: LedgerWriter,
        finisher: JobFinisher,
        router: Router,
        breaker: CircuitBreaker,
        rng: random.Random,
        clock: Clock,
        metrics: Metrics,
        tracer: JobTracer,
        requeue: Callable[[HeldJob, Job], None],
        drop: Callable[[str], None],
        on_circuit_change: Callable[[], None],
    ) -> None:
        self.vendor = vendor
        self.config = config
        self._writer = writer
        self._finisher = finisher
        self._router = router
        self._breaker = breaker
        self._rng = rng
        self._retry = config.retry.policy()
        self._clock = clock
        self.metrics = metrics
        self._tracer = tracer
        self._requeue = requeue
        self._drop = drop
        self._on_circuit_change = on_circuit_change
        self.counters = {"retries": 0, "failovers": 0, "waits": 0, "completed": 0, "failed": 0}
        self.wasted: Counter[str] = Counter()
        for reason in WASTE_REASONS:  # exported at 0 from the start
            metrics.vendor_wasted_tasks.labels(vendor.name, reason)
        for refusal in (*REFUSAL_REASONS.values(), "model_gone"):
            metrics.vendor_refusals.labels(vendor.name, refusal)
        for name, model in config.models.items():  # money, exported at 0 from the start
            if any(step.vendor == vendor.name for step in model.route):
                metrics.input_rejections.labels(name)
                metrics.config_errors.labels(vendor.name, name)
                for ended in CHARGE_OUTCOMES:
                    metrics.vendor_cost.labels(vendor.name, name, ended)
        for ended in CHARGE_OUTCOMES:
            metrics.vendor_billed_tasks.labels(vendor.name, ended)
        metrics.credits.labels("fee")

    async def finish(self, held: HeldJob, attempt: int, status: TaskStatus | None) -> None:
        """The vendor task ended (None: we gave up on it): complete, retry or fail."""
        job = held.job
        followed = held.followed
        ran = followed is not None and followed.watch.ran  # billed by the vendor
        if status is None:
            self._breaker.record_failure(self._clock.time())
            if ran:
                self.waste("timeout")
                await self.record_charge(held, attempt, "timed_out")
            reason = followed.gave_up if followed is not None else None
            await self.after_failure(
                held, attempt, VendorTimeout(self.vendor.name, reason or "given up")
            )
        elif status.state is TaskState.SUCCEEDED:
            self._breaker.record_success(self._clock.time())
            await self.store_and_complete(held, attempt, status)
        elif status.state is TaskState.CANCELED and (held.cancel_requested or job.terminal):
            if ran or held.ran_when_canceled:  # the client's cancel: released already
                await self.record_charge(held, attempt, "canceled")
        elif status.state is TaskState.FAILED and status.permanent:
            await self.record_charge(held, attempt, "rejected")
            error = f"{self.vendor.name}: {status.error or 'failed'}"
            await self.fail(job, error, input_rejected=True)
        else:  # the vendor ran the task and it failed (or the vendor canceled it)
            self._breaker.record_failure(self._clock.time())
            if ran:
                await self.record_charge(held, attempt, "failed")
            reason = status.error or f"vendor task {status.state.value}"
            await self.after_failure(held, attempt, VendorTaskFailed(self.vendor.name, reason))

    async def store_and_complete(self, held: HeldJob, attempt: int, status: TaskStatus) -> None:
        """Every output stored, then Complete (with the attempt's charge); an output
        problem never re-runs the task unless the vendor no longer has the output."""
        job = held.job
        charge = vendor_charge(self.config, job, attempt, "succeeded")
        try:
            outcome = await self._finisher.complete(
                job, status.outputs, attempt=attempt, charge=charge
            )
        except OutputRefused as exc:
            await self.waste_billed(held, attempt, "untrusted_output")
            log.error("output refused", extra={"job_id": job.id, "error": str(exc)})
            if self.has_next_vendor(job):
                await self.fail_over(held, str(exc), attempt)
            else:
                await self.fail(job, str(exc))
            return
        except OutputTooLarge as exc:
            await self.waste_billed(held, attempt, "too_large")
            await self.fail(job, str(exc))
            return
        except DownloadsExpired as exc:
            await self.waste_billed(held, attempt, "not_stored")
            await self.fail(job, str(exc), expired=True)
            return
        except VendorTaskFailed as exc:  # an output is gone, or there was none
            await self.waste_billed(
                held, attempt, "no_output" if not status.outputs else "output_gone"
            )
            await self.after_failure(held, attempt, exc)
            return
        except VendorPermanentError as exc:  # an output that cannot be read (a bad data URI)
            await self.waste_billed(held, attempt, "not_stored")
            await self.fail(job, str(exc))
            return
        if outcome.changed:
            self.counters["completed"] += 1
        elif outcome.value.status is not JobStatus.COMPLETED:
            self.waste("job_ended")  # its charge was recorded with the Complete, as wasted

    # --- failure paths ------------------------------------------------------------------

    async def after_failure(self, held: HeldJob, attempt: int, exc: BaseException) -> None:
        """Retry here with backoff, fail over, wait, or fail: ``runtime.policies.after_failure``."""
        job = held.job
        now = self._clock.time()
        if isinstance(exc, VendorRefused):
            self.refused(exc, now)
        failure = Failure(
            error_class=classify(exc),
            retry_after=exc.retry_after if isinstance(exc, VendorTransientError) else None,
            vendor_attempts=job.vendor_attempts,
            circuit_open=self._breaker.state(now) is CircuitState.OPEN,
            has_next_vendor=self.has_next_vendor(job),
            now=now,
            deadline=job.deadline,
            probe_at=self._breaker.probe_at(now),
        )
        decision = after_failure(failure, self._retry, self._rng)
        if decision.next in (Next.RETRY, Next.WAIT):
            assert decision.not_before is not None
            await self.retry_here(held, attempt, decision.not_before, exc, decision.next)
        elif decision.next is Next.FAIL_OVER:
            await self.fail_over(held, str(exc), attempt)
        elif decision.next is Next.EXPIRE:
            await self.fail(job, f"the deadline comes before the next try: {exc}", expired=True)
        elif decision.next is Next.ROUTE_SPENT:
            await self.fail(job, f"every vendor of the route failed; last: {exc}")
        elif isinstance(exc, VendorModelInvalid):  # jobline.toml's, not the job's input
            self.metrics.config_errors.labels(self.vendor.name, job.model).inc()
            log.error(
                "config error: fix models.%s.route", job.model,
                extra={"job_id": job.id, "vendor": self.vendor.name, "error": str(exc)},
            )  # fmt: skip
            await self.fail(job, f"config error: {exc}")
        else:  # Next.FAIL: permanent for this job
            await self.fail(job, str(exc), input_rejected=isinstance(exc, VendorInputRejected))

    def refused(self, exc: VendorRefused, now: float) -> None:
        """The vendor refuses the account or the model: its circuit opens, for longer."""
        self._breaker.trip(now, self.config.circuit.refused_cooldown)
        reason = next((r for k, r in REFUSAL_REASONS.items() if isinstance(exc, k)), "model_gone")
        self.metrics.vendor_refusals.labels(self.vendor.name, reason).inc()
        self._on_circuit_change()
        log.error(
            "vendor refused: circuit open",
            extra={"vendor": self.vendor.name, "error": f"{exc} (for "
                   f"{self.config.circuit.refused_cooldown:g}s)"},
        )  # fmt: skip

    async def retry_here(
        self, held: HeldJob, attempt: int, not_before: float, exc: BaseException, why: Next
    ) -> None:
        job = held.job
        note = str(exc) if why is Next.RETRY else f"waiting for the circuit: {exc}"
        op = ScheduleRetry(job.id, attempt, not_before, note, job.route_position, self.vendor.name)
        outcome = await self._writer.settle(op, job.deadline)
        if why is Next.RETRY:
            self.counters["retries"] += 1
            self.metrics.retries.labels(self.vendor.name, type(exc).__name__).inc()
        else:
            self.counters["waits"] += 1
        if outcome.changed:
            self._requeue(held, outcome.value)

    async def fail_over(self, held: HeldJob, reason: str, attempt: int | None = None) -> None:
        job = held.job
        route = self.config.models[job.model].route
        position = job.route_position + 1
        target = route[position].vendor
        op = ScheduleRetry(
            job.id,
            job.attempts if attempt is None else attempt,
            self._clock.time(),
            f"failover from {self.vendor.name}: {reason}",
            position,
            target,
        )
        outcome = await self._writer.settle(op, job.deadline)
        self._drop(job.id)
        if not outcome.changed:
            return
        self.counters["failovers"] += 1
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

    async def fail(
        self, job: Job, error: str, *, expired: bool = False, input_rejected: bool = False
    ) -> None:
        """Fail the job (dead letter): refunded in full, or, when the vendor rejected its
        own input, less the model's fee, counted against its account's throttle."""
        fee = self.config.input_rejected_fee(job.model, job.cost) if input_rejected else 0
        op = Fail(
            job.id,
            error,
            expired=expired,
            input_rejected=input_rejected,
            fee=fee,
            throttle=self.config.throttle.policy() if input_rejected else None,
        )
        with self._span("settle", job, outcome="failed", error=error):
            outcome = await self._writer.settle(op, job.deadline)
        self._drop(job.id)
        if outcome.changed:
            self.counters["failed"] += 1
            self._finisher.count_terminal(outcome.value)
            self.metrics.dead_letters.labels(job.model).inc()
            kept = 0 if expired else min(fee, job.cost)
            self.metrics.credits.labels("released").inc(job.cost - kept)
            if input_rejected:
                self.metrics.input_rejections.labels(job.model).inc()
            if kept:
                self.metrics.credits.labels("captured").inc(kept)
                self.metrics.credits.labels("fee").inc(kept)
            log.warning(
                "job failed", extra={"job_id": job.id, "trace_id": job.trace_id, "error": error}
            )

    async def waste_billed(self, held: HeldJob, attempt: int, reason: str) -> None:
        """A task that succeeded at the vendor whose output will not be the job's result:
        counted (``waste``) and its charge recorded as ``wasted``."""
        self.waste(reason)
        await self.record_charge(held, attempt, "wasted")

    async def record_charge(self, held: HeldJob, attempt: int, outcome: str) -> None:
        """A billed attempt that did not complete its job (``RecordCharge``, once per job
        and attempt). A charge the ledger could not take in ``CHARGE_PATIENCE`` seconds is
        logged and left: the job's own settlement must not wait for it."""
        charge = vendor_charge(self.config, held.job, attempt, outcome)
        deadline = self._clock.time() + CHARGE_PATIENCE
        try:
            recorded = await self._writer.settle(RecordCharge(charge), deadline)
        except Exception as exc:
            log.warning(
                "vendor charge not recorded", extra={"job_id": charge.job_id, "error": str(exc)}
            )
            return
        if recorded.changed:
            count_charge(self.metrics, charge)

    def waste(self, reason: str) -> None:
        """A billable vendor task whose output will not be a completed job's result."""
        self.wasted[reason] += 1
        self.metrics.vendor_wasted_tasks.labels(self.vendor.name, reason).inc()

    def has_next_vendor(self, job: Job) -> bool:
        return job.route_position + 1 < len(self.config.models[job.model].route)

    def _span(
        self, name: str, job: Job, **attributes: Any
    ) -> contextlib.AbstractContextManager[Span]:
        fields = {"job_id": job.id, "vendor": self.vendor.name, **attributes}
        return self._tracer.span(name, job.trace_id, **fields)
