"""``make bench``: jobline's numbers next to what the machine could do, in one run.

Each benchmark measures jobline and its baseline side by side in the same
run (machines here are noisy: compare ratios, not absolute numbers), prints a table
and saves everything as JSON under ``results/bench-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from loadtests import (
    bench_cpu,
    bench_fake,
    bench_ledger,
    bench_runtime,
    bench_sim,
    bench_store,
    bench_table,
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

    print("\n== result store: CPU per stored output vs plain durable writes (in process)")
    outputs, repeats = (200, 1) if args.quick else (2_000, 3)
    results["result_store"] = bench_store.run(outputs=outputs, repeats=repeats)
    print(bench_store.render(results["result_store"]))

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
    """The headline rows: jobline, its floor, the ratio (issue 16's table;
    ``python -m loadtests.bench_table --runs 3`` prints them alone, as medians)."""
    table = bench_table.medians([bench_table.rows(results)])
    return bench_table.render(table, 1, [os.getloadavg()[0]])


if __name__ == "__main__":
    raise SystemExit(main())
