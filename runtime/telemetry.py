"""Structured logs, trace ids and Prometheus metrics.

Metrics: every actor owns a ``Metrics`` object with its own registry and an ``actor``
label value (``gateway-0``, ``processor-fal``, ``sweeper``, ``ledger``). The gateway's
``/metrics`` asks every actor for ``Metrics.collect()`` (plain picklable values) in one
round and renders them together, so one scrape of any gateway replica sees the whole
runtime, on one node or many. Each series carries its actor's label, so a restarted
actor's counters reset on their own series, as Prometheus expects.

Logs: one JSON object per line on stderr (Ray keeps each worker's stderr in its log
directory) and, when ``[logging] file`` is set, appended to that file: time, level, the
role that wrote it (``gateway-0``, ``processor-fal``, ``ledger``, ``sweeper``, ``serve``),
component, and job id / trace id when there is a job. A few lines are *notices*, what
an operator watching ``jobline serve`` wants to see (roles ready, circuits opening and
closing, jobs failing, every warning and error): ``is_notice`` picks them and
``readable`` prints one as a line of text.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import random
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
TRACE_HEADER = "X-Jobline-Trace-Id"


def new_trace_id(rng: random.Random) -> str:
    """A W3C-compatible 128-bit trace id, as 32 lowercase hex digits (never all zeros)."""
    return f"{rng.getrandbits(128) or 1:032x}"


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


# --- logs -------------------------------------------------------------------------------

# ``json.dumps(line, default=str)``, with one encoder for every line (``dumps`` builds
# an encoder per call when given ``default``).
_encode_line = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    FIELDS = ("job_id", "trace_id", "vendor", "account_id", "attempt", "task_id", "error")

    def __init__(self, role: str | None = None) -> None:
        super().__init__()
        self.role = role

    def as_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        line: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname.lower()}
        if self.role is not None:
            line["role"] = self.role
        line["component"] = record.name.removeprefix("jobline.")
        line["msg"] = record.getMessage()
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if is_notice(record):
            line["notice"] = True
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return line

    def format(self, record: logging.LogRecord) -> str:
        return _encode_line(self.as_dict(record))


def is_notice(record: logging.LogRecord) -> bool:
    """A line for the operator's terminal: every warning and error, and the info lines
    logged with ``extra={"notice": True}`` (a role ready, a circuit closing, ...)."""
    return record.levelno >= logging.WARNING or bool(getattr(record, "notice", False))


class ReadableFormatter(logging.Formatter):
    """A terminal's view of a JSON line: ``readable(JsonFormatter.as_dict(record))``."""

    def __init__(self, json_formatter: JsonFormatter) -> None:
        super().__init__()
        self.json = json_formatter

    def format(self, record: logging.LogRecord) -> str:
        return readable(self.json.as_dict(record))


def configure_logging(
    level: str = "INFO",
    *,
    role: str | None = None,
    file: Path | None = None,
    readable_stderr: bool = False,
) -> JsonFormatter:
    """Send jobline's logs to stderr (JSON lines, or text with ``readable_stderr``), and
    to ``file`` if given, as JSON lines naming ``role``. Calling it again replaces the
    role, the level and the file."""
    root = logging.getLogger("jobline")
    root.setLevel(level.upper())
    root.propagate = False
    for handler in [h for h in root.handlers if getattr(h, "_jobline", False)]:
        root.removeHandler(handler)
        handler.close()
    formatter = JsonFormatter(role)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(ReadableFormatter(formatter) if readable_stderr else formatter)
    handlers: list[logging.Handler] = [stream]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        # Reopened when logrotate moves it; every role of a node appends whole lines.
        appender = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        appender.setFormatter(formatter)
        handlers.append(appender)
    for handler in handlers:
        handler._jobline = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    return formatter


def readable(line: dict[str, Any]) -> str:
    """A JSON log line as one line of text for a terminal:
    ``12:03:04 processor-fal  WARNING job failed (job j_1, vendor fal): 422 rejected``."""
    stamp = time.strftime("%H:%M:%S", time.localtime(float(line.get("ts", 0))))
    level = str(line.get("level", "info"))
    mark = "" if level == "info" else f"{level.upper()} "
    context = ", ".join(
        f"{name.removesuffix('_id')} {line[name]}"
        for name in ("job_id", "vendor", "account_id")
        if line.get(name)
    )
    text = str(line.get("msg", ""))
    if context:
        text += f" ({context})"
    if line.get("error"):
        text += f": {line['error']}"
    return f"{stamp} {line.get('role') or line.get('component', '?'):<14} {mark}{text}"


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"jobline.{component}")


# --- metrics ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str  # counter, gauge, histogram
    help: str
    samples: tuple[Sample, ...]


class Metrics:
    """Every metric jobline exports (DESIGN §8), in one registry per actor."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_submitted = Counter(
            "jobline_jobs_submitted", "Jobs accepted (202) by the gateway", ["model"], registry=r
        )
        self.jobs = Counter(
            "jobline_jobs",
            "Jobs that reached a terminal status",
            ["model", "vendor", "status"],
            registry=r,
        )
        self.job_duration = Histogram(
            "jobline_job_duration_seconds",
            "End-to-end job time, submit to terminal status",
            ["model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.vendor_inflight = Gauge(
            "jobline_vendor_inflight",
            "Vendor tasks in flight (slots taken)",
            ["vendor"],
            registry=r,
        )
        self.vendor_limit = Gauge(
            "jobline_vendor_limit", "Configured vendor concurrency limit", ["vendor"], registry=r
        )
        self.queue_depth = Gauge(
            "jobline_queue_depth", "Jobs waiting for a vendor slot", ["vendor"], registry=r
        )
        self.vendor_requests = Counter(
            "jobline_vendor_requests",
            "Requests to vendors by operation and outcome",
            ["vendor", "op", "outcome"],
            registry=r,
        )
        self.vendor_request_duration = Histogram(
            "jobline_vendor_request_duration_seconds",
            "Vendor request latency",
            ["vendor", "op"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "jobline_retries",
            "Attempts retried after a transient error",
            ["vendor", "reason"],
            registry=r,
        )
        self.failovers = Counter(
            "jobline_failovers",
            "Jobs handed to the next vendor of their route",
            ["from_vendor", "to_vendor"],
            registry=r,
        )
        self.vendor_refusals = Counter(
            "jobline_vendor_refusals",
            "Vendor-wide refusals (the account or the model refused: 401, 402, 403, 404), "
            "each opening the vendor's circuit for circuit.refused_cooldown",
            ["vendor", "reason"],
            registry=r,
        )
        self.vendor_wasted_tasks = Counter(
            "jobline_vendor_wasted_tasks",
            "Billable vendor tasks whose output did not become the result of a completed "
            "job, by reason (late_orphan: a submit in doubt whose task showed itself after "
            "the job moved on)",
            ["vendor", "reason"],
            registry=r,
        )
        self.vendor_cost = Counter(
            "jobline_vendor_cost",
            "What vendor tasks cost the operator, in the currency of models.X.route[n].cost, "
            "by how the billed attempt ended (succeeded; wasted: paid for, thrown away; "
            "failed, rejected, timed_out, canceled: its job was retried or refunded)",
            ["vendor", "model", "outcome"],
            registry=r,
        )
        self.vendor_billed_tasks = Counter(
            "jobline_vendor_billed_tasks",
            "Vendor tasks billed to the operator (seen running or ended), by outcome",
            ["vendor", "outcome"],
            registry=r,
        )
        self.input_rejections = Counter(
            "jobline_input_rejections",
            "Jobs failed because the vendor rejected their own input (content policy, "
            "invalid input): refunded less the [refunds] fee, counted by the throttle",
            ["model"],
            registry=r,
        )
        self.config_errors = Counter(
            "jobline_config_errors",
            "Jobs failed because jobline.toml names a vendor model that cannot exist there "
            "(models.X.route[].model): refunded in full; fix the route",
            ["vendor", "model"],
            registry=r,
        )
        self.submits_in_doubt = Counter(
            "jobline_submits_in_doubt",
            "Submits whose answer was lost, by how they were resolved (adopted: the task "
            "was found and used; not_created; orphaned: the job moved on without it)",
            ["vendor", "outcome"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "jobline_circuit_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ["vendor"],
            registry=r,
        )
        self.webhooks_arriving = Gauge(
            "jobline_vendor_webhooks_arriving",
            "1 while the vendor's webhooks arrive (its last 10 task ends each had theirs: a "
            "task's polls before fallback_poll_interval are left out), else 0",
            ["vendor"],
            registry=r,
        )
        self.webhooks_lost = Counter(
            "jobline_vendor_webhooks_lost",
            "Task ends a poll saw before their webhook (no webhook within 1.5 s, or any "
            "while polls were left out): lost or late webhooks, or a [gateway] public_url "
            "the vendor cannot reach",
            ["vendor"],
            registry=r,
        )
        self.dead_letters = Counter(
            "jobline_dead_letters", "Jobs dead-lettered (failed for good)", ["model"], registry=r
        )
        self.dead_letters_open = Gauge(
            "jobline_dead_letters_open", "Dead letters not yet re-driven", registry=r
        )
        self.webhooks = Counter(
            "jobline_webhooks",
            "Vendor webhooks received, by result",
            ["vendor", "result"],
            registry=r,
        )
        self.webhook_rejections = Counter(
            "jobline_webhook_rejections",
            "Webhooks rejected, by reason",
            ["vendor", "reason"],
            registry=r,
        )
        self.credits = Counter(
            "jobline_credits",
            "Credits moved, by kind (held, captured, released; fee: the part of captured "
            "kept as fees on jobs rejected for their input)",
            ["kind"],
            registry=r,
        )
        self.sweeper_recoveries = Counter(
            "jobline_sweeper_recoveries", "Jobs the sweeper repaired, by kind", ["kind"], registry=r
        )
        self.jobs_by_status = Gauge(
            "jobline_jobs_current", "Jobs in the ledger by status", ["status"], registry=r
        )
        self.http_requests = Counter(
            "jobline_http_requests", "HTTP requests served", ["route", "code"], registry=r
        )
        self.http_duration = Histogram(
            "jobline_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.ledger_batch_size = Histogram(
            "jobline_ledger_batch_size",
            "Operations per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.invariant_violations = Gauge(
            "jobline_invariant_violations",
            "Violations found by the last invariant check",
            registry=r,
        )
        self.up = Gauge("jobline_actor_up", "1 while the actor runs", registry=r)
        self.up.set(1)

    def collect(self) -> list[Family]:
        """This actor's metrics as plain values, labelled with the actor's name."""
        return list(_families(self.registry.collect(), self.actor))


def _families(metrics: Iterable[Metric], actor: str) -> Iterable[Family]:
    for metric in metrics:
        samples = tuple(
            Sample(s.name, (("actor", actor), *sorted(s.labels.items())), s.value)
            for s in metric.samples
            if not s.name.endswith("_created")
        )
        if samples:
            yield Family(metric.name, metric.type, metric.documentation, samples)


class _Merged:
    def __init__(self, families: Iterable[Family]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for family in self.families:
            metric = merged.get(family.name)
            if metric is None:
                metric = merged[family.name] = Metric(family.name, family.help, family.kind)
            for s in family.samples:
                metric.add_sample(s.name, dict(s.labels), s.value)
        return list(merged.values())


def render(families: Iterable[Family]) -> bytes:
    """Prometheus text exposition of many actors' families, one HELP/TYPE per name."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families))
    return generate_latest(registry)


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
