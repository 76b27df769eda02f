"""``make bench``: jobline's numbers next to what the machine could do, in one run.

Each benchmark measures jobline and its baseline side by side in the same
run (machines here are noisy: compare ratios, not absolute numbers), prints a table
and saves everything as JSON under ``results/bench-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from loadtests import (
    bench_cpu,
    bench_fake,
    bench_ledger,
    bench_runtime,
    bench_sim,
    bench_tenants,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}

    print("== ledger: durable operations/s vs raw batched SQLite inserts")
    jobs, repeats = (2_000, 1) if args.quick else (20_000, 3)
    results["ledger"] = bench_ledger.run(jobs=jobs, repeats=repeats)
    print(bench_ledger.render(results["ledger"]))

    print("\n== fake vendor: status polls/s one fake process sustains")
    seconds = 1.0 if args.quick else 5.0
    results["fake_vendor"] = bench_fake.bench_status_polls("replicate", seconds=seconds)
    print(json.dumps(results["fake_vendor"], indent=2))

    print("\n== jobline on local Ray vs its baselines (fake vendors: 1 s per task, webhooks on)")
    runtime = asyncio.run(bench_runtime.run(quick=args.quick))
    results.update(runtime)
    print(bench_runtime.render(runtime))

    print("\n== the simulator: its speed, and the same traffic simulated and run for real")
    results["simulator"] = bench_sim.run(quick=args.quick)
    print(bench_sim.render(results["simulator"]))

    print("\n== many tenants: hostile clients and bounded reads (jobline on local Ray)")
    results["tenants"] = asyncio.run(bench_tenants.run(quick=args.quick))
    print(bench_tenants.render(results["tenants"]))

    print("\n== CPU per completed job, by process, next to the floor (jobline on local Ray)")
    runs, seconds, burst = (1, 6.0, 150) if args.quick else (3, 12.0, 300)
    results["cpu"] = bench_cpu.run(runs, seconds=seconds, burst=burst)
    print(bench_cpu.render(results["cpu"]))

    print("\n== summary: each measure next to its floor, measured in this run (medians)")
    print(summary(results))

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nsaved {path}")
    return 0


def summary(results: dict[str, Any]) -> str:
    """The headline rows: jobline, its floor, the ratio (issue 16's table)."""
    cpu = results["cpu"]["median"]
    steady, burst, floor = cpu["steady"], cpu["burst"], cpu["floor"]
    u, o = results["utilization"], results["overhead"]
    a, r, ledger = results["accepts"], results["status_reads"], results["ledger"]
    live = results["status_reads_live"]
    rows = [
        ("CPU ms/job, steady (all processes)", f"{steady['cpu_ms_per_job']:.1f}",
         f"{steady['floor_ms_per_job']:.1f}", f"{steady['ratio_to_floor']:.1f}"),
        ("CPU ms/job, backlog burst", f"{burst['cpu_ms_per_job']:.1f}",
         f"{burst['floor_ms_per_job']:.1f}", f"{burst['ratio_to_floor']:.1f}"),
        ("ledger actor CPU ms/job, steady", f"{steady['ledger_ms_per_job']:.2f}",
         f"{floor['ledger_floor_ms_per_job']:.2f}",
         f"{steady['ledger_ms_per_job'] / floor['ledger_floor_ms_per_job']:.0f}"),
        ("ledger actor ceiling, jobs/s (burst)", f"{burst['ledger_ceiling_jobs_per_s']:,.0f}",
         f"{floor['ledger_floor_jobs_per_s']:,.0f}",
         f"{burst['ledger_ceiling_jobs_per_s'] / floor['ledger_floor_jobs_per_s']:.3f}"),
        ("accepts/s vs bare aiohttp", f"{a['jobline_per_s']:,.0f}", f"{a['bare_per_s']:,.0f}",
         f"{a['ratio']:.2f}"),
        ("status reads/s (ended jobs) vs bare", f"{r['jobline_per_s']:,.0f}",
         f"{r['bare_per_s']:,.0f}", f"{r['ratio']:.2f}"),
        ("status reads/s (live jobs) vs bare", f"{live['jobline_per_s']:,.0f}",
         f"{live['bare_per_s']:,.0f}", f"{live['ratio']:.2f}"),
        ("end-to-end p99 s vs the fake directly", f"{o['jobline']['p99_s']:.3f}",
         f"{o['direct']['p99_s']:.3f}", f"{o['p99_ratio']:.2f}"),
        ("vendor-slot utilization, jobs/s", f"{u['completed_per_s']:.1f}",
         f"{u['bound_per_s']:.1f}", f"{u['ratio']:.2f}"),
        ("ledger durable ops/s vs raw SQLite rows/s", f"{ledger['ledger_ops_per_s']:,.0f}",
         f"{ledger['raw_rows_per_s']:,.0f}", f"{ledger['ratio']:.2f}"),
    ]  # fmt: skip
    header = ("measure", "jobline", "floor", "ratio")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    return "\n".join(
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [header, *rows]
    )


if __name__ == "__main__":
    raise SystemExit(main())
