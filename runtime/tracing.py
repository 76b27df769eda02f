"""OpenTelemetry spans for a job's life, one trace per job across every actor.

Theory of operation
-------------------
The gateway gives every job a ``trace_id`` (32 hex digits, ``telemetry.new_trace_id``)
that travels with the job through the ledger and every actor message. That id *is*
the OpenTelemetry trace id, so no actor has to pass context objects to another:

- the gateway's ``submit`` span is the job's root; its span id is derived from the
  trace id (``root_span_id``), and the SDK is told to use both ids for it;
- any other actor, in any process, rebuilds the root's ``SpanContext`` from the trace
  id alone and starts its spans as children of it (or of its own current span, when
  it is already inside one of the job's spans).

    gateway   submit ──┬── dispatch
    processor          ├── vendor.submit ── vendor.wait ── download ── settle
    sweeper            └── download ── settle          (a zombie the sweeper completes)

Sampling: ``[tracing] sample_ratio`` of the jobs are traced, chosen by their trace id
(OpenTelemetry's ``TraceIdRatioBased`` under ``ParentBased``), so every actor in every
process takes the same decision for a job with no message between them. A span of a job
not chosen is only noted (``_Unsampled``: its name, ids, start and attributes, in this
process's memory; no SDK span, no span processor) and forgotten when it ends, unless it
ends in an error: then it is made into the SDK span it would have been (same ids, start
and attributes) and exported, so a failing span is always exported. An SDK span cost
about a tenth of a gateway's time per accepted job; a noted one costs a few
microseconds.

Spans are exported in batches by the SDK's ``BatchSpanProcessor``, from a thread of its
own, at least every ``[tracing] export_interval`` seconds: never on the request's or the
job's path. What a process had not exported yet when it is killed is lost (at most one
interval's spans); a clean stop exports it.

Spans go over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-only
variant) is set, and otherwise to a JSON-lines file, one object per span:
``JOBLINE_TRACES_PATH``, else ``traces.jsonl`` beside the ledger database (so
``data/traces.jsonl`` by default). ``OTEL_SDK_DISABLED=true`` turns tracing off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar, Token
from pathlib import Path
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace import Span as Span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes as OtelAttributes

from runtime.config import JoblineConfig

ACTOR_ATTRIBUTE = "jobline.actor"
OTLP_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PATH_ENV = "JOBLINE_TRACES_PATH"
# The environment an actor needs to trace like its driver (hosting passes it on to Ray).
TRACING_ENV = (*OTLP_ENV, "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_SDK_DISABLED", PATH_ENV)
SERVICE_NAME = "jobline"

_TRACE_ID = re.compile(r"(?!0{32})[0-9a-f]{32}")

Attributes = Mapping[str, str | int | float | bool]


def root_span_id(trace_id: str) -> int:
    """The span id of a job's root span, derived from its trace id (never 0)."""
    digest = hashlib.sha256(trace_id.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") or 1


def sampled(trace_id: int, ratio: float) -> bool:
    """Whether a trace is chosen at ``ratio`` (the test ``TraceIdRatioBased`` makes)."""
    return trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < TraceIdRatioBased.get_bound_for_rate(ratio)


class _RecordWhatIsDropped(Sampler):
    """``inner``'s decision, except that a span it drops is still recorded (not sampled):
    it costs no export, and is exported after all if it ends in an error (``KeepFailed``)."""

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: OtelAttributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is not Decision.DROP:
            return result
        return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)

    def get_description(self) -> str:
        return f"RecordWhatIsDropped{{{self._inner.get_description()}}}"


def job_sampler(ratio: float) -> Sampler:
    """``ParentBased(TraceIdRatioBased(ratio))``, recording (not exporting) the rest."""
    off = _RecordWhatIsDropped(ALWAYS_OFF)
    return ParentBased(
        root=_RecordWhatIsDropped(TraceIdRatioBased(ratio)),
        remote_parent_not_sampled=off,
        local_parent_not_sampled=off,
    )


class KeepFailed(SpanProcessor):
    """Hands ``inner`` the spans of sampled traces, and every span that ended in an error."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.get_span_context()
        if context is None:
            return
        if context.trace_flags.sampled:
            self._inner.on_end(span)
        elif span.status.status_code is StatusCode.ERROR:
            self._inner.on_end(_marked_sampled(span, context))

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _marked_sampled(span: ReadableSpan, context: trace.SpanContext) -> ReadableSpan:
    """The same span, flagged sampled (the SDK's processors export only those)."""
    flagged = trace.SpanContext(
        context.trace_id,
        context.span_id,
        context.is_remote,
        trace.TraceFlags(trace.TraceFlags.SAMPLED),
        context.trace_state,
    )
    return ReadableSpan(
        span.name,
        flagged,
        span.parent,
        span.resource,
        span.attributes,
        span.events,
        span.links,
        span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


# The ids the next span must take (a job's root span); None: random ids.
_FIXED_IDS: ContextVar[tuple[int, int] | None] = ContextVar("jobline_fixed_ids", default=None)


class _JobIds(RandomIdGenerator):
    """Random ids, except for a job's root span, whose ids come from the job's trace id."""

    def generate_trace_id(self) -> int:
        fixed = _FIXED_IDS.get()
        return fixed[0] if fixed is not None else super().generate_trace_id()

    def generate_span_id(self) -> int:
        fixed = _FIXED_IDS.get()
        return fixed[1] if fixed is not None else super().generate_span_id()


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per span to a file (several processes may share it).

    The file stays open (``O_APPEND``): a span costs one ``write`` instead of a mkdir,
    an open and a close, which was a tenth of a gateway's time per accepted job. It is
    reopened when it was deleted meanwhile.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s), separators=(",", ":")) + "\n" for s in spans)
        try:
            with self._lock:
                # One O_APPEND write per batch: lines from other processes do not interleave.
                os.write(self._open(), lines.encode("utf-8"))
        except OSError:
            self._close()
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _open(self) -> int:
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            self._close()  # deleted under us: start a new file
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def shutdown(self) -> None:
        with self._lock:
            self._close()


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the JSON-lines file stores it."""
    context = span.get_span_context()
    assert context is not None
    attributes = dict(span.attributes or {})
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "name": span.name,
        "start": (span.start_time or 0) / 1e9,
        "end": (span.end_time or 0) / 1e9,
        "status": span.status.status_code.name.lower(),
        "error": span.status.description,
        "actor": attributes.pop(ACTOR_ATTRIBUTE, None),
        "attributes": attributes,
    }


class _Unsampled(trace.NonRecordingSpan):
    """A span of a job not sampled: what a span would record, kept in memory until it
    ends (``_UnsampledScope``). Its context is current while it runs, so the job's
    spans inside it take it as their parent, as an SDK span's would."""

    def __init__(
        self,
        context: trace.SpanContext,
        name: str,
        parent: trace.SpanContext | None,
        attributes: dict[str, Any],
    ) -> None:
        super().__init__(context)
        self.name = name
        self.parent = parent  # None: the job's root span
        self.attributes = attributes
        self.start_ns = time.time_ns()

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)


class _UnsampledScope:
    """``with`` a span of a job not sampled: current while inside, exported only if an
    exception (not a cancellation) leaves it, as the SDK span would have been. A class,
    not a generator: most spans are not sampled, and each is entered on a job's path."""

    __slots__ = ("_span", "_token", "_tracer")

    def __init__(
        self,
        tracer: JobTracer,
        name: str,
        trace_number: int,
        span_id: int,
        parent: trace.SpanContext | None,
        attributes: dict[str, Any],
    ) -> None:
        context = trace.SpanContext(trace_number, span_id, is_remote=False,
                                    trace_flags=_NOT_SAMPLED)  # fmt: skip
        self._tracer = tracer
        self._span = _Unsampled(context, name, parent, attributes)
        self._token: Token[Context] | None = None

    def __enter__(self) -> _Unsampled:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._token is not None  # entered before it is left
        otel_context.detach(self._token)
        if isinstance(exc, Exception):
            with contextlib.suppress(Exception):  # tracing never changes what is raised
                self._tracer._export_failed(self._span, exc)


_NOT_SAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)


class JobTracer:
    """One actor's spans, each in the trace of the job it is about."""

    def __init__(self, actor: str, provider: trace.TracerProvider, ratio: float = 1.0) -> None:
        self.actor = actor
        self.provider = provider
        self.ratio = ratio  # the provider's sampling ratio (job_sampler)
        self._bound = TraceIdRatioBased.get_bound_for_rate(ratio)
        self._tracer = provider.get_tracer("jobline")
        # Tracing switched off: a span is nothing, so skip building its context and ids.
        self._off = isinstance(provider, trace.NoOpTracerProvider)

    def root(
        self, name: str, trace_id: str, **attributes: Any
    ) -> contextlib.AbstractContextManager[Span]:
        """The job's root span (the gateway's submit), with ids taken from ``trace_id``."""
        if self._off:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        ids = (int(trace_id, 16), root_span_id(trace_id)) if _TRACE_ID.fullmatch(trace_id) else None
        if ids is not None and not self._sampled(ids[0]):
            return _UnsampledScope(self, name, *ids, None, self._attributes(attributes))
        return self._sdk_root(name, ids, attributes)

    @contextlib.contextmanager
    def _sdk_root(
        self, name: str, ids: tuple[int, int] | None, attributes: Mapping[str, Any]
    ) -> Iterator[Span]:
        token = _FIXED_IDS.set(ids)
        try:
            span = self._tracer.start_span(
                name, context=Context(), attributes=self._attributes(attributes)
            )
        finally:
            _FIXED_IDS.reset(token)
        with trace.use_span(span, end_on_exit=True):
            yield span

    def span(
        self, name: str, trace_id: str, **attributes: Any
    ) -> contextlib.AbstractContextManager[Span]:
        """A span in the job's trace: under this task's current span of the same job,
        else directly under the job's root span."""
        if self._off:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        if not _TRACE_ID.fullmatch(trace_id):  # a trace of its own, sampled by the SDK
            return self._tracer.start_as_current_span(
                name, context=Context(), attributes=self._attributes(attributes)
            )
        current = trace.get_current_span().get_span_context()
        number = int(trace_id, 16)
        if current.is_valid and current.trace_id == number:  # inside a span of this job
            parent, chosen = current, current.trace_flags.sampled
        else:
            chosen = self._sampled(number)
            flags = trace.TraceFlags(trace.TraceFlags.SAMPLED) if chosen else _NOT_SAMPLED
            parent = _root_context(trace_id, number, flags)
        if not chosen:
            span_id = random.getrandbits(64) or 1  # as the SDK's RandomIdGenerator
            return _UnsampledScope(
                self, name, number, span_id, parent, self._attributes(attributes)
            )
        context = None if parent is current else _in_context(parent)
        return self._tracer.start_as_current_span(
            name, context=context, attributes=self._attributes(attributes)
        )

    def _sampled(self, trace_number: int) -> bool:
        return trace_number & TraceIdRatioBased.TRACE_ID_LIMIT < self._bound

    def _export_failed(self, span: _Unsampled, exc: Exception) -> None:
        """The SDK span ``span`` would have been, ended in ``exc`` (so exported)."""
        context = span.get_span_context()
        parent = Context() if span.parent is None else _in_context(span.parent)
        token = _FIXED_IDS.set((context.trace_id, context.span_id))
        try:
            real = self._tracer.start_span(
                span.name, context=parent, attributes=span.attributes, start_time=span.start_ns
            )
        finally:
            _FIXED_IDS.reset(token)
        real.record_exception(exc)
        real.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        real.end()

    def _attributes(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        values = {f"jobline.{k}": v for k, v in attributes.items() if v is not None}
        return {ACTOR_ATTRIBUTE: self.actor, **values}


def _root_context(trace_id: str, number: int, flags: trace.TraceFlags) -> trace.SpanContext:
    """The span context of a job's root span, wherever that span was made."""
    return trace.SpanContext(number, root_span_id(trace_id), is_remote=True, trace_flags=flags)


def _in_context(parent: trace.SpanContext) -> Context:
    """A context whose current span is ``parent`` (made in this process or another)."""
    return trace.set_span_in_context(trace.NonRecordingSpan(parent))


# --- where spans go ----------------------------------------------------------------------

_providers: dict[str, trace.TracerProvider] = {}
_providers_lock = threading.Lock()


def traces_path(config: JoblineConfig) -> Path:
    """The JSON-lines file: ``JOBLINE_TRACES_PATH``, else beside the ledger database."""
    configured = os.environ.get(PATH_ENV)
    return Path(configured) if configured else config.storage.database.parent / "traces.jsonl"


def tracer_for(actor: str, config: JoblineConfig) -> JobTracer:
    """The tracer of one actor; the provider behind it is shared by the whole process."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return JobTracer(actor, trace.NoOpTracerProvider())
    otlp = any(os.environ.get(name) for name in OTLP_ENV)
    tracing = config.tracing
    where = "otlp" if otlp else str(traces_path(config).resolve())
    key = f"{where} {tracing.sample_ratio!r} {tracing.export_interval!r}"
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            exporter = _otlp_exporter() if otlp else JsonLinesExporter(traces_path(config))
            batches = BatchSpanProcessor(
                exporter, schedule_delay_millis=1000 * tracing.export_interval
            )
            provider = make_provider(batches, tracing.sample_ratio)
            _providers[key] = provider
    return JobTracer(actor, provider, tracing.sample_ratio)


def shutdown_tracing() -> None:
    """Export what is pending and forget every provider of this process."""
    with _providers_lock:
        providers = list(_providers.values())
        _providers.clear()
    for provider in providers:
        if isinstance(provider, TracerProvider):
            provider.shutdown()


def make_provider(processor: SpanProcessor, ratio: float = 1.0) -> TracerProvider:
    """A provider sampling jobs at ``ratio``: ``processor`` gets the spans of the traces
    chosen, and every span that ended in an error (give it a ``JobTracer`` of the same
    ``ratio``)."""
    provider = TracerProvider(
        sampler=job_sampler(ratio),
        resource=Resource.create({"service.name": SERVICE_NAME}),
        id_generator=_JobIds(),
    )
    provider.add_span_processor(KeepFailed(processor))
    return provider


def _otlp_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint and headers from OTEL_* env
