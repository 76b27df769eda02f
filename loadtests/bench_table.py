"""Issue 16's table alone, several times, as medians: every row next to its floor.

``make bench`` prints the table once at its end, after every other benchmark. This
runs only what the table needs (the ledger against raw SQLite, the runtime against its
baselines, the CPU per job against the bare floor), ``--runs`` times in a row, and
prints each row's median with the spread (lowest to highest) and the load average, so a
change can be judged in one sitting:

    .venv/bin/python -m loadtests.bench_table --runs 3
    .venv/bin/python -m loadtests.bench_table --runs 3 --json results/after.json
    .venv/bin/python -m loadtests.bench_table --runs 3 --only ledger

``--only ledger`` leaves out the accepts and status reads (the gateway's rows): the
ledger's and the processors' rows alone, a minute sooner.

Every ratio is jobline against a floor measured in the same run; on a shared machine
compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One measure: jobline's figure, the floor's, and jobline / floor."""

    measure: str
    jobline: float
    floor: float
    unit: str = ""

    @property
    def ratio(self) -> float:
        return self.jobline / self.floor if self.floor else float("inf")


def rows(results: dict[str, Any]) -> list[Row]:
    """The table's rows from one run's results (keys as ``make bench`` saves them); a run
    without the accepts and status reads (``--only ledger``) has no rows of theirs."""
    cpu = results["cpu"]["median"] if "median" in results["cpu"] else results["cpu"]
    steady, burst, floor = cpu["steady"], cpu["burst"], cpu["floor"]
    u, o, ledger = results["utilization"], results["overhead"], results["ledger"]
    by_steady = steady["by_process_ms_per_job"]
    table = [
        Row(
            "CPU ms/job, steady (all processes)",
            steady["cpu_ms_per_job"],
            steady["floor_ms_per_job"],
            "ms",
        ),
        Row("CPU ms/job, backlog burst", burst["cpu_ms_per_job"], burst["floor_ms_per_job"], "ms"),
        Row(
            "  of which gateways, steady",
            _sum_of(by_steady, "actor: gateway"),
            steady["floor_ms_per_job"],
            "ms",
        ),
        Row(
            "  of which processors, steady",
            _sum_of(by_steady, "actor: processor"),
            steady["floor_ms_per_job"],
            "ms",
        ),
        Row(
            "  of which Ray's own processes, steady",
            _sum_of(by_steady, "ray: "),
            steady["floor_ms_per_job"],
            "ms",
        ),
        Row(
            "ledger actor CPU ms/job, steady",
            steady["ledger_ms_per_job"],
            floor["ledger_floor_ms_per_job"],
            "ms",
        ),
        Row(
            "ledger actor CPU ms/job, burst",
            burst["ledger_ms_per_job"],
            floor["ledger_floor_ms_per_job"],
            "ms",
        ),
        Row(
            "ledger actor ceiling, jobs/s (burst)",
            burst["ledger_ceiling_jobs_per_s"],
            floor["ledger_floor_jobs_per_s"],
            "/s",
        ),
    ]
    if "accepts" in results:
        table += gateway_rows(results)
    return [
        *table,
        Row("end-to-end p99 s vs the fake directly", o["jobline"]["p99_s"],
            o["direct"]["p99_s"], "s"),
        Row("vendor-slot utilization vs Σ limit/latency", u["completed_per_s"],
            u["bound_per_s"], "/s"),
        Row("ledger durable ops/s vs raw SQLite rows/s", ledger["ledger_ops_per_s"],
            ledger["raw_rows_per_s"], "/s"),
        *([Row("  the same per CPU second", ledger["ledger_ops_per_cpu_s"],
               ledger["raw_rows_per_cpu_s"], "/s")] if "cpu_ratio" in ledger else []),
    ]  # fmt: skip


def gateway_rows(results: dict[str, Any]) -> list[Row]:
    """The gateway's rows: accepts and status reads against the bare aiohttp endpoint."""
    a, r, live = results["accepts"], results["status_reads"], results["status_reads_live"]
    table = [
        Row("accepts/s vs bare aiohttp", a["jobline_per_s"], a["bare_per_s"], "/s"),
        Row("status reads/s, ended jobs, vs bare", r["jobline_per_s"], r["bare_per_s"], "/s"),
        Row("status reads/s, live jobs, vs bare", live["jobline_per_s"], live["bare_per_s"],
            "/s"),
    ]  # fmt: skip
    if "jobline_cpu_ms" in a:  # saved results from before the gateways' CPU was measured
        table += [
            Row("  gateway CPU ms per accept vs bare", a["jobline_cpu_ms"], a["bare_cpu_ms"],
                "ms"),
            Row("  gateway CPU ms per read, ended jobs", r["jobline_cpu_ms"], r["bare_cpu_ms"],
                "ms"),
            Row("  gateway CPU ms per read, live jobs", live["jobline_cpu_ms"],
                live["bare_cpu_ms"], "ms"),
        ]  # fmt: skip
    return table


def _sum_of(by_process: dict[str, float], prefix: str) -> float:
    return sum(ms for label, ms in by_process.items() if label.startswith(prefix))


def medians(runs: list[list[Row]]) -> list[tuple[Row, float, float]]:
    """Per measure: (a row of the medians of jobline, floor, and the median ratio as
    jobline / floor), the lowest and the highest ratio of the runs."""
    table = []
    for same in zip(*runs, strict=True):
        ratios = [row.ratio for row in same]
        jobline = statistics.median(row.jobline for row in same)
        median_ratio = statistics.median(ratios)
        floor = jobline / median_ratio if median_ratio else 0.0
        table.append((Row(same[0].measure, jobline, floor, same[0].unit), min(ratios), max(ratios)))
    return table


def render(table: list[tuple[Row, float, float]], runs: int, load: list[float]) -> str:
    def figure(value: float, unit: str) -> str:
        if unit == "ms":
            return f"{value:.2f} ms" if value >= 0.1 else f"{value:.3f} ms"
        if unit == "s":
            return f"{value:.3f} s"
        return f"{value:,.1f}/s" if value < 100 else f"{value:,.0f}/s"

    header = ("measure", "jobline", "floor", "ratio", f"range of {runs}")
    lines = [
        (row.measure, figure(row.jobline, row.unit), figure(row.floor, row.unit),
         f"{row.ratio:.3f}", f"{low:.3f}..{high:.3f}")
        for row, low, high in table
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(5)]
    out = [
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip()
        for line in [header, *lines]
    ]
    spread = ", ".join(f"{value:.1f}" for value in load)
    out.append(f"  medians of {runs} run{'s' if runs > 1 else ''}; load average per run: {spread}")
    return "\n".join(out)


def measure_once(quick: bool, only: str | None = None) -> dict[str, Any]:
    """One run of everything the table needs (``only``: "ledger", without the accepts and
    reads; "gateway", only them)."""
    from loadtests import bench_cpu, bench_ledger, bench_runtime

    results: dict[str, Any] = {}
    if only == "gateway":
        results.update(asyncio.run(bench_runtime.run_gateway(seconds=2.0 if quick else 3.0)))
        results["load_average"] = os.getloadavg()[0]
        return results
    http = only is None
    results["ledger"] = bench_ledger.run(jobs=2_000 if quick else 5_000, repeats=1)
    results.update(asyncio.run(bench_runtime.run(quick=True, http=http)))
    seconds, burst = (6.0, 150) if quick else (10.0, 300)
    results["cpu"] = asyncio.run(bench_cpu.measure(seconds=seconds, burst=burst))
    results["load_average"] = os.getloadavg()[0]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_table", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="shorter windows (a smoke test)")
    parser.add_argument("--json", type=Path, help="also save every run's results here")
    parser.add_argument(
        "--only",
        choices=["ledger", "gateway"],
        help="ledger: the ledger's and processors' rows (no accepts or status reads); "
        "gateway: only the accepts and status reads (~1 min a run)",
    )
    args = parser.parse_args(argv)
    each: list[dict[str, Any]] = []
    for n in range(args.runs):
        started = time.monotonic()
        each.append(measure_once(args.quick, args.only))
        took = time.monotonic() - started
        print(f"  run {n + 1}/{args.runs}: {took:.0f} s, load {each[-1]['load_average']:.1f}",
              flush=True)  # fmt: skip
    table = medians([gateway_rows(r) if args.only == "gateway" else rows(r) for r in each])
    print(render(table, args.runs, [r["load_average"] for r in each]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(each, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
