"""The simulation's vendors: fake vendors in memory (``vendors_fake.memory``), reached
through jobline's own vendor adapters.

Each vendor of the config gets a :class:`~vendors_fake.memory.MemoryVendor`: the fake's
core and routes, its fault profile, its seed. jobline talks to it through the product's
adapter for the vendor's API shape (``ReplicateClient``, ``FalClient``), so request
building, status parsing, output finding, error classification (``vendor_errors``) and
webhook verification are the product's; only the transport differs: where the adapter
would send an HTTP request through aiohttp, it calls the in-memory host (the two methods
that touch aiohttp, ``call`` and ``download``, are overridden here and nowhere else). The
client's own timeout applies as over HTTP, on virtual time: a hung request fails with
``VendorTimeout`` after ``submit_timeout`` or ``poll_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from yarl import URL

from loadtests.sim.trace import Trace
from runtime.config import JoblineConfig, VendorConfig
from runtime.vendors import Download, FalClient, Output, ReplicateClient, VendorClient
from runtime.vendors.http import (
    ATTEMPT_HEADER,
    JOB_ID_HEADER,
    MAX_API_BYTES,
    ErrorStatus,
    HttpClient,
    Op,
    Reply,
    TooLarge,
    vendor_errors,
)
from vendors_fake.delivery import PostWebhook
from vendors_fake.memory import MemoryReply, MemoryVendor
from vendors_fake.profile import FaultProfile
from vendors_fake.signing import DEV_WEBHOOK_SECRET
from vendors_fake.tasks import Phase, Task

T = TypeVar("T")
API_KEY = "sim-key"


class _InMemory(HttpClient):
    """An adapter whose requests go to a ``MemoryVendor`` instead of a socket."""

    vendor: MemoryVendor
    trace: Trace | None = None

    async def call(
        self,
        op: Op,
        method: str,
        url: URL,
        read: Callable[[Reply], T],
        *,
        trace_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        accept: frozenset[int] = frozenset(),
        auth: bool = True,
        limit: int = MAX_API_BYTES,
    ) -> T:
        seconds = self.config.submit_timeout if op == "submit" else self.config.poll_timeout
        sent = self._headers(trace_id, auth=auth, extra=headers)
        body = b"" if json_body is None else json.dumps(json_body).encode()
        with vendor_errors(self._name, op, seconds, self._clock):
            try:
                async with asyncio.timeout(seconds):  # wait_for would start a task per call
                    answer = await self.vendor.request(method, url, sent, body)
            except (TimeoutError, ConnectionError) as exc:
                self._traced(op, sent, type(exc).__name__)
                raise
            self._traced(op, sent, answer.status)
            data = answer.body
            if len(data) > limit:
                raise TooLarge(limit)
            reply = Reply(answer.status, answer.headers, data)
            if reply.status >= 400 and reply.status not in accept:
                raise ErrorStatus(reply)
            return read(reply)

    def _traced(self, op: str, headers: Mapping[str, str], answer: object) -> None:
        if self.trace is not None:
            job = headers.get(JOB_ID_HEADER, "")
            attempt = headers.get(ATTEMPT_HEADER, "")
            self.trace.add("vendor", self._name, op, answer, job, attempt)

    @contextlib.asynccontextmanager
    async def download(
        self, output: Output, *, trace_id: str, max_bytes: int | None = None
    ) -> AsyncIterator[Download]:
        if output.kind != "url":  # a data URI, JSON or text: no request
            async with super().download(output, trace_id=trace_id, max_bytes=max_bytes) as found:
                yield found
            return
        seconds = self.config.poll_timeout
        target = URL(output.value)
        sent = self._headers(trace_id, auth=self._same_origin(target))
        with vendor_errors(self._name, "fetch", seconds, self._clock):
            async with asyncio.timeout(seconds):
                answer = await self.vendor.request("GET", target, sent)
            if answer.status >= 400:
                raise ErrorStatus(Reply(answer.status, answer.headers, answer.body))
            length = answer.headers.get("Content-Length")
            size = int(length) if length is not None else None
            if max_bytes is not None and size is not None and size > max_bytes:
                raise TooLarge(max_bytes)
        declared = answer.headers.get("Content-Type") or output.content_type
        yield Download(declared, size, self._chunks_of(answer, max_bytes))

    async def _chunks_of(self, answer: MemoryReply, max_bytes: int | None) -> AsyncIterator[bytes]:
        size = 0
        with vendor_errors(self._name, "fetch", self.config.poll_timeout, self._clock):
            for chunk in answer.chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(max_bytes)
                yield chunk


class MemoryReplicateClient(_InMemory, ReplicateClient):
    """jobline's replicate adapter, on an in-memory fake."""


class MemoryFalClient(_InMemory, FalClient):
    """jobline's fal adapter, on an in-memory fake."""


@dataclass
class TaskTally:
    """What a fake's tasks add up to in the report, counted as each task is let go of, so
    that a long run holds counts rather than every task."""

    tasks: int = 0
    ended: int = 0
    task_seconds: float = 0.0  # of the ended tasks, created to ended
    billable: int = 0
    billable_seconds: float = 0.0
    delivered: int = 0
    wasted: int = 0
    wasted_seconds: float = 0.0
    running: int = 0
    by_phase: Counter[str] = field(default_factory=Counter)

    def add(self, task: Task, now: float) -> None:
        self.tasks += 1
        self.by_phase[task.phase.value] += 1
        if task.phase.ended and task.completed_at is not None:
            self.ended += 1
            self.task_seconds += task.completed_at - task.created_at
        if task.phase is Phase.RUNNING:
            self.running += 1
        delivered = task.delivered
        self.delivered += delivered
        if task.billable:
            end = task.completed_at if task.completed_at is not None else now
            seconds = max(end - (task.started_at or end), 0.0)
            self.billable += 1
            self.billable_seconds += seconds
            if not delivered:
                self.wasted += 1
                self.wasted_seconds += seconds

    def plus(self, other: TaskTally) -> TaskTally:
        both = TaskTally()
        for name in ("tasks", "ended", "task_seconds", "billable", "billable_seconds"):
            setattr(both, name, getattr(self, name) + getattr(other, name))
        for name in ("delivered", "wasted", "wasted_seconds", "running"):
            setattr(both, name, getattr(self, name) + getattr(other, name))
        both.by_phase = self.by_phase + other.by_phase
        return both

    def summary(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "ended": self.ended,
            "by_phase": dict(sorted(self.by_phase.items())),
            "task_seconds_mean": self.task_seconds / self.ended if self.ended else None,
            "billable_tasks": self.billable,
            "billable_seconds": round(self.billable_seconds, 3),
            "delivered_tasks": self.delivered,
            "wasted_tasks": self.wasted,
            "wasted_seconds": round(self.wasted_seconds, 3),
            "still_running": self.running,
        }


class Vendors:
    """One in-memory fake per vendor of the config, and jobline's clients for them."""

    def __init__(
        self,
        config: JoblineConfig,
        profiles: Mapping[str, FaultProfile],
        *,
        seed: int,
        wall_clock: Callable[[], float],
        post_webhook: PostWebhook,
        trace: Trace | None = None,
    ) -> None:
        self.config = config
        self.clock = wall_clock
        self.trace = trace
        self.fakes: dict[str, MemoryVendor] = {}
        self.forgotten: dict[str, TaskTally] = {name: TaskTally() for name in config.vendors}
        for name, vendor in config.vendors.items():
            # A profile without a concurrency limit counts tasks in flight and refuses none:
            # what the fake counts is jobline's own restraint (I4), as in the chaos suite.
            profile = profiles[name]
            self.fakes[name] = MemoryVendor(
                vendor.api,
                profile,
                api_key=API_KEY,
                webhook_secret=DEV_WEBHOOK_SECRET,
                seed=seed,
                name=name,
                base_url=vendor.base_url,
                wall_clock=wall_clock,
                post_webhook=post_webhook,
            )

    def forget_ended(self, created_before: float) -> int:
        """Let go of the fakes' ended tasks created before ``created_before`` (wall clock),
        counted into the report's tallies first; how many."""
        forgotten = 0
        for name, fake in self.fakes.items():
            tally = self.forgotten[name]
            for task in fake.core.forget_ended(created_before):
                tally.add(task, created_before)
                forgotten += 1
        return forgotten

    def summary(self, name: str, now: float) -> dict[str, Any]:
        """What the fake ``name`` did: the tasks it let go of and those it holds."""
        held = TaskTally()
        for task in self.fakes[name].core.tasks.values():
            held.add(task, now)
        return self.forgotten[name].plus(held).summary()

    def __getitem__(self, name: str) -> MemoryVendor:
        return self.fakes[name]

    def client(self, vendor: VendorConfig) -> VendorClient:
        """jobline's adapter for ``vendor``, talking to its in-memory fake (the wiring's
        ``vendor_clients``: every role gets a client of its own)."""
        client: _InMemory
        if vendor.api == "replicate":
            client = MemoryReplicateClient(vendor, API_KEY, DEV_WEBHOOK_SECRET, clock=self.clock)
        else:
            client = MemoryFalClient(vendor, API_KEY, clock=self.clock)
        client.vendor = self.fakes[vendor.name]
        client.trace = self.trace
        return client


def in_memory_config(config: JoblineConfig) -> JoblineConfig:
    """``config`` with every vendor at an address of its own that no socket serves, its
    outputs fetched from there."""
    vendors = {}
    for name, vendor in config.vendors.items():
        host = f"{name}.vendor.invalid"
        url = f"http://{host}"
        # Its files are served from the same address: the one output host it may name.
        update: dict[str, Any] = {"base_url": url, "output_hosts": (host,)}
        if vendor.api == "fal":
            update["webhook_jwks_url"] = f"{url}/.well-known/jwks.json"
        vendors[name] = vendor.model_copy(update=update)
    return config.model_copy(update={"vendors": vendors})
