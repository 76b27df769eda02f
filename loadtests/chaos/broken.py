"""Deliberately broken builds, for the chaos suite's proof that its checks can fail.

    ignore-slot-limit   processors keep any number of tasks in flight at their vendor
    double-submit       every vendor task is started twice

They plug in through the wiring (``actors.wiring.Customization``): the product carries
no flag for them. ``BrokenBuild`` pickles by reference (a module-level class), so Ray
hands it to every actor without the product importing this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from actors.wiring import Customization
from runtime.config import VendorConfig
from runtime.vendors import (
    Download,
    FoundTask,
    Output,
    TaskStatus,
    VendorClient,
    WebhookEvent,
)

BROKEN_BUILDS = ("ignore-slot-limit", "double-submit")
NO_LIMIT = 1_000_000  # slots: as good as none


@dataclass(frozen=True)
class BrokenBuild(Customization):
    broken: frozenset[str]

    def vendor_client(self, client: VendorClient) -> VendorClient:
        if "double-submit" in self.broken:
            return DoubleSubmit(client)
        return client

    def slot_limit(self, vendor: VendorConfig) -> int:
        return NO_LIMIT if "ignore-slot-limit" in self.broken else vendor.concurrency


def broken_build(names: Iterable[str]) -> BrokenBuild | None:
    """The customization for ``names`` (None for none); ValueError for an unknown name."""
    broken = frozenset(names)
    unknown = broken - set(BROKEN_BUILDS)
    if unknown:
        raise ValueError(f"unknown broken builds {sorted(unknown)} (known: {BROKEN_BUILDS})")
    return BrokenBuild(broken) if broken else None


class DoubleSubmit:
    """A vendor client that starts every task twice (the ``double-submit`` build)."""

    def __init__(self, client: VendorClient) -> None:
        self._client = client

    @property
    def name(self) -> str:
        return self._client.name

    async def submit(
        self,
        model: str,
        input: dict[str, Any],
        *,
        job_id: str,
        attempt: int,
        trace_id: str,
        webhook_url: str | None,
        cancel_after: float | None = None,
    ) -> str:
        fields: dict[str, Any] = {
            "job_id": job_id,
            "attempt": attempt,
            "trace_id": trace_id,
            "webhook_url": webhook_url,
            "cancel_after": cancel_after,
        }
        await self._client.submit(model, input, **fields)
        return await self._client.submit(model, input, **fields)

    async def status(self, model: str, task_id: str, *, trace_id: str) -> TaskStatus:
        return await self._client.status(model, task_id, trace_id=trace_id)

    @property
    def can_find_tasks(self) -> bool:
        return self._client.can_find_tasks

    async def find_task(
        self, model: str, *, job_id: str, attempt: int, created_after: float, trace_id: str
    ) -> FoundTask | None:
        return await self._client.find_task(
            model, job_id=job_id, attempt=attempt, created_after=created_after, trace_id=trace_id
        )

    async def cancel(self, model: str, task_id: str, *, trace_id: str | None = None) -> None:
        await self._client.cancel(model, task_id, trace_id=trace_id)

    async def fetch_output(self, url: str, *, trace_id: str | None = None) -> bytes:
        return await self._client.fetch_output(url, trace_id=trace_id)

    def download(
        self, output: Output, *, trace_id: str | None = None, max_bytes: int | None = None
    ) -> AbstractAsyncContextManager[Download]:
        return self._client.download(output, trace_id=trace_id, max_bytes=max_bytes)

    async def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float, tolerance: float
    ) -> WebhookEvent:
        return await self._client.parse_webhook(headers, body, now, tolerance)

    async def close(self) -> None:
        await self._client.close()
