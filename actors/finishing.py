"""How a job's vendor task is finished and canceled: one path for the processor and the
sweeper.

- ``complete``: download the output, store it under a key with its real content type
  (``runtime.results.sniff_content_type``), ``Complete`` the job (the capture), count it.
  A download error propagates as the vendor client raised it: the caller decides
  (the processor retries the download's job, the sweeper leaves it to the processor).
- ``cancel_at_vendor``: one try at canceling a task; True when the vendor took it (or
  will never run it).
- ``vendor_model``: the vendor's model name for the job's place on its route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from runtime.config import JoblineConfig
from runtime.errors import JoblineError, VendorPermanentError
from runtime.models import Complete, Job, LedgerOp, Outcome
from runtime.results import ResultStore, result_key_for, sniff_content_type
from runtime.telemetry import Metrics, get_logger
from runtime.tracing import JobTracer
from runtime.vendors import VendorClient

log = get_logger("finishing")


def vendor_model(config: JoblineConfig, job: Job) -> str:
    """The model name the job's current vendor knows (its route step's ``model``)."""
    return config.models[job.model].route[job.route_position].model


class JobFinisher:
    """Completes and cancels vendor tasks for one actor (its metrics, its tracer)."""

    def __init__(
        self,
        config: JoblineConfig,
        execute: Callable[[LedgerOp], Awaitable[Outcome]],
        clients: Mapping[str, VendorClient],
        results: ResultStore,
        metrics: Metrics,
        tracer: JobTracer,
    ) -> None:
        self._config = config
        self._execute = execute
        self._clients = clients
        self._results = results
        self._metrics = metrics
        self._tracer = tracer

    async def complete(
        self, job: Job, output_url: str, *, outcome: str = "completed", **span: Any
    ) -> Outcome:
        """Download, store and Complete; the ledger's Outcome (``changed``: captured now).

        Raises what the vendor client raises for the download (``VendorError``s).
        """
        fields = {"job_id": job.id, "vendor": job.vendor, **span}
        with self._tracer.span("download", job.trace_id, **fields):
            data = await self._clients[job.vendor].fetch_output(output_url)
            content_type = sniff_content_type(data)
            key = result_key_for(job.id, content_type)
            await self._results.put(key, data, content_type)
        with self._tracer.span("settle", job.trace_id, **fields, outcome=outcome):
            result = await self._execute(Complete(job.id, key))
        if result.error is None and result.changed:
            self._metrics.credits.labels("captured").inc(job.cost)
            self.count_terminal(result.value)
        return result

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
            await self._clients[job.vendor].cancel(vendor_model(self._config, job), task_id)
        except JoblineError as exc:
            log.warning("vendor cancel failed", extra={"job_id": job.id, "error": str(exc)})
            return isinstance(exc, VendorPermanentError)  # the vendor will never take it
        return True
