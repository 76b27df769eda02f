"""One trace per job: spans from the gateway, the processor and the sweeper join on the
job's trace id without passing context objects between actors or processes."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from loadtests.testbed import ROOT_CONFIG, Testbed
from runtime.config import TracingConfig, load_config
from runtime.telemetry import new_trace_id
from runtime.tracing import (
    JobTracer,
    JsonLinesExporter,
    make_provider,
    root_span_id,
    sampled,
    shutdown_tracing,
    tracer_for,
)

RNG = random.Random(11)
JOB_SPANS = {
    "submit",
    "dispatch",
    "ledger.start_attempt",
    "vendor.submit",
    "vendor.wait",
    "download",
    "settle",
}


def read_spans(path: Path, trace_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    return [span for span in spans if span["trace_id"] == trace_id]


def assert_one_tree(spans: list[dict[str, Any]], trace_id: str) -> None:
    """One root (the submit span, with the id derived from the trace id); every other
    span's parent is a span of the same trace."""
    roots = [span for span in spans if span["parent_span_id"] is None]
    assert [root["name"] for root in roots] == ["submit"]
    assert roots[0]["span_id"] == f"{root_span_id(trace_id):016x}"
    ids = {span["span_id"] for span in spans}
    assert all(span["parent_span_id"] in ids for span in spans if span is not roots[0])


def test_spans_of_separate_processes_join_on_the_trace_id(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    # Two providers stand for two processes: nothing passes between them but the trace id.
    gateway = JobTracer("gateway-0", make_provider(SimpleSpanProcessor(JsonLinesExporter(path))))
    processor = JobTracer(
        "processor-fal", make_provider(SimpleSpanProcessor(JsonLinesExporter(path)))
    )
    trace_id = new_trace_id(RNG)
    with gateway.root("submit", trace_id, model="flux-schnell"):
        pass
    with gateway.span("dispatch", trace_id, vendor="fal"):
        pass
    # The second nests under the first: the current span is of the same job.
    with processor.span("vendor.submit", trace_id, attempt=1), processor.span("inner", trace_id):
        pass
    with processor.span("unrelated", new_trace_id(RNG)):
        pass

    spans = read_spans(path, trace_id)
    assert [s["name"] for s in spans] == [
        "submit",
        "dispatch",
        "inner",
        "vendor.submit",
    ]
    assert_one_tree(spans, trace_id)
    by_name = {s["name"]: s for s in spans}
    assert by_name["inner"]["parent_span_id"] == by_name["vendor.submit"]["span_id"]
    assert by_name["submit"]["actor"] == "gateway-0"
    assert by_name["vendor.submit"]["actor"] == "processor-fal"
    assert by_name["vendor.submit"]["attributes"] == {"jobline.attempt": 1}
    assert all(s["end"] >= s["start"] > 0 for s in spans)


def test_a_failing_step_marks_its_span(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    tracer = JobTracer("processor-fal", make_provider(SimpleSpanProcessor(JsonLinesExporter(path))))
    trace_id = new_trace_id(RNG)
    with pytest.raises(RuntimeError), tracer.span("download", trace_id):
        raise RuntimeError("vendor gone")
    (span,) = read_spans(path, trace_id)
    assert (span["status"], span["error"]) == ("error", "RuntimeError: vendor gone")


def test_a_sampled_out_job_exports_nothing_from_any_process_but_its_errors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "traces.jsonl"
    ratio = 0.5
    gateway = JobTracer(
        "gateway-0", make_provider(SimpleSpanProcessor(JsonLinesExporter(path)), ratio), ratio
    )
    processor = JobTracer(
        "processor-fal", make_provider(SimpleSpanProcessor(JsonLinesExporter(path)), ratio), ratio
    )
    trace_ids = [new_trace_id(RNG) for _ in range(200)]
    for trace_id in trace_ids:
        with gateway.root("submit", trace_id):
            pass
        with processor.span("vendor.submit", trace_id), processor.span("inner", trace_id):
            pass
    kept = {t for t in trace_ids if read_spans(path, t)}
    # Each job is traced whole or not at all: both processes took the same decision.
    for trace_id in kept:
        assert sorted(s["name"] for s in read_spans(path, trace_id)) == [
            "inner",
            "submit",
            "vendor.submit",
        ]
    assert kept == {t for t in trace_ids if sampled(int(t, 16), ratio)}
    assert 60 <= len(kept) <= 140  # about half (the ids come from a seeded generator)

    # A step that fails in a job that was not chosen is exported all the same.
    dropped = next(t for t in trace_ids if t not in kept)
    with pytest.raises(RuntimeError), processor.span("download", dropped):
        raise RuntimeError("storage gone")
    (span,) = read_spans(path, dropped)
    assert (span["name"], span["status"], span["actor"]) == ("download", "error", "processor-fal")


def test_a_ratio_of_zero_exports_only_failures(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    tracer = JobTracer(
        "processor-fal", make_provider(SimpleSpanProcessor(JsonLinesExporter(path)), 0.0), 0.0
    )
    trace_id = new_trace_id(RNG)
    with tracer.root("submit", trace_id), tracer.span("vendor.submit", trace_id):
        pass
    assert read_spans(path, trace_id) == []
    with pytest.raises(ValueError), tracer.span("settle", trace_id):
        raise ValueError("refused")
    assert [s["name"] for s in read_spans(path, trace_id)] == ["settle"]


def test_a_sampled_out_job_that_fails_exports_the_spans_the_sdk_would_have(
    tmp_path: Path,
) -> None:
    """A job not chosen is only noted in memory; a failure makes its spans what the SDK
    would have recorded: the root's id from the trace id, a nested span's parent the span
    it ran in, the start before the failure, attributes set while it ran."""
    path = tmp_path / "traces.jsonl"
    ratio = 0.5
    tracer = JobTracer(
        "processor-fal", make_provider(SimpleSpanProcessor(JsonLinesExporter(path)), ratio), ratio
    )
    trace_id = next(
        t for t in (new_trace_id(RNG) for _ in range(100)) if not sampled(int(t, 16), ratio)
    )
    with pytest.raises(RuntimeError), tracer.root("submit", trace_id, model="flux-schnell") as root:
        root.set_attributes({"jobline.job_id": "job_1"})
        with tracer.span("vendor.submit", trace_id, attempt=1) as outer:
            outer.set_attribute("jobline.task_id", "t-1")
            with tracer.span("vendor.wait", trace_id):
                pass  # ends well: never exported
            with tracer.span("download", trace_id):
                raise RuntimeError("storage gone")
    spans = read_spans(path, trace_id)
    assert sorted(s["name"] for s in spans) == ["download", "submit", "vendor.submit"]
    assert_one_tree(spans, trace_id)
    by_name = {s["name"]: s for s in spans}
    assert by_name["download"]["parent_span_id"] == by_name["vendor.submit"]["span_id"]
    assert by_name["vendor.submit"]["parent_span_id"] == by_name["submit"]["span_id"]
    assert all(s["status"] == "error" for s in spans)
    assert by_name["download"]["error"] == "RuntimeError: storage gone"
    assert by_name["submit"]["attributes"] == {
        "jobline.model": "flux-schnell",
        "jobline.job_id": "job_1",
    }
    assert by_name["vendor.submit"]["attributes"] == {
        "jobline.attempt": 1,
        "jobline.task_id": "t-1",
    }
    assert by_name["submit"]["start"] <= by_name["vendor.submit"]["start"]
    assert by_name["vendor.submit"]["start"] <= by_name["download"]["start"]
    assert all(s["end"] >= s["start"] > 0 for s in spans)


def test_a_canceled_step_of_a_sampled_out_job_exports_nothing(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    tracer = JobTracer(
        "processor-fal", make_provider(SimpleSpanProcessor(JsonLinesExporter(path)), 0.0), 0.0
    )
    trace_id = new_trace_id(RNG)
    with pytest.raises(asyncio.CancelledError), tracer.span("vendor.wait", trace_id):
        raise asyncio.CancelledError
    assert read_spans(path, trace_id) == []


def test_a_sampled_job_nests_its_spans_as_before(tmp_path: Path) -> None:
    """Inside a sampled job's span, a span of another job, not sampled, is a root's
    child of its own trace; the sampled job's next span still nests where it ran."""
    path = tmp_path / "traces.jsonl"
    ratio = 0.5
    tracer = JobTracer(
        "processor-fal", make_provider(SimpleSpanProcessor(JsonLinesExporter(path)), ratio), ratio
    )
    ids = [new_trace_id(RNG) for _ in range(100)]
    chosen = next(t for t in ids if sampled(int(t, 16), ratio))
    other = next(t for t in ids if not sampled(int(t, 16), ratio))
    with tracer.span("vendor.submit", chosen):
        with pytest.raises(ValueError), tracer.span("settle", other):
            raise ValueError("refused")
        with tracer.span("inner", chosen):
            pass
    (failed,) = read_spans(path, other)
    assert failed["parent_span_id"] == f"{root_span_id(other):016x}"
    spans = {s["name"]: s for s in read_spans(path, chosen)}
    assert spans["inner"]["parent_span_id"] == spans["vendor.submit"]["span_id"]


def test_spans_leave_in_batches_not_as_each_one_ends(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    batches = BatchSpanProcessor(JsonLinesExporter(path), schedule_delay_millis=60_000)
    tracer = JobTracer("gateway-0", make_provider(batches))
    trace_id = new_trace_id(RNG)
    for _ in range(3):
        with tracer.span("dispatch", trace_id):
            pass
    assert not path.exists()  # nothing written on the caller's path
    assert batches.force_flush(10_000)
    assert [s["name"] for s in read_spans(path, trace_id)] == ["dispatch"] * 3
    batches.shutdown()


@pytest.fixture
async def otlp_collector() -> AsyncIterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """A real HTTP server taking OTLP/HTTP protobuf posts, as a collector would."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    await runner.cleanup()


async def test_spans_go_over_otlp_when_an_endpoint_is_set(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    otlp_collector: tuple[str, list[ExportTraceServiceRequest]],
) -> None:
    endpoint, received = otlp_collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    every_job = TracingConfig(sample_ratio=1.0)
    config = load_config(ROOT_CONFIG).model_copy(update={"tracing": every_job})
    try:
        tracer = tracer_for("gateway-0", config)
        trace_id = new_trace_id(RNG)
        with tracer.root("submit", trace_id):
            pass
        # The batch exporter posts from its own thread, to the server on this loop.
        assert await asyncio.to_thread(tracer.provider.force_flush, 10_000)  # type: ignore[attr-defined]
    finally:
        await asyncio.to_thread(shutdown_tracing)
    spans = [
        span
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert [(s.name, s.trace_id.hex()) for s in spans] == [("submit", trace_id)]
    assert int.from_bytes(spans[0].span_id, "big") == root_span_id(trace_id)


@pytest.mark.ray
async def test_one_job_is_one_trace_across_actors_on_ray(tmp_path: Path, ray_session: Any) -> None:
    fast = {
        "vendors.fal": {"poll_interval": 0.3},
        "sweeper": {"interval": 1.0},
        "tracing": {"sample_ratio": 1.0, "export_interval": 0.2},
    }
    async with Testbed(tmp_path, profile="calm", overrides=fast) as tb:
        status, job = await tb.client.submit("flux-schnell", {"prompt": "a traced fox"})
        assert status == 202
        done = await tb.client.wait(job["id"], timeout=60)
        assert done["status"] == "completed"
        trace_id = done["trace_id"]
        path = tmp_path / "traces.jsonl"  # beside the ledger database
        spans: list[dict[str, Any]] = []
        for _ in range(100):  # the settle span ends just after the job; batches follow
            spans = read_spans(path, trace_id)
            if {s["name"] for s in spans} >= JOB_SPANS:
                break
            await asyncio.sleep(0.1)
    assert {s["name"] for s in spans} >= JOB_SPANS, spans
    assert_one_tree(spans, trace_id)
    actors = {s["name"]: s["actor"] for s in spans}
    assert actors["submit"].startswith("gateway-")
    assert actors["dispatch"].startswith("gateway-")
    assert {actors[n] for n in ("vendor.submit", "vendor.wait", "download", "settle")} == {
        "processor-fal"
    }
    assert all(s["attributes"]["jobline.job_id"] == job["id"] for s in spans)
