"""The capacity report of a simulation run: one screen, a JSON file and a picture.

What it answers, for the traffic, profile and config of the run:

- throughput: jobs completed per (virtual) second, overall and per model;
- latency: p50, p95 and p99 from ``202`` to the end, per model (completed jobs);
- queue depth over time: jobs open in jobline, and each processor's queue;
- vendor utilization over time: the tasks in flight as each vendor counted them against
  its limit, and Little's bound (limit / mean task time: the most tasks per second the
  vendor can finish) next to what it finished;
- retries, failovers, refunds (releases), dead letters, deadline expiries;
- vendor spend and waste: billable tasks (and task-seconds) per vendor, those whose
  outputs were delivered, and the rest (wasted: paid for, never delivered);
- whether the invariants held, and the run's trace hash, speed and speed-up.

The picture (PNG, matplotlib) has three panels sharing the time axis: queue depth,
in flight against the limit per vendor, and latency (p50 and p95 of the jobs that ended
in each bucket of time).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.sim.run import SimResult
from loadtests.sim.watch import JobRecord

MAX_POINTS = 600  # samples kept per series in the JSON (bucketed by time)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def build_report(result: SimResult) -> dict[str, Any]:
    settings = result.settings
    config = settings.config
    jobs = result.jobs
    counts = result.counts
    by_status: dict[str, int] = defaultdict(int)
    latencies: dict[str, list[float]] = defaultdict(list)
    for job in jobs:
        by_status[job.status.value] += 1
        if job.status.value == "completed" and job.ended_at is not None:
            latencies[job.model].append(job.ended_at - job.opened_at)
    span = _active_span(jobs)
    completed = by_status.get("completed", 0)
    per_model = {
        model: {
            "completed": len(values),
            "throughput_per_s": _rounded(len(values) / span if span else None),
            "latency_s": {
                "p50": _rounded(percentile(values, 0.50)),
                "p95": _rounded(percentile(values, 0.95)),
                "p99": _rounded(percentile(values, 0.99)),
                "mean": _rounded(sum(values) / len(values)),
            },
        }
        for model, values in sorted(latencies.items())
    }
    every = [value for values in latencies.values() for value in values]
    wall = result.wall_seconds
    return {
        "run": {
            "seed": result.seed,
            "trace_hash": result.trace_hash,
            "events": result.events,
            "virtual_seconds": round(result.virtual_seconds, 3),
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(result.cpu_seconds, 3),
            "cpu_seconds_per_1000_jobs": _rounded(
                result.cpu_seconds / len(jobs) * 1000 if jobs else None
            ),
            "speed_up": _rounded(result.virtual_seconds / wall if wall else None, 1),
            "jobs_per_wall_second": _rounded(len(jobs) / wall if wall else None, 1),
            "traffic": settings.traffic.model_dump(mode="json"),
            "profile": settings.profile.description or "custom",
            "faults": [str(fault) for fault in result.faults],
        },
        "invariants": {
            "held": result.ok,
            "violations": [str(v) for v in result.violations[:100]],
            "trace_before_first": result.context,
            "errors_logged_by_jobline": result.errors_logged,
            "exceptions_no_task_handled": result.unhandled,
        },
        "jobs": {
            "submitted": result.clients.submitted,
            "accepted": result.clients.accepted,
            "refused": {str(k): v for k, v in sorted(result.clients.refused.items())},
            "gave_up": result.clients.gave_up,
            "by_status": dict(sorted(by_status.items())),
            "repeated_submits": result.clients.repeats,
            "cancels_sent": result.clients.cancels,
        },
        "throughput": {
            "completed_per_s": _rounded(completed / span if span else None),
            "active_seconds": round(span, 3),
            "by_model": per_model,
        },
        "latency_s": {
            "p50": _rounded(percentile(every, 0.50)),
            "p95": _rounded(percentile(every, 0.95)),
            "p99": _rounded(percentile(every, 0.99)),
        },
        "work": {
            "attempts": counts.attempts,
            "retries": counts.retries,
            "failovers": counts.failovers,
            "refunds": counts.releases,
            "captures": counts.captures,
            "dead_letters": counts.dead_letters,
            "expired": counts.expired,
            "webhooks_recorded": counts.webhooks_recorded,
            "webhooks_duplicate": counts.webhooks_duplicate,
            "ledger_batches": counts.batches,
            "ledger_ops": counts.ops,
            "results_stored_bytes": result.results_bytes,
        },
        "vendors": {
            name: _vendor(result, name, summary, config.vendors[name].concurrency)
            for name, summary in result.vendors.items()
        },
        "series": _series(result),
    }


def _active_span(jobs: Sequence[JobRecord]) -> float:
    """From the first job opened to the last one ended."""
    ended = [job.ended_at for job in jobs if job.ended_at is not None]
    if not jobs or not ended:
        return 0.0
    return max(ended) - min(job.opened_at for job in jobs)


def _vendor(result: SimResult, name: str, summary: dict[str, Any], limit: int) -> dict[str, Any]:
    samples = [sample.vendors[name][0] for sample in result.samples]
    mean_in_flight = sum(samples) / len(samples) if samples else 0.0
    task_time = summary["task_seconds_mean"]
    bound = limit / task_time if task_time else None
    finished = summary["ended"] / result.virtual_seconds if result.virtual_seconds else 0.0
    return {
        "limit": limit,
        "max_in_flight": result.max_in_flight.get(name, 0),
        "mean_in_flight": round(mean_in_flight, 3),
        "utilization": round(mean_in_flight / limit, 3),
        "mean_task_seconds": _rounded(task_time),
        "littles_bound_tasks_per_s": _rounded(bound),
        "tasks_finished_per_s": round(finished, 3),
        **{key: value for key, value in summary.items() if key != "task_seconds_mean"},
    }


def _series(result: SimResult) -> dict[str, Any]:
    samples = result.samples
    step = max(1, math.ceil(len(samples) / MAX_POINTS))
    kept = samples[::step]
    vendors = sorted(result.vendors)
    return {
        "every_s": step,
        "t": [round(s.t, 3) for s in kept],
        "open_jobs": [s.open_jobs for s in kept],
        "ended_jobs": [s.ended for s in kept],
        "in_flight": {v: [s.vendors[v][0] for s in kept] for v in vendors},
        "queued": {v: [s.vendors[v][2] for s in kept] for v in vendors},
    }


def _latency_buckets(jobs: Sequence[JobRecord], width: float) -> tuple[list[float], ...]:
    buckets: dict[int, list[float]] = defaultdict(list)
    for job in jobs:
        if job.status.value == "completed" and job.ended_at is not None:
            buckets[int(job.ended_at // width)].append(job.ended_at - job.opened_at)
    keys = sorted(buckets)
    times = [(k + 0.5) * width for k in keys]
    p50 = [percentile(buckets[k], 0.5) or 0.0 for k in keys]
    p95 = [percentile(buckets[k], 0.95) or 0.0 for k in keys]
    return times, p50, p95


PICTURE_COLUMNS = 1000  # about the panels' width in pixels: a long run's series is thinned
# to each column's lowest and highest value (what a line drawn at full length shows there)


def envelope(t: Sequence[float], values: Sequence[float], columns: int) -> tuple[list[float], ...]:
    """``(t, values)`` thinned to at most ``2 * columns`` points: in each of ``columns``
    runs of consecutive samples, its lowest and highest value, in the order they came.
    A line through them covers, in each column, the same span as one through every
    sample; a series short enough is returned whole."""
    if len(values) <= 2 * columns:
        return list(t), list(values)
    step = math.ceil(len(values) / columns)
    times: list[float] = []
    kept: list[float] = []
    for start in range(0, len(values), step):
        run = range(start, min(start + step, len(values)))
        low = min(run, key=values.__getitem__)
        high = max(run, key=values.__getitem__)
        for i in sorted({low, high}):
            times.append(t[i])
            kept.append(values[i])
    return times, kept


def save_picture(result: SimResult, path: Path) -> None:
    """Queue depth, in flight against the limit, and latency over time (PNG).

    Drawn on a ``Figure`` of its own (no pyplot state), with fixed margins (a tight layout
    draws every label once more to measure it), each series thinned to what the panel's
    pixels can show (:func:`envelope`), and saved with light PNG compression: a picture of
    a long run costs about what one of a short run does."""
    from matplotlib.figure import Figure

    samples = result.samples
    t = [s.t for s in samples]
    config = result.settings.config
    fig = Figure(figsize=(11, 9))
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.06, top=0.92, hspace=0.28)
    queue, inflight, latency = fig.subplots(3, 1, sharex=True)

    def plot(axes: Any, values: Sequence[float], **style: Any) -> Any:
        return axes.plot(*envelope(t, values, PICTURE_COLUMNS), **style)

    plot(queue, [s.open_jobs for s in samples], label="open jobs (queued + processing)")
    for vendor in sorted(result.vendors):
        plot(queue, [s.vendors[vendor][2] for s in samples], label=f"{vendor} queue", lw=0.8)
    queue.set_ylabel("jobs")
    queue.set_title("Queue depth")
    queue.legend(loc="upper left", fontsize=8)
    for vendor in sorted(result.vendors):
        limit = config.vendors[vendor].concurrency
        line = plot(inflight, [s.vendors[vendor][0] for s in samples], lw=0.8, label=vendor)
        inflight.axhline(limit, color=line[0].get_color(), ls="--", lw=1, label=f"{vendor} limit")
    inflight.set_ylabel("tasks in flight")
    inflight.set_title("In flight at each vendor (as the vendor counts) against its limit")
    inflight.legend(loc="upper left", fontsize=8)
    width = max(1.0, (t[-1] if t else 1.0) / 120)
    times, p50, p95 = _latency_buckets(result.jobs, width)
    latency.plot(times, p50, label="p50")
    latency.plot(times, p95, label="p95")
    latency.set_ylabel("seconds")
    latency.set_xlabel("virtual time (s)")
    latency.set_title(f"Latency of completed jobs, by when they ended ({width:.0f} s buckets)")
    latency.legend(loc="upper left", fontsize=8)
    verdict = "invariants held" if result.ok else f"{len(result.violations)} violations"
    fig.suptitle(f"jobline simulate: seed {result.seed}, {len(result.jobs)} jobs, {verdict}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})


def save_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def render_text(report: dict[str, Any], process_cpu: float | None = None) -> str:
    """The one screen ``jobline simulate`` prints; ``process_cpu``: the CPU seconds the
    whole command took (start-up, the run, the report and its picture)."""
    run, jobs, work = report["run"], report["jobs"], report["work"]
    everything = "" if process_cpu is None else f"; {process_cpu:.1f} s with start-up and report"
    lines = [
        f"jobline simulate: seed {run['seed']}, {jobs['accepted']} jobs over "
        f"{run['virtual_seconds']:.0f} virtual s in {run['wall_seconds']:.1f} wall s "
        f"({run['jobs_per_wall_second']} jobs/s, speed-up x{run['speed_up']})",
        f"  CPU                    {run['cpu_seconds']:.1f} s for the run, "
        f"{run['cpu_seconds_per_1000_jobs']} s per 1,000 jobs{everything}",
        "",
        "  jobs by final status   "
        + "  ".join(f"{k} {v}" for k, v in jobs["by_status"].items())
        + (f"   refused {jobs['refused']}" if jobs["refused"] else ""),
        f"  throughput             {report['throughput']['completed_per_s']} completed/s",
    ]
    for model, row in report["throughput"]["by_model"].items():
        lat = row["latency_s"]
        lines.append(
            f"    {model:<20} {row['completed']:>7} done  p50 {lat['p50']}s  p95 {lat['p95']}s"
            f"  p99 {lat['p99']}s"
        )
    lines += [
        f"  retries {work['retries']}  failovers {work['failovers']}  refunds "
        f"{work['refunds']}  dead letters {work['dead_letters']}  expired {work['expired']}",
        "  vendors                in flight (max/limit)  utilization  Little's bound  "
        "finished/s  billable  wasted",
    ]
    for name, row in report["vendors"].items():
        lines.append(
            f"    {name:<20} {row['max_in_flight']:>5} / {row['limit']:<5}        "
            f"{row['utilization']:>6.0%}       {row['littles_bound_tasks_per_s']!s:>8}/s  "
            f"{row['tasks_finished_per_s']:>8}/s  {row['billable_tasks']:>8}  "
            f"{row['wasted_tasks']:>6}"
        )
    invariants = report["invariants"]
    lines.append(
        "  invariants I1-I6       "
        + ("all held" if invariants["held"] else f"VIOLATED: {invariants['violations'][0]}")
    )
    if invariants["errors_logged_by_jobline"]:
        lines.append(
            f"  errors jobline logged  {invariants['errors_logged_by_jobline']} (in the trace)"
        )
    if run["faults"]:
        lines.append(f"  faults                 {','.join(run['faults'])}")
    lines.append(f"  trace hash             {run['trace_hash']}  ({run['events']} events)")
    return "\n".join(lines)
