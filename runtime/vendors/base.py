"""What every vendor adapter speaks: task states and statuses, outputs, webhook events,
downloads, and the ``VendorClient`` protocol."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol


class TaskState(enum.StrEnum):
    PENDING = "pending"  # queued at the vendor (replicate "starting": a cold boot; fal IN_QUEUE)
    RUNNING = "running"  # replicate "processing", fal IN_PROGRESS
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # replicate "failed" and "aborted", fal COMPLETED with an error
    CANCELED = "canceled"

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED})

OutputKind = Literal["url", "data", "json", "text"]


@dataclass(frozen=True, slots=True)
class Output:
    """One output of a task, as the vendor gave it.

    ``kind``: ``url`` (a file to download), ``data`` (a ``data:`` URI: the file itself),
    ``json`` (a JSON value, ``value`` is its canonical text) or ``text`` (plain text).
    ``content_type``: what the vendor declared (fal's file ``content_type``, a data URI's
    media type, ``application/json``, ``text/plain; charset=utf-8``); None when it
    declared none (replicate's URLs): the download's ``Content-Type`` tells.
    ``key``: where in the vendor's answer it was (``images[1]``, ``video``,
    ``output[0]``; None for the whole result). ``file_name`` and ``size`` (bytes) when
    the vendor gave them.
    """

    kind: OutputKind
    value: str
    content_type: str | None = None
    key: str | None = None
    file_name: str | None = None
    size: int | None = None

    @property
    def is_file(self) -> bool:
        return self.kind in ("url", "data")


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A vendor task as the vendor reports it.

    ``outputs``: every output of a ``SUCCEEDED`` task, files first, in the vendor's
    order. ``result_pending``: it succeeded, but this status does not carry its outputs
    (fal's webhook with ``payload: null`` and ``payload_error``: the result exists at the
    response URL); ``VendorClient.status`` reads them. ``permanent``: ``FAILED`` because
    the input or content was rejected (the same input fails everywhere).
    ``queue_position``: when ``PENDING``, if the vendor says.
    """

    state: TaskState
    outputs: tuple[Output, ...] = ()
    error: str | None = None  # the vendor's message, when FAILED
    permanent: bool = False
    queue_position: int | None = None
    result_pending: bool = False

    @property
    def output_url(self) -> str | None:
        """The first file output (a URL or a data URI), or None. Kept for callers that
        store one output per job while they learn to store every one of ``outputs``."""
        return next((output.value for output in self.outputs if output.is_file), None)


@dataclass(frozen=True, slots=True)
class FoundTask:
    """A task found by the job and attempt it was submitted for (``find_task``)."""

    task_id: str
    status: TaskStatus


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified vendor callback: which task, and its status at the event."""

    vendor: str
    webhook_id: str  # deduplicate on (vendor, webhook_id)
    task_id: str
    status: TaskStatus
    # The job and attempt the processor put in the webhook URL (not signed: a hint that
    # finds a task whose id was never recorded, see VendorProcessor.on_webhooks).
    job_id: str | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Download:
    """An output being read: its content type (from the response, else as declared),
    its size if known, and its bytes as they arrive."""

    content_type: str | None
    size: int | None
    chunks: AsyncIterator[bytes]


class VendorClient(Protocol):
    @property
    def name(self) -> str:
        """The vendor's name in jobline.toml."""
        ...

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
        """Start a task; returns the vendor's task id.

        ``cancel_after``: seconds after which the vendor itself ends the task if it has
        not ended (replicate's ``Cancel-After``); None: the vendor's ``task_lifetime``.
        Raises a ``VendorError``: transient (the task may or may not exist: a timeout, a
        5xx or an unreadable answer), ``VendorRefused`` (account or model),
        ``VendorInputRejected``.
        """
        ...

    async def status(self, model: str, task_id: str, *, trace_id: str) -> TaskStatus:
        """The task now; a ``SUCCEEDED`` status carries every output."""
        ...

    @property
    def can_find_tasks(self) -> bool:
        """Whether ``find_task`` can tell if a submit in doubt created a task (replicate
        lists predictions; fal lists nothing: its orphans show themselves by webhook)."""
        ...

    async def find_task(
        self, model: str, *, job_id: str, attempt: int, created_after: float, trace_id: str
    ) -> FoundTask | None:
        """The task a submit in doubt created for ``(job_id, attempt)``, found by the
        webhook URL it was given (which names both), or None when the vendor's list
        shows none created since ``created_after`` (seconds since the epoch). Raises a
        transient ``VendorError`` when the vendor cannot tell now, ``VendorPermanentError``
        when it never can (``can_find_tasks`` is False)."""
        ...

    async def cancel(self, model: str, task_id: str, *, trace_id: str | None = None) -> None:
        """Cancel a task; one that already ended, or that the vendor does not know, is
        not an error."""

    def download(
        self, output: Output, *, trace_id: str | None = None, max_bytes: int | None = None
    ) -> AbstractAsyncContextManager[Download]:
        """Read one output: ``async with client.download(o) as d: async for chunk in
        d.chunks``. A data URI, JSON or text output is decoded without a request. Errors:
        ``VendorTaskFailed`` (the file is gone), ``VendorUnavailable``/``VendorTimeout``
        (try again), ``VendorPermanentError`` (larger than ``max_bytes``, malformed)."""
        ...

    async def fetch_output(self, url: str, *, trace_id: str | None = None) -> bytes:
        """The whole body of one file output (a URL or a data URI), capped at the
        client's ``max_output_bytes``. Kept for callers not streaming yet."""
        ...

    async def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float, tolerance: float
    ) -> WebhookEvent:
        """Verify (the vendor's own scheme) and parse a callback; raises
        ``WebhookRejected`` (``WebhookSignatureInvalid``, ``WebhookTimestampStale``,
        ``WebhookKeysUnavailable``, or a body that is no event)."""
        ...

    async def close(self) -> None: ...
