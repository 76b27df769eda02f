"""Waiting on one vendor task until it ends: its webhook, or polling as the fallback,
within its model's bounds; and canceling a task until the vendor confirms.

A ``Followed`` task carries its ``TaskWatch`` (``runtime.task_bounds``: how long it may
queue, run, and stay unreadable) and the channel its webhook arrives on. ``TaskWaiter``
waits on it: a webhook ends the wait at once; otherwise the status is polled with backoff
(``runtime.polling.poll_offsets``: from the vendor's ``poll_interval`` up to
``MAX_POLL_INTERVAL`` apart; while its webhooks arrive, the polls before its
``fallback_poll_interval`` are left out), never sleeping past the moment the watch could
say the task is overdue. A task
the vendor reports queued or running within its model's bounds is never given up on; an
overdue one is canceled until the vendor confirms (it counts against the vendor's limit
until then) and ``wait`` answers None, the reason in ``Followed.gave_up``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.clock import Clock
from runtime.config import VendorConfig
from runtime.errors import JoblineError, VendorError, VendorPermanentError
from runtime.polling import (
    LATE_WITHIN,
    MAX_POLL_INTERVAL,
    NONE_ARRIVE_AFTER,
    WebhookHealth,
    WebhookNews,
    poll_offsets,
)
from runtime.task_bounds import TaskWatch
from runtime.telemetry import get_logger
from runtime.vendors import TaskState, TaskStatus, VendorClient

log = get_logger("processor")


@dataclass(slots=True)
class Followed:
    """A vendor task being waited on."""

    task_id: str
    watch: TaskWatch
    gave_up: str | None = None  # why it was given up on (canceled), if it was
    _pushed: asyncio.Future[TaskStatus] | None = field(default=None, repr=False)

    def push(self, status: TaskStatus) -> None:
        """A webhook's status (only an end wakes the waiter)."""
        if status.state.ended and self._pushed is not None and not self._pushed.done():
            self._pushed.set_result(status)


class TaskWaiter:
    """Waits on a vendor's tasks for one processor (see the module docstring)."""

    def __init__(
        self,
        vendor: VendorConfig,
        client: VendorClient,
        clock: Clock,
        on_unreadable: Callable[[VendorError], None] = lambda exc: None,
    ) -> None:
        self._vendor = vendor
        self._client = client
        self._clock = clock
        self._on_unreadable = on_unreadable  # a task's state could not be read
        self.webhooks = WebhookHealth(
            vendor.poll_interval, vendor.first_poll_while_webhooks_arrive, self._webhook_news
        )

    def _webhook_news(self, news: WebhookNews) -> None:
        fields = {"vendor": self._vendor.name, "poll_interval": self._vendor.poll_interval}
        if news is WebhookNews.ARRIVING:
            log.info(
                "webhooks arrive: a task's status is first polled after "
                f"{self.webhooks.quiet_interval:g} s (fallback_poll_interval)",
                extra={**fields, "notice": True},
            )
        elif news is WebhookNews.STOPPED:
            log.warning(
                "a webhook did not arrive in time: a poll saw its task end first; tasks "
                "are polled from poll_interval again",
                extra=fields,
            )
        else:
            log.warning(
                f"none of the last {NONE_ARRIVE_AFTER} task ends had its webhook in time "
                f"(within {LATE_WITHIN:g} s of a poll seeing the end): are they lost, late, "
                "or unable to reach [gateway] public_url? Tasks end by polling meanwhile",
                extra=fields,
            )

    def webhook_came(self, task_id: str) -> None:
        """A webhook for ``task_id`` reached the processor (held task or not)."""
        self.webhooks.webhook_came(task_id, self._clock.time())

    async def wait(
        self,
        followed: Followed,
        model: str,
        trace_id: str,
        known: TaskStatus | None = None,
        *,
        cancel_until: float,
    ) -> TaskStatus | None:
        """Until the task ends: its final status (with every output), or None when it was
        given up on (``followed.gave_up``) and canceled until the vendor confirmed (or
        until ``cancel_until``). ``known``: a status learned before (a webhook that came
        first, a found task); an end that carries its outputs is the answer."""
        if known is not None and known.state.ended and not known.result_pending:
            return known
        loop = asyncio.get_running_loop()
        followed._pushed = loop.create_future()
        by_webhook = known is not None and known.result_pending  # its webhook said it ended
        started = self._clock.time()
        offsets = poll_offsets(self._vendor.poll_interval, self.webhooks.first_poll(started))
        due = started if by_webhook else started + next(offsets)  # pending: read at once
        watch = followed.watch
        while True:
            wait = max(min(due, watch.next_deadline()) - self._clock.time(), 0.0)
            try:
                pushed = await asyncio.wait_for(asyncio.shield(followed._pushed), timeout=wait)
                by_webhook = True
                if not pushed.result_pending:
                    self.webhooks.ended_by_webhook()
                    return pushed
                followed._pushed = loop.create_future()  # the outputs are at the vendor: read
            except TimeoutError:
                pass
            status = await self._read(followed, model, trace_id)
            if status is not None and status.state.ended:
                came = by_webhook or followed._pushed.done()  # it came during the read
                self._count_end(followed.task_id, status, came)
                return status
            now = self._clock.time()
            reason = watch.overdue(now)
            if reason is not None:
                followed.gave_up = reason
                await self.cancel_until_confirmed(
                    model, followed.task_id, cancel_until, trace_id=trace_id
                )
                return None
            while due <= now:
                due = started + next(offsets)

    def _count_end(self, task_id: str, status: TaskStatus, by_webhook: bool) -> None:
        if by_webhook:
            self.webhooks.ended_by_webhook()
        elif status.state is not TaskState.CANCELED:  # a canceled task may get no webhook
            self.webhooks.ended_by_poll(task_id, self._clock.time())

    async def _read(self, followed: Followed, model: str, trace_id: str) -> TaskStatus | None:
        try:
            status = await self._client.status(model, followed.task_id, trace_id=trace_id)
        except VendorError as exc:  # cannot read it now: the watch bounds how long
            followed.watch.unreadable(self._clock.time())
            self._on_unreadable(exc)
            return None
        followed.watch.saw(status.state, self._clock.time())
        return status

    async def cancel_until_confirmed(
        self, model: str, task_id: str, give_up_at: float, *, trace_id: str, **fields: Any
    ) -> bool:
        """Cancel a task, retrying until the vendor confirms (True) or ``give_up_at`` (False).

        The caller holds the task's slot meanwhile: a task whose cancel failed still runs
        at the vendor and counts against its limit (I4), so the slot goes back only once
        the vendor said the task is canceled (or had ended), or once it must have ended
        it itself."""
        interval = self._vendor.poll_interval
        while not await self.cancel(model, task_id, trace_id=trace_id, **fields):
            if self._clock.time() >= give_up_at:
                log.error(
                    "vendor never confirmed the cancel; giving the slot back",
                    extra={"vendor": self._vendor.name, "task_id": task_id, **fields},
                )
                return False
            await self._clock.sleep(interval)
            interval = min(interval * 1.5, MAX_POLL_INTERVAL)
        return True

    async def cancel(self, model: str, task_id: str, *, trace_id: str, **fields: Any) -> bool:
        """One try; True when the vendor took the cancel or will never run the task."""
        try:
            await self._client.cancel(model, task_id, trace_id=trace_id)
        except JoblineError as exc:
            log.warning(
                "vendor cancel failed", extra={"task_id": task_id, "error": str(exc), **fields}
            )
            return isinstance(exc, VendorPermanentError)
        return True
