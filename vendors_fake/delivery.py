"""A fake vendor's webhooks: which leave when, with what faults, signed how.

Part of the host-independent core (:mod:`vendors_fake.core`): a delivery is a coroutine on
the running event loop that sleeps on that loop's time (virtual time under a virtual-time
loop), signs each attempt with the vendor's scheme (:mod:`vendors_fake.signing`) and posts
it through the coroutine the host gave the core (``post_webhook``: ``(url, headers, body,
timeout) -> HTTP status or None``). A task's webhooks leave in the order of its events; a
final event that is not delivered (an error status or no answer) is retried with backoff,
signed afresh each time, as fal and replicate do; progress events are not retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from vendors_fake.signing import FORGED_WEBHOOK_SECRET, FalSigner, StandardWebhooksSigner
from vendors_fake.tasks import CLEAN_DELIVERY, Task, WebhookFate

if TYPE_CHECKING:
    from vendors_fake.core import VendorCore

PostWebhook = Callable[[str, Mapping[str, str], bytes, float], Awaitable[int | None]]


class WebhookSender:
    """The webhooks of one :class:`~vendors_fake.core.VendorCore`."""

    def __init__(self, core: VendorCore, webhook_secret: str) -> None:
        self.core = core
        self.hmac_signer = StandardWebhooksSigner(webhook_secret)
        self.forged_hmac_signer = StandardWebhooksSigner(FORGED_WEBHOOK_SECRET)
        self.fal_signer = FalSigner(core.name)
        self._deliveries: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._deliveries)

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel every delivery under way; returns them (to await their end)."""
        deliveries = list(self._deliveries)
        for delivery in deliveries:
            delivery.cancel()
        return deliveries

    def signed(
        self,
        task: Task,
        *,
        body: bytes | None = None,
        msg_id: str | None = None,
        timestamp: int | None = None,
        forged: bool = False,
    ) -> tuple[dict[str, str], bytes]:
        """The headers and body of ``task``'s final webhook as this vendor signs it (or a
        forger's signature, or another body or timestamp): for harnesses that replay,
        forge or contradict webhooks in the vendor's own scheme."""
        if body is None:
            body = self.core.shape.webhook_body(task, self.core.shape.final_event)
        if timestamp is None:
            timestamp = int(self.core.wall_clock())
        return self._sign(
            task.id, msg_id or f"msg_{task.id}_completed", timestamp, body, forged
        ), body

    def _sign(
        self, task_id: str, msg_id: str, timestamp: int, body: bytes, forged: bool
    ) -> dict[str, str]:
        if self.core.shape_name == "fal":
            return self.fal_signer.headers(task_id, timestamp, body, forged=forged)
        signer = self.forged_hmac_signer if forged else self.hmac_signer
        return signer.headers(msg_id, timestamp, body)

    def emit(self, task: Task, event: str, stale_after: bytes | None = None) -> None:
        """Send one event's webhook with its drawn faults; then, for an out-of-order task,
        the withheld progress event (``stale_after``)."""
        url = task.webhook_url
        if url is None or self.core.post_webhook is None:
            return
        subscribed = event in task.webhook_events
        if not subscribed and stale_after is None:
            return
        fate = task.fate.webhooks.get(event, CLEAN_DELIVERY)
        if subscribed:
            self.core.stats.webhooks["events"] += 1
            for fault in fate.faults:
                self.core.stats.webhook_faults[fault] += 1
        if stale_after is not None:
            self.core.stats.webhook_faults["out_of_order"] += 1
        body = self.core.shape.webhook_body(task, event) if subscribed else None
        final = event == self.core.shape.final_event
        if body is not None and final and self.core.payload_error(task):
            self.core.stats.webhooks["payload_errors"] += 1
        stale = None
        if stale_after is not None:
            stale = (f"msg_{task.id}_{self.core.shape.progress_event}", stale_after)
        delivery = asyncio.get_running_loop().create_task(
            self._deliver(
                task.last_delivery, task, f"msg_{task.id}_{event}", body, fate, final, stale
            )
        )
        task.last_delivery = delivery
        self._deliveries.add(delivery)
        delivery.add_done_callback(lambda done: self._delivered(task, done))

    def _delivered(self, task: Task, done: asyncio.Task[None]) -> None:
        """A delivery is over. A task whose webhooks are all sent holds none of them: a
        finished delivery is nothing to wait for, and every ended task kept its last one."""
        self._deliveries.discard(done)
        if task.last_delivery is done:
            task.last_delivery = None

    async def _deliver(
        self,
        previous: asyncio.Task[None] | None,
        task: Task,
        msg_id: str,
        body: bytes | None,
        fate: WebhookFate,
        final: bool,
        stale: tuple[str, bytes] | None,
    ) -> None:
        if previous is not None:  # a task's webhooks leave in the order of its events
            await asyncio.wait([previous])
        if fate.delay:
            await asyncio.sleep(fate.delay)
        if body is not None and not fate.lost:
            delivered = await self._post(task, msg_id, body, fate, retry=final)
            if fate.duplicated:
                delivered = await self._post(task, msg_id, body, fate, retry=False) or delivered
            if delivered and final and not self.core.payload_error(task):
                self.core.result_read(task)
        if stale is not None:
            await self._post(task, stale[0], stale[1], CLEAN_DELIVERY, retry=False)

    async def _post(
        self, task: Task, msg_id: str, body: bytes, fate: WebhookFate, *, retry: bool
    ) -> bool:
        assert self.core.post_webhook is not None and task.webhook_url is not None
        faults = self.core.profile.webhooks
        attempts = faults.retries + 1 if retry else 1
        for attempt in range(attempts):
            if attempt:
                backoff = faults.retry_backoff * 2 ** (attempt - 1)
                await asyncio.sleep(min(backoff, faults.retry_backoff_cap))
                self.core.stats.webhooks["retried"] += 1
            timestamp = int(self.core.wall_clock() - (faults.stale_by if fate.stale else 0))
            headers = self._sign(task.id, msg_id, timestamp, body, fate.bad_signature)
            self.core.stats.webhooks["sent"] += 1
            status = await self.core.post_webhook(task.webhook_url, headers, body, faults.timeout)
            if status is not None and 200 <= status < 300:
                self.core.stats.webhooks["delivered"] += 1
                return True
            self.core.stats.webhooks["failed"] += 1
        return False
