"""How a job's vendor task is finished and canceled: one path for the processor and the
sweeper.

- ``store_outputs``: every output of a succeeded task (``TaskStatus.outputs``: images
  lists, video, audio, other files, JSON and text results), each

  * checked against the vendor's output hosts (``runtime.origins``; refused unfetched:
    ``OutputRefused``), and so is every redirect (by the vendor client's ``download``),
  * read as a stream (a ``data:`` URI decoded, a JSON or text output as it is) into the
    result store (``ResultStore.put_stream``) under the model's ``max_output_bytes``
    (``OutputTooLarge`` past it),
  * stored with the content type the vendor declared, checked against its first bytes
    (``runtime.results.sniff_content_type``: the bytes win when they say what they are;
    a declared image/video/audio type the bytes do not bear out, or a type a browser
    would run, is stored as ``application/octet-stream``),
  * under ``<job id><ext>`` for the first and ``<job id>-<n><ext>`` for the others.

- ``complete``: ``store_outputs``, trying the *downloads* again with backoff (a timeout, a
  5xx, the store unreachable) until the job's deadline, never the vendor task, then
  ``Complete`` with every output (the capture), itself retried until it lands
  (``actors.ledger_writes``). A file the vendor no longer has (``VendorTaskFailed``) is
  the caller's to retry as a task: nothing else could bring it back.
- ``cancel_at_vendor``: one try at canceling a task; True when the vendor took it (or
  will never run it).
- ``vendor_model``: the vendor's model name for the job's place on its route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from actors.ledger_writes import LedgerWriter
from runtime.clock import Clock
from runtime.config import MICROS, JoblineConfig
from runtime.errors import (
    JoblineError,
    OutputRefused,
    ResultStoreUnavailable,
    ResultTooLarge,
    VendorOutputTooLarge,
    VendorPermanentError,
    VendorTaskFailed,
    VendorTransientError,
)
from runtime.models import Complete, Job, Outcome, StoredOutput, VendorCharge
from runtime.origins import refusal_of
from runtime.results import ResultStore, result_key_for, sniff_content_type
from runtime.states import JobStatus
from runtime.telemetry import Metrics, get_logger
from runtime.tracing import JobTracer
from runtime.vendors import Output, VendorClient

log = get_logger("finishing")

__all__ = ["DownloadsExpired", "JobFinisher", "OutputRefused", "OutputTooLarge"]

SNIFF_BYTES = 64  # the first bytes a content type is checked against
DOWNLOAD_BACKOFF = 0.5  # seconds before downloading again; doubles up to the cap
DOWNLOAD_BACKOFF_CAP = 15.0


class OutputTooLarge(VendorOutputTooLarge):
    """An output is larger than its model's ``max_output_bytes``: nothing of it was kept."""


class DownloadsExpired(VendorTransientError):
    """The job's deadline passed while its outputs could not be downloaded or stored."""


def vendor_model(config: JoblineConfig, job: Job) -> str:
    """The model name the job's current vendor knows (its route step's ``model``)."""
    return config.models[job.model].route[job.route_position].model


def vendor_charge(config: JoblineConfig, job: Job, attempt: int, outcome: str) -> VendorCharge:
    """What ``attempt`` of ``job`` on its current route step cost the operator (the step's
    ``cost``), ended as ``outcome`` (``runtime.models.CHARGE_OUTCOMES``)."""
    step = config.models[job.model].route[job.route_position]
    return VendorCharge(
        job.id, attempt, job.account_id, step.vendor, job.model, step.cost_micros, outcome
    )


def count_charge(metrics: Metrics, charge: VendorCharge, outcome: str | None = None) -> None:
    """A billed attempt recorded by the ledger: ``jobline_vendor_cost_total`` and
    ``jobline_vendor_billed_tasks_total`` (``outcome``: instead of the charge's own)."""
    ended = outcome or charge.outcome
    metrics.vendor_cost.labels(charge.vendor, charge.model, ended).inc(charge.cost_micros / MICROS)
    metrics.vendor_billed_tasks.labels(charge.vendor, ended).inc()


class JobFinisher:
    """Completes and cancels vendor tasks for one actor (its metrics, its tracer)."""

    def __init__(
        self,
        config: JoblineConfig,
        writer: LedgerWriter,
        clients: Mapping[str, VendorClient],
        results: ResultStore,
        metrics: Metrics,
        tracer: JobTracer,
        clock: Clock,
    ) -> None:
        self._config = config
        self._writer = writer
        self._clients = clients
        self._results = results
        self._metrics = metrics
        self._tracer = tracer
        self._clock = clock

    async def complete(
        self,
        job: Job,
        outputs: Sequence[Output],
        *,
        retry_downloads: bool = True,
        outcome: str = "completed",
        charge: VendorCharge | None = None,
        **span: Any,
    ) -> Outcome:
        """Store every output and ``Complete`` the job; the ledger's Outcome (``changed``:
        captured now). ``charge``: the billed attempt that made the outputs, recorded with
        the Complete (``wasted`` if the job had ended). With ``retry_downloads``, a
        download or store that failed transiently is tried again until the job's deadline
        (then ``DownloadsExpired``); without, its error is raised. Raises
        ``OutputRefused``, ``OutputTooLarge``, ``VendorTaskFailed`` (a file is gone) and
        other ``VendorPermanentError``s."""
        stored = await self._store_until_deadline(job, outputs, retry_downloads, span)
        fields = {"job_id": job.id, "vendor": job.vendor, **span}
        with self._tracer.span("settle", job.trace_id, **fields, outcome=outcome):
            op = Complete(job.id, stored[0].key, stored, charge)
            result = await self._writer.settle(op, job.deadline)
        if result.changed:
            self._metrics.credits.labels("captured").inc(job.cost)
            self.count_terminal(result.value)
            if charge is not None:
                count_charge(self._metrics, charge, "succeeded")
        elif charge is not None and result.value.status is not JobStatus.COMPLETED:
            count_charge(self._metrics, charge, "wasted")
        return result

    async def _store_until_deadline(
        self, job: Job, outputs: Sequence[Output], retry: bool, span: dict[str, Any]
    ) -> tuple[StoredOutput, ...]:
        delay = DOWNLOAD_BACKOFF
        while True:
            try:
                return await self.store_outputs(job, outputs, **span)
            except (VendorTransientError, ResultStoreUnavailable, OSError) as exc:
                if isinstance(exc, VendorTaskFailed) or not retry:
                    raise
                if self._clock.time() + delay >= job.deadline:
                    message = f"outputs not stored by the deadline: {exc}"
                    raise DownloadsExpired(job.vendor, message) from exc
                log.warning(
                    "output download failed; downloading again",
                    extra={"job_id": job.id, "trace_id": job.trace_id, "error": str(exc)},
                )
                await self._clock.sleep(delay)
                delay = min(delay * 2, DOWNLOAD_BACKOFF_CAP)

    async def store_outputs(
        self, job: Job, outputs: Sequence[Output], **span: Any
    ) -> tuple[StoredOutput, ...]:
        """Every output into the result store, in order (see the module docstring)."""
        if not outputs:
            raise VendorTaskFailed(job.vendor, "the task succeeded without any output")
        hosts = self._config.vendors[job.vendor].output_hosts or ()
        for output in outputs:  # nothing is fetched if any one is refused
            reason = refusal_of(output.value, hosts) if output.kind == "url" else None
            if reason is not None:
                raise OutputRefused(job.vendor, f"output {output.key or ''} refused: {reason}")
        fields = {"job_id": job.id, "vendor": job.vendor, "outputs": len(outputs), **span}
        with self._tracer.span("download", job.trace_id, **fields):
            return tuple(
                [await self._store_one(job, index, output) for index, output in enumerate(outputs)]
            )

    async def _store_one(self, job: Job, index: int, output: Output) -> StoredOutput:
        cap = self._config.models[job.model].max_output_bytes
        client = self._clients[job.vendor]
        try:
            async with client.download(output, trace_id=job.trace_id, max_bytes=cap) as download:
                head, chunks = await _peek(download.chunks, SNIFF_BYTES)
                declared = download.content_type or output.content_type
                content_type = sniff_content_type(head, _media_type(declared))
                name = job.id if index == 0 else f"{job.id}-{index}"
                key = result_key_for(name, content_type)
                size = await self._results.put_stream(key, chunks, content_type, cap)
        except (ResultTooLarge, VendorOutputTooLarge):
            raise self._too_large(job, index, cap) from None
        return StoredOutput(key, content_type, size, output.file_name, output.key)

    def _too_large(self, job: Job, index: int, cap: int) -> OutputTooLarge:
        return OutputTooLarge(
            job.vendor,
            f"output {index} is larger than models.{job.model}.max_output_bytes ({cap} bytes)",
        )

    def count_terminal(self, job: Job) -> None:
        """A job this actor settled: by model, vendor and status, and how long it took."""
        self._metrics.jobs.labels(job.model, job.vendor, job.status.value).inc()
        self._metrics.job_duration.labels(job.model, job.status.value).observe(
            max(0.0, job.updated_at - job.created_at)
        )

    async def cancel_at_vendor(self, job: Job, task_id: str) -> bool:
        """Ask the vendor to cancel a task (one that ended already is fine); True if it did,
        or if it never will run it (a permanent refusal)."""
        try:
            client = self._clients[job.vendor]
            await client.cancel(vendor_model(self._config, job), task_id, trace_id=job.trace_id)
        except JoblineError as exc:
            log.warning("vendor cancel failed", extra={"job_id": job.id, "error": str(exc)})
            return isinstance(exc, VendorPermanentError)  # the vendor will never take it
        return True


def _media_type(declared: str | None) -> str | None:
    """A declared content type worth keeping: not empty, not the generic octet stream."""
    if not declared or declared.split(";", 1)[0].strip().lower() == "application/octet-stream":
        return None
    return declared


async def _peek(chunks: AsyncIterator[bytes], size: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first ``size`` bytes (fewer if there are no more), and every byte as chunks."""
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= size:
            break

    async def everything() -> AsyncIterator[bytes]:
        if head:
            yield head
        async for chunk in chunks:
            yield chunk

    return head[:size], everything()
