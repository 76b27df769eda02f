"""Submits in doubt and their orphans, for one vendor's processor.

Theory of operation
-------------------
A submit is *in doubt* when the vendor may have created the task but its answer never
told us the id: the answer timed out, came back 5xx or cut off
(``VendorSubmitInDoubt``), or the processor stopped between the submit and recording
the id (the ledger's ``submit_in_doubt`` flag, found on start). Such a task runs, billed,
against the vendor's limit, with nobody following it. So:

1. Its slot stays held (I4): the attempt keeps its slot while the doubt is resolved.
2. The attempt waits for the task to show itself (``resolve``), for as long as its
   vendor's ``orphan_wait`` (``VendorConfig.orphan_wait_for``):

   * replicate-shaped: the vendor lists its predictions, each with the webhook URL it
     was created with, which names the job and attempt: one list read usually answers
     (found, or none created since the submit); it is read again with backoff while it
     cannot be (default: up to 60 s);
   * fal-shaped: fal lists nothing, but the webhook URL names the job and attempt, and
     fal posts it when the task ends (with retries for hours). The job waits for it; by
     default for the model's whole bound, so a job whose task exists loses no time, and
     one whose submit created nothing waits that long, paying nothing.

   A task found is *adopted*: the attempt records its id and follows it like any other;
   its output is used, it is never run again, and no new attempt starts for that
   attempt number (the ledger's ``StartAttempt`` is a compare-and-set on it). A list that
   shows no such task frees the slot: the job is retried as after any transient error.
3. A task that did not show itself in time is an *orphan*: the job goes on with a new
   attempt, and the orphan keeps a slot of its own (``RecordOrphan`` in the ledger, so a
   restarted processor keeps holding it) until it shows itself ended, or is found and
   canceled (replicate: the hold keeps looking it up), or until the vendor must have
   ended it (``VendorConfig.task_lifetime_for``: replicate ends it by ``Cancel-After``, a
   fal app by its request timeout). An orphan that shows itself succeeded or running is
   work paid for and thrown away: ``jobline_vendor_wasted_tasks_total{reason="late_orphan"}``,
   reported apart from the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Coroutine
from typing import Any

from actors.ledger_writes import LedgerWriter
from actors.slots import Slot
from actors.waiting import TaskWaiter
from runtime.clock import Clock
from runtime.config import JoblineConfig, VendorConfig
from runtime.errors import VendorError
from runtime.models import EndOrphan, Job, RecordOrphan
from runtime.telemetry import Metrics, get_logger
from runtime.vendors import FoundTask, TaskState, VendorClient, WebhookEvent

log = get_logger("processor")

SEEN_TTL = 600.0  # seconds an event naming a job and attempt nobody waits for is kept
LOOKUP_BACKOFF = 0.5  # seconds before reading the task list again; doubles up to the cap
LOOKUP_BACKOFF_CAP = 8.0
ORPHAN_LOOKUP_CAP = 60.0  # an orphan on a listing vendor is looked up at least this often

Key = tuple[str, int]  # (job id, attempt)


class Doubt(enum.Enum):
    """How a submit in doubt was resolved when no task was found."""

    NOT_CREATED = "not_created"  # the vendor's list shows none: nothing runs
    UNKNOWN = "unknown"  # nothing showed itself in time: an orphan may run


class SubmitsInDoubt:
    def __init__(
        self,
        vendor: VendorConfig,
        config: JoblineConfig,
        client: VendorClient,
        writer: LedgerWriter,
        waiter: TaskWaiter,
        clock: Clock,
        metrics: Metrics,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._vendor = vendor
        self._config = config
        self._client = client
        self._writer = writer
        self._waiter = waiter
        self._clock = clock
        self._metrics = metrics
        self._spawn = spawn
        self._waiting: dict[Key, asyncio.Future[FoundTask | Doubt]] = {}
        self._orphans: dict[Key, asyncio.Future[FoundTask]] = {}
        self._seen: dict[Key, tuple[float, FoundTask]] = {}
        self._canceled: set[str] = set()  # jobs canceled while a submit of theirs is in doubt
        self.counts = {"adopted": 0, "not_created": 0, "orphaned": 0, "late_orphans": 0}
        for outcome in ("adopted", "not_created", "orphaned"):  # exported at 0 from the start
            metrics.submits_in_doubt.labels(vendor.name, outcome)

    @property
    def held(self) -> int:
        """Orphans holding a slot now."""
        return len(self._orphans)

    def lifetime(self, job: Job) -> float:
        """Seconds after a submit by which the vendor has ended the task it may have made."""
        model = self._config.models[job.model]
        return self._vendor.submit_timeout + self._vendor.task_lifetime_for(model)

    # --- an attempt whose submit is in doubt --------------------------------------------

    async def resolve(self, job: Job, attempt: int, model: str, since: float) -> FoundTask | Doubt:
        """The task of ``(job, attempt)`` submitted at ``since``: found, not created, or
        unknown once the vendor's ``orphan_wait`` passed (see the module docstring)."""
        key = (job.id, attempt)
        wait = self._vendor.orphan_wait_for(self._config.models[job.model])
        give_up_at = min(self._clock.time() + wait, job.deadline)
        try:
            if self._client.can_find_tasks:
                found = await self._look_up(job, attempt, model, since, give_up_at)
            else:
                found = await self._wait_for_webhook(key, give_up_at)
        finally:
            self._canceled.discard(job.id)
        outcome = "adopted" if isinstance(found, FoundTask) else found.value
        if found is Doubt.UNKNOWN:
            outcome = "orphaned"
        self.counts[outcome] += 1
        self._metrics.submits_in_doubt.labels(self._vendor.name, outcome).inc()
        log.info(
            "submit in doubt resolved",
            extra={"job_id": job.id, "trace_id": job.trace_id, "attempt": attempt,
                   "error": outcome},
        )  # fmt: skip
        return found

    async def _look_up(
        self, job: Job, attempt: int, model: str, since: float, give_up_at: float
    ) -> FoundTask | Doubt:
        delay = LOOKUP_BACKOFF
        while True:
            seen = self._seen.pop((job.id, attempt), None)
            if seen is not None:
                return seen[1]
            try:
                found = await self._client.find_task(
                    model, job_id=job.id, attempt=attempt, created_after=since,
                    trace_id=job.trace_id,
                )  # fmt: skip
            except VendorError as exc:
                log.warning("task list unreadable", extra={"job_id": job.id, "error": str(exc)})
            else:
                return Doubt.NOT_CREATED if found is None else found
            if self._clock.time() + delay >= give_up_at or job.id in self._canceled:
                return Doubt.UNKNOWN
            await self._clock.sleep(delay)
            delay = min(delay * 2, LOOKUP_BACKOFF_CAP)

    async def _wait_for_webhook(self, key: Key, give_up_at: float) -> FoundTask | Doubt:
        seen = self._seen.pop(key, None)
        if seen is not None:
            return seen[1]
        future: asyncio.Future[FoundTask | Doubt] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        try:
            timeout = max(give_up_at - self._clock.time(), 0.0)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return Doubt.UNKNOWN
        finally:
            self._waiting.pop(key, None)

    def stop_waiting(self, job_id: str) -> None:
        """The job was canceled: its submits in doubt stop waiting (their tasks, if any,
        become orphans, which keep their slots)."""
        self._canceled.add(job_id)
        for key, future in list(self._waiting.items()):
            if key[0] == job_id and not future.done():
                future.set_result(Doubt.UNKNOWN)

    # --- orphans --------------------------------------------------------------------------

    async def record(self, job: Job, attempt: int, model: str, since: float) -> float:
        """Record the orphan of ``(job, attempt)`` in the ledger; returns its ``until``."""
        until = since + self.lifetime(job)
        op = RecordOrphan(job.id, attempt, job.vendor, model, since, until)
        try:
            await self._writer.settle(op, until)
        except Exception as exc:  # the hold below still keeps its slot while we run
            log.warning("orphan not recorded", extra={"job_id": job.id, "error": str(exc)})
        return until

    def hold(
        self, job_id: str, attempt: int, model: str, since: float, until: float, slot: Slot
    ) -> None:
        """Keep ``slot`` for the orphan of ``(job_id, attempt)`` until it shows itself
        ended, is found and canceled, or ``until``."""
        key = (job_id, attempt)
        if key in self._orphans:
            slot.release()  # held already (found on start twice)
            return
        self._orphans[key] = asyncio.get_running_loop().create_future()
        self._spawn(self._hold(key, model, since, until, slot))

    async def _hold(self, key: Key, model: str, since: float, until: float, slot: Slot) -> None:
        ended = self._orphans[key]
        task_id: str | None = None
        with slot:
            try:
                task_id = await self._until_gone(key, model, since, until, ended)
            finally:
                del self._orphans[key]
        with contextlib.suppress(Exception):
            await self._writer.op(EndOrphan(key[0], key[1], task_id))

    async def _until_gone(
        self, key: Key, model: str, since: float, until: float, ended: asyncio.Future[FoundTask]
    ) -> str | None:
        interval = self._vendor.poll_interval
        while self._clock.time() < until:
            if self._client.can_find_tasks:
                found = await self._find_orphan(key, model, since)
                if found is Doubt.NOT_CREATED:
                    return None
                if isinstance(found, FoundTask):
                    await self._end_found(found, model, until)
                    return found.task_id
            timeout = max(until - self._clock.time(), 0.0)
            if self._client.can_find_tasks:
                timeout = min(timeout, interval)
            with contextlib.suppress(TimeoutError):
                found_by_webhook = await asyncio.wait_for(asyncio.shield(ended), timeout)
                self._count_late(found_by_webhook)
                return found_by_webhook.task_id
            interval = min(interval * 2, ORPHAN_LOOKUP_CAP)
        return None

    async def _find_orphan(self, key: Key, model: str, since: float) -> FoundTask | Doubt:
        try:
            found = await self._client.find_task(
                model, job_id=key[0], attempt=key[1], created_after=since, trace_id=""
            )
        except VendorError:
            return Doubt.UNKNOWN
        return Doubt.NOT_CREATED if found is None else found

    async def _end_found(self, found: FoundTask, model: str, until: float) -> None:
        """An orphan found in the vendor's list: cancel it unless it ended (no longer needed)."""
        if not found.status.state.ended:
            await self._waiter.cancel_until_confirmed(model, found.task_id, until)
        self._count_late(found)

    def _count_late(self, found: FoundTask) -> None:
        state = found.status.state
        if state in (TaskState.SUCCEEDED, TaskState.RUNNING):  # billed, thrown away
            self.counts["late_orphans"] += 1
            self._metrics.vendor_wasted_tasks.labels(self._vendor.name, "late_orphan").inc()

    # --- events ---------------------------------------------------------------------------

    def on_event(self, event: WebhookEvent, now: float) -> bool:
        """A verified webhook naming a job and attempt whose task id nobody recorded: it
        resolves a submit in doubt, or ends an orphan. False if nobody waits for it (it is
        kept a while for a resolve that starts later)."""
        if event.job_id is None or event.attempt is None:
            return False
        key = (event.job_id, event.attempt)
        found = FoundTask(event.task_id, event.status)
        waiting = self._waiting.get(key)
        if waiting is not None and not waiting.done():
            waiting.set_result(found)
            return True
        orphan = self._orphans.get(key)
        if orphan is not None:
            if event.status.state.ended and not orphan.done():
                orphan.set_result(found)
            return True
        self._seen[key] = (now, found)
        self._forget_old(now)
        return False

    def _forget_old(self, now: float) -> None:
        if len(self._seen) > 1000:
            for key, (at, _) in list(self._seen.items()):
                if now - at > SEEN_TTL:
                    del self._seen[key]
