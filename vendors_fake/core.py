"""A fake vendor's behaviour, whatever hosts it: HTTP (``vendors_fake.server``) or a
simulation on virtual time.

Theory of operation
-------------------
:class:`VendorCore` owns the vendor's state: its tasks, their queue, the concurrency
limit it enforces, what it counts, and its webhooks. It reads no clock of its own: it is
given a *scheduler* (``time()`` and ``call_later()``: an asyncio event loop is one, and
a virtual-time loop is another), a *wall clock* for the timestamps it writes into JSON
and signatures, and seeded random streams (the task stream and the request stream,
seeded from ``(name, seed)``).

A host asks it, per request: :meth:`admit` (outage window, drawn request fault, the key,
an account refused outright) and then the operation: :meth:`create_task` (an account or
model refusal, the concurrency limit, then the task's whole fate drawn at once),
:meth:`task`, :meth:`cancel`, :meth:`file`. What cannot be answered is raised as
:class:`Refused` (status, message, ``Retry-After``), which the host renders with the
shape's error body. A drawn hang or reset, and a submit whose answer is lost after the
task was created (``task.fate.lost_answer``), are the host's to act out: only it has a
connection to drop.

A task's phases change on scheduler timers: queued -> running (it is now *billable*)
-> succeeded, failed, or canceled / aborted at its deadline (replicate's
``Cancel-After``: ``canceled`` once it ran, ``aborted`` before) or by a cancel. At each
change the task's status JSON is due again (rendered by the shape when first read, then
kept: a status read returns stored bytes) and the core sends the webhooks due, with their
drawn faults: a task's webhooks leave in the order of its events (a delayed one holds back
those after it), except the out-of-order fault, which withholds the progress event until
after the final one. A
final event that is not delivered is retried with backoff; every attempt is signed
afresh. The host gives the core the coroutine that posts a webhook.

*Delivered* work is counted from what reached the client: every file of a succeeded
task downloaded in full, or, for a task without files, its finished result read (a
status or result read, or a webhook that carried it).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from vendors_fake.delivery import PostWebhook, WebhookSender
from vendors_fake.fal_shape import FalShape
from vendors_fake.outputs import DataUris, OutputFile, make_files
from vendors_fake.profile import FaultProfile, RouteFaults, merge_profile
from vendors_fake.replicate_shape import ReplicateShape
from vendors_fake.signing import DEV_WEBHOOK_SECRET
from vendors_fake.stats import FakeStats
from vendors_fake.tasks import (
    Outcome,
    Phase,
    RequestFault,
    Task,
    draw_fate,
    draw_request_fault,
)

Shape = Literal["replicate", "fal"]
RouteGroup = Literal["submit", "status", "cancel", "download", "jwks"]

ENDED_BODIES_KEPT = 256  # ended tasks whose status JSON stays rendered (the newest ones)
TRANSIENT_ERROR = "Prediction interrupted; please retry (code: PA)"
REJECTED_ERROR = (
    "Content rejected: the input or output was flagged as sensitive. "
    "Please try again with different inputs. (E005)"
)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What the core needs of an event loop (``asyncio.AbstractEventLoop`` has both)."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any: ...


class RunningLoop:
    """A scheduler: the asyncio event loop running at the time of the call (the wall's
    time under a plain loop, virtual time under a virtual-time loop)."""

    def time(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # not started yet; asyncio's loop.time() is this clock too
            return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any:
        return asyncio.get_running_loop().call_later(delay, callback, *args)


class Refused(Exception):
    """The vendor answers ``status`` (with ``message`` and maybe ``Retry-After``)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, message, retry_after)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class VendorCore:
    """One fake vendor's behaviour (see the module docstring)."""

    def __init__(
        self,
        shape: Shape,
        profile: FaultProfile | None = None,
        *,
        name: str | None = None,
        seed: int = 0,
        api_key: str,
        webhook_secret: str = DEV_WEBHOOK_SECRET,
        scheduler: Scheduler,
        wall_clock: Callable[[], float],
        post_webhook: PostWebhook | None = None,
    ) -> None:
        if shape not in ("replicate", "fal"):
            raise ValueError(f"unknown API shape {shape!r}: expected 'replicate' or 'fal'")
        self.shape_name: Shape = shape
        self.name = name or shape
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.scheduler = scheduler
        self.wall_clock = wall_clock
        self.post_webhook = post_webhook
        self.base_url = ""  # the host sets where it serves the vendor (file URLs use it)
        self.shape: ReplicateShape | FalShape = (
            ReplicateShape(self) if shape == "replicate" else FalShape(self)
        )
        self.webhooks = WebhookSender(self, webhook_secret)
        self.fal_signer = self.webhooks.fal_signer
        self.stats = FakeStats()
        self.tasks: dict[str, Task] = {}
        self.data_uris = DataUris()  # the files of tasks answered with data URIs
        self._profile = profile or FaultProfile()
        self._seed = seed
        self._task_rng = random.Random()
        self._request_rng = random.Random()
        self._queue: list[int] = []  # queue_seq of queued tasks, ascending
        self._ended_bodies: deque[Task] = deque()  # ended tasks holding their status JSON
        self._next_seq = 0
        self._epoch = scheduler.time()  # periodic outages count from it
        self._manual_outage_until = 0.0
        self._reseed(seed)

    # --- control -------------------------------------------------------------------------

    @property
    def profile(self) -> FaultProfile:
        return self._profile

    @property
    def seed(self) -> int:
        return self._seed

    def set_profile(self, profile: FaultProfile) -> None:
        self._profile = profile

    def update_profile(self, patch: Mapping[str, Any]) -> FaultProfile:
        self._profile = merge_profile(self._profile, patch)
        return self._profile

    def reset(self, seed: int | None = None) -> None:
        """Forget every task and count, and restart both random streams. Every timer of
        the old tasks is stopped, so none of them ends later and upsets the counts."""
        self.stop_pending()
        self.tasks.clear()
        self.data_uris.clear()
        self.stats.clear()
        self._queue.clear()
        self._ended_bodies.clear()
        self._next_seq = 0
        self._manual_outage_until = 0.0
        self._epoch = self.scheduler.time()
        self._reseed(self._seed if seed is None else seed)

    def start_outage(self, duration: float) -> None:
        """Answer every vendor request with 503 for ``duration`` seconds from now."""
        self._manual_outage_until = self.scheduler.time() + duration

    def outage_remaining(self) -> float:
        now = self.scheduler.time()
        if now < self._manual_outage_until:
            return self._manual_outage_until - now
        elapsed = now - self._epoch
        end = self._profile.outage.active_until(elapsed)
        return 0.0 if end is None else end - elapsed

    @property
    def pending_webhooks(self) -> int:
        """Webhook deliveries not finished yet (waiting, delayed, or in the air)."""
        return self.webhooks.pending

    def stop_pending(self) -> list[asyncio.Task[None]]:
        """Stop every timer and webhook delivery; answer every waiting create."""
        for task in self.tasks.values():
            for handle in (task.timer, task.deadline_timer):
                if handle is not None:
                    handle.cancel()
            task.timer = task.deadline_timer = None
            for waiter in task.waiters or ():
                if not waiter.done():
                    waiter.set_result(None)
        return self.webhooks.stop()

    def snapshot(self) -> dict[str, Any]:
        stats = self.stats.snapshot(self.tasks)
        stats["webhooks"]["pending"] = self.pending_webhooks
        remaining = self.outage_remaining()
        stats["outage"] = {"active": remaining > 0, "remaining": round(remaining, 3)}
        stats["concurrency_limit"] = self._profile.concurrency_limit
        stats["seed"] = self._seed
        stats["shape"] = self.shape_name
        stats["uptime"] = round(self.scheduler.time() - self._epoch, 3)
        return stats

    def _reseed(self, seed: int) -> None:
        self._seed = seed
        self._task_rng.seed(f"{self.name}:{seed}:tasks")
        self._request_rng.seed(f"{self.name}:{seed}:requests")

    # --- the gate ----------------------------------------------------------------------------

    def admit(self, group: RouteGroup, authorized: bool) -> RequestFault | None:
        """Let a request through (None), tell the host to hang or reset it, or raise.

        In order: an outage window (503), one draw from the request stream for the route
        group's faults (a hang or reset is returned at once), the key (401; also while the
        profile's refusal is a 401: a revoked key), then a drawn 429 or 5xx.
        """
        if self._manual_outage_until or self._profile.outage.every:
            remaining = self.outage_remaining()
            if remaining > 0:
                self.stats.faults["outage"] += 1
                retry_after = self._profile.outage.retry_after
                raise Refused(
                    503,
                    "Service unavailable: outage in progress",
                    remaining if retry_after is None else retry_after,
                )
        faults: RouteFaults = getattr(self._profile, group)
        drawn = draw_request_fault(faults, self._request_rng) if faults.any else None
        if drawn is not None and drawn[0] in (RequestFault.HANG, RequestFault.RESET):
            self.stats.faults[drawn[0].value] += 1
            return drawn[0]
        refusal = self._profile.refusal
        if not authorized or (refusal is not None and refusal.status == 401):
            if authorized:
                self.stats.faults["refused_401"] += 1
            raise Refused(401, self.shape.refusal_message(401, ""))
        if drawn is not None:
            fault, status = drawn
            self.stats.faults[fault.value] += 1
            if fault is RequestFault.RATE_LIMITED:
                raise Refused(429, "Request was throttled", faults.retry_after)
            raise Refused(status, "Internal server error (injected)")
        return None

    # --- tasks ---------------------------------------------------------------------------------

    def create_task(
        self,
        model: str,
        version: str,
        input: dict[str, Any],
        *,
        webhook_url: str | None = None,
        webhook_events: frozenset[str] = frozenset(),
        cancel_after: float | None = None,
        origin: tuple[str | None, str | None, str | None] = (None, None, None),
        data_uri: bool = False,
    ) -> Task:
        """Create and schedule a task, or raise :class:`Refused`: the account or model is
        refused (the profile's ``refusal``), or the concurrency limit is reached (429).

        A task ends at its deadline if it has not ended before: canceled ``cancel_after``
        seconds after creation (replicate's ``Cancel-After``; ``aborted`` if it had not
        started), or failed once it is older than the profile's ``max_task_time``,
        whichever comes first. ``data_uri``: answer its files as data URIs (fal's
        ``sync_mode``); the profile's ``data_uri`` rate does the same for any task.
        ``origin``: the trace id, job id and attempt the request named, for the stats.
        """
        profile = self._profile
        refusal = profile.refuses(model)
        if refusal is not None:
            self.stats.faults[f"refused_{refusal.status}"] += 1
            raise Refused(refusal.status, self.shape.refusal_message(refusal.status, model))
        limit = profile.concurrency_limit
        if limit is not None and self.stats.in_flight >= limit:
            self.stats.faults["concurrency_limited"] += 1
            raise Refused(
                429, f"Too many tasks in flight (limit {limit})", profile.concurrency_retry_after
            )
        shape = self.shape
        events = webhook_events & shape.emitted_events if webhook_url else frozenset()
        spec = profile.output_spec(model)
        fate = draw_fate(
            profile,
            spec,
            self._task_rng,
            webhook_events=events,
            has_progress_event=shape.progress_event is not None,
            force_data_uri=data_uri,
        )
        task = Task(
            id=shape.new_id(fate.id_bits),
            index=self.stats.tasks["created"],
            model=model,
            version=version,
            input=input,
            fate=fate,
            spec=spec,
            created_at=self.wall_clock(),
            webhook_url=webhook_url or None,
            webhook_events=webhook_events if webhook_url else frozenset(),
            trace_id=origin[0],
            job_id=origin[1],
            attempt=origin[2],
        )
        self.tasks[task.id] = task
        self.stats.task_created(task)
        if fate.outcome is Outcome.NEVER_FINISH:
            self.stats.tasks["never_finish"] += 1
        if fate.cold_start:
            self.stats.tasks["cold_starts"] += 1
        if fate.lost_answer is not None:
            self.stats.faults[f"lost_answer_{fate.lost_answer[0].value}"] += 1
        task.queue_seq = self._next_seq
        self._next_seq += 1
        self._queue.append(task.queue_seq)
        task.renderer = self._render
        task.timer = self.scheduler.call_later(fate.queue_delay, self._start_running, task)
        deadlines = [(cancel_after, Phase.CANCELED), (profile.max_task_time, Phase.FAILED)]
        set_deadlines = [(after, phase) for after, phase in deadlines if after is not None]
        if set_deadlines:
            after, phase = min(set_deadlines, key=lambda deadline: deadline[0])
            task.deadline_timer = self.scheduler.call_later(after, self._expire, task, phase)
        return task

    def task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise Refused(404, f"Task {task_id} not found")
        return task

    def cancel(self, task: Task) -> bool:
        """Cancel a task that has not ended; False if it had."""
        if task.phase.ended:
            return False
        if task.timer is not None:
            task.timer.cancel()
        if task.phase is Phase.QUEUED:
            self._leave_queue(task)
        self._end(task, Phase.CANCELED)
        return True

    def forget_ended(self, created_before: float) -> list[Task]:
        """Drop the tasks created (wall clock) before ``created_before`` that have ended
        and have no webhook on its way, and return them, oldest first. For a host that
        serves a long run in memory (a simulation) and knows its client will not ask
        about them again; a task not dropped is answered as before (list pages count only
        the tasks kept)."""
        gone = [
            task
            for task in itertools.takewhile(
                lambda task: task.created_at < created_before, self.tasks.values()
            )
            if task.phase.ended and task.last_delivery is None
        ]
        for task in gone:
            del self.tasks[task.id]
        return gone

    def queue_position(self, task: Task) -> int:
        return bisect.bisect_left(self._queue, task.queue_seq)

    async def wait(self, task: Task, at_most: float) -> None:
        """Until the task ends, or ``at_most`` seconds."""
        if task.phase.ended:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if task.waiters is None:
            task.waiters = []
        task.waiters.append(future)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, at_most)

    def signed_webhook(
        self,
        task: Task,
        *,
        body: bytes | None = None,
        msg_id: str | None = None,
        timestamp: int | None = None,
        forged: bool = False,
    ) -> tuple[dict[str, str], bytes]:
        """See :meth:`WebhookSender.signed`."""
        return self.webhooks.signed(
            task, body=body, msg_id=msg_id, timestamp=timestamp, forged=forged
        )

    def rotate_key(self, keep_old: bool = True) -> str:
        """fal: sign webhooks with a new key from now on (the key set publishes it)."""
        return self.fal_signer.rotate(keep_old)

    def payload_error(self, task: Task) -> bool:
        """fal's webhook of this task carries no result (payload null + payload_error)."""
        fal = self.shape_name == "fal"
        return fal and task.fate.payload_error and task.phase is Phase.SUCCEEDED

    # --- outputs -------------------------------------------------------------------------------

    def file_ref(self, task: Task, file: OutputFile) -> str:
        """Where the client finds a file: its URL, or the file itself as a data URI."""
        if task.inline(file):
            return self.data_uris.json(file)[1:-1].decode("ascii")
        return f"{self.base_url}/files/{task.id}/{file.name}"

    def file(self, task_id: str, name: str) -> tuple[Task, OutputFile]:
        task = self.tasks.get(task_id)
        file = task.files.get(name) if task is not None else None
        if task is None or file is None:
            raise Refused(404, "No such file")
        return task, file

    def file_downloaded(self, task: Task, name: str) -> None:
        task.downloaded.add(name)
        self._forget_body_once_delivered(task)

    def result_read(self, task: Task) -> None:
        """The client read the task's finished result (its outputs, when it has no files)."""
        if task.phase is Phase.SUCCEEDED:
            task.result_read = True
            self._forget_body_once_delivered(task)

    @staticmethod
    def _forget_body_once_delivered(task: Task) -> None:
        """A delivered task is rarely read again: its status JSON (a replicate prediction
        carries its logs) is rendered again if it is, so a long run does not keep them."""
        if task.delivered:
            task.rendered = None

    def _render(self, task: Task) -> bytes:
        """The task's status JSON (``Task.body`` keeps it until its next phase). An ended
        task's is read soon after its end (polls, the result) and rarely later: the
        newest ``ENDED_BODIES_KEPT`` rendered stay, older ones are rendered again (the
        same bytes) if they are read. A replicate prediction carries its logs (up to 256
        KiB): kept on every failed task, a long run held gigabytes."""
        body = self.shape.render(task)
        if task.phase.ended:
            self._ended_bodies.append(task)
            if len(self._ended_bodies) > ENDED_BODIES_KEPT:
                self._ended_bodies.popleft().rendered = None
        return body

    # --- phases ------------------------------------------------------------------------------

    def _current(self, task: Task) -> bool:
        """False for a task of before a reset, whose timer fired anyway."""
        return self.tasks.get(task.id) is task

    def _expire(self, task: Task, phase: Phase) -> None:
        task.deadline_timer = None
        if task.phase.ended or not self._current(task):
            return
        self.stats.tasks["expired"] += 1
        if task.timer is not None:
            task.timer.cancel()
        if task.phase is Phase.QUEUED:
            self._leave_queue(task)
            if phase is Phase.CANCELED:
                phase = Phase.ABORTED  # its deadline passed before it ran
        self._end(task, phase)

    def _leave_queue(self, task: Task) -> None:
        i = bisect.bisect_left(self._queue, task.queue_seq)
        if i < len(self._queue) and self._queue[i] == task.queue_seq:
            del self._queue[i]

    def _start_running(self, task: Task) -> None:
        if task.phase is not Phase.QUEUED or not self._current(task):
            return
        self._leave_queue(task)
        task.phase = Phase.RUNNING
        task.billable = True
        self.stats.task_started()
        task.started_at = self.wall_clock()
        task.rendered = None
        progress = self.shape.progress_event
        if progress is not None and not task.fate.out_of_order:
            self.webhooks.emit(task, progress)
        if task.outcome is Outcome.NEVER_FINISH:
            task.timer = None
            return
        phase = Phase.SUCCEEDED if task.outcome is Outcome.SUCCEED else Phase.FAILED
        task.timer = self.scheduler.call_later(task.fate.run_time, self._end, task, phase)

    def _end(self, task: Task, phase: Phase) -> None:
        task.timer = None
        if task.phase.ended or not self._current(task):
            return
        if task.deadline_timer is not None:
            task.deadline_timer.cancel()
            task.deadline_timer = None
        stale_body = task.body if task.fate.out_of_order else None
        task.phase = phase
        task.completed_at = self.wall_clock()
        if phase is Phase.FAILED:
            task.error = REJECTED_ERROR if task.outcome is Outcome.REJECT else TRANSIENT_ERROR
        if phase is Phase.SUCCEEDED:
            files = make_files(task.input, task.spec, task.fate.output_count, task.fate.output_size)
            task.files = {file.name: file for file in files}
        task.rendered = None
        rejected = phase is Phase.FAILED and task.outcome is Outcome.REJECT
        self.stats.task_ended(phase, rejected=rejected)
        self.webhooks.emit(task, self.shape.final_event, stale_after=stale_body)
        if task.waiters:
            for waiter in task.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            task.waiters = None
