"""The simulator in ``make bench``: how fast it runs, and whether it tells the truth.

- speed: ``jobs`` jobs of the flaky profile through ``jobline simulate``: simulated jobs
  per wall second, and virtual seconds per wall second (the speed-up);
- agreement: the same traffic (the same arrival times and models, drawn from one seed)
  and the same profile, once through the simulator and once through jobline on a local
  Ray with the HTTP fake vendors, at a load the real runtime carries comfortably: both
  runs' throughput, p50 and p99 latency and vendor utilization, and their ratios. The
  fakes draw each task's fate in creation order from the same seeded stream in both
  hosts, so the two runs see the same vendors; what differs is real time (HTTP, Ray
  calls, the event loop's own delays) against virtual time.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.sim.report import percentile
from loadtests.sim.run import SimSettings, simulate
from loadtests.sim.traffic import Arrival, Traffic, arrivals
from loadtests.testbed import TERMINAL, Testbed
from runtime.config import JoblineConfig, load_config
from vendors_fake.profile import FaultProfile, merge_profile, preset

ROOT = Path(__file__).resolve().parent.parent
SEED = 7
SAMPLE_EVERY = 0.25  # seconds between two in-flight samples of the real fakes


def agreement_profile() -> FaultProfile:
    """A calm vendor with tasks of 1.5 to 3 s: long enough that a few ms of HTTP and Ray
    per step are small next to it, as they are next to real generation times."""
    return merge_profile(
        preset("calm"),
        {
            "queue_delay": {"kind": "uniform", "low": 0.1, "high": 0.5},
            "run_time": {"kind": "uniform", "low": 1.5, "high": 3.0},
        },
    )


def agreement_traffic(duration: float, rate: float) -> Traffic:
    return Traffic(rate=rate, duration=duration, accounts=1, cancel=0.0, repeat=0.0)


# --- speed -------------------------------------------------------------------------------


def speed(config: JoblineConfig, jobs: int, rate: float = 2.0) -> dict[str, Any]:
    settings = SimSettings(config, preset("flaky"), Traffic(rate=rate, jobs=jobs), seed=SEED)
    cpu = time.process_time()
    result = simulate(settings)
    cpu = time.process_time() - cpu  # what the run costs, whatever else the machine runs
    return {
        "jobs": len(result.jobs),
        "profile": "flaky",
        "rate": rate,
        "virtual_seconds": round(result.virtual_seconds, 1),
        "wall_seconds": round(result.wall_seconds, 2),
        "jobs_per_wall_second": round(len(result.jobs) / result.wall_seconds, 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_seconds_per_1000_jobs": round(cpu / len(result.jobs) * 1000, 3),
        "jobs_per_cpu_second": round(len(result.jobs) / cpu, 1),
        "speed_up": round(result.virtual_seconds / result.wall_seconds, 1),
        "invariants_held": result.ok,
        "trace_hash": result.trace_hash,
    }


# --- agreement ---------------------------------------------------------------------------


def _measures(
    ended: list[tuple[float, float, str]],  # (opened, ended, status) in seconds from start
    in_flight: dict[str, list[float]],
    limits: dict[str, int],
) -> dict[str, Any]:
    completed = [(o, e) for o, e, status in ended if status == "completed"]
    latencies = [e - o for o, e in completed]
    span = max(e for _, e, _ in ended) - min(o for o, _, _ in ended) if ended else 0.0
    return {
        "jobs": len(ended),
        "completed": len(completed),
        "throughput_per_s": round(len(completed) / span, 3) if span else None,
        "p50_s": round(percentile(latencies, 0.5) or 0.0, 3),
        "p99_s": round(percentile(latencies, 0.99) or 0.0, 3),
        "utilization": {
            vendor: round(sum(values) / len(values) / limits[vendor], 3) if values else 0.0
            for vendor, values in in_flight.items()
        },
    }


def simulated(config: JoblineConfig, traffic: Traffic) -> dict[str, Any]:
    result = simulate(SimSettings(config, agreement_profile(), traffic, seed=SEED))
    ended = [
        (job.opened_at, job.ended_at, job.status.value)
        for job in result.jobs
        if job.ended_at is not None
    ]
    last = max((e for _, e, _ in ended), default=0.0)
    in_flight = {
        vendor: [float(s.vendors[vendor][0]) for s in result.samples if s.t <= last]
        for vendor in config.vendors
    }
    limits = {name: vendor.concurrency for name, vendor in config.vendors.items()}
    return {**_measures(ended, in_flight, limits), "wall_seconds": round(result.wall_seconds, 2)}


async def real(data: Path, traffic: Traffic) -> dict[str, Any]:
    """The same arrivals through jobline on a local Ray, with the HTTP fakes."""
    bed = Testbed(
        data,
        profile=agreement_profile(),
        seed=SEED,
        credits=10**9,
        fake_limit=10_000,  # count, do not enforce (as the simulator's fakes)
    )
    async with bed as tb:
        plan = list(arrivals(traffic, tb.config, random.Random(f"{SEED}:traffic")))
        samples: dict[str, list[float]] = {vendor: [] for vendor in tb.config.vendors}
        stop = asyncio.Event()
        started = time.time()

        async def sample() -> None:
            while not stop.is_set():
                for vendor in samples:
                    samples[vendor].append(float(tb.fakes[vendor].core.stats.in_flight))
                await asyncio.sleep(SAMPLE_EVERY)

        async def submit(arrival: Arrival) -> None:
            await asyncio.sleep(max(0.0, started + arrival.at - time.time()))
            status, body = await tb.client.submit(
                arrival.model, dict(arrival.input), key=f"bench-{arrival.index}"
            )
            if status != 202:
                raise RuntimeError(f"submit {arrival.index}: {status} {body}")

        sampler = asyncio.ensure_future(sample())
        await asyncio.gather(*(submit(arrival) for arrival in plan))
        await _wait_quiet(tb, timeout=(traffic.duration or 60.0) + 120.0)
        stop.set()
        await sampler
        ended = _ledger_jobs(tb.config.storage.database, started)
        last = max((e for _, e, _ in ended), default=0.0)
        kept = int(last / SAMPLE_EVERY) + 1
        in_flight = {vendor: values[:kept] for vendor, values in samples.items()}
        limits = {name: vendor.concurrency for name, vendor in tb.config.vendors.items()}
        return _measures(ended, in_flight, limits)


async def _wait_quiet(tb: Testbed, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts: dict[str, int] = await tb.call("ledger", "counts")
        if all(n == 0 for status, n in counts.items() if status not in TERMINAL):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still open: {counts}")
        await asyncio.sleep(0.25)


def _ledger_jobs(db: Path, started: float) -> list[tuple[float, float, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT created_at, updated_at, status FROM jobs").fetchall()
    return [(c - started, u - started, s) for c, u, s in rows]


def ratios(sim: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    return {
        "throughput": ratio(sim["throughput_per_s"], live["throughput_per_s"]),
        "p50": ratio(sim["p50_s"], live["p50_s"]),
        "p99": ratio(sim["p99_s"], live["p99_s"]),
        "utilization": {
            v: ratio(sim["utilization"][v], live["utilization"][v]) for v in sim["utilization"]
        },
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    config = load_config(ROOT / "jobline.toml")
    results: dict[str, Any] = {"speed": speed(config, jobs=2_000 if quick else 20_000)}
    traffic = agreement_traffic(duration=30.0 if quick else 90.0, rate=3.0)
    results["agreement"] = {"simulated": simulated(config, traffic)}
    with tempfile.TemporaryDirectory(prefix="jobline-bench-sim-") as data:
        results["agreement"]["real"] = asyncio.run(real(Path(data), traffic))
    results["agreement"]["ratio_sim_over_real"] = ratios(
        results["agreement"]["simulated"], results["agreement"]["real"]
    )
    results["agreement"]["traffic"] = traffic.model_dump(mode="json")
    return results


def render(results: dict[str, Any]) -> str:
    s = results["speed"]
    lines = [
        f"  simulator: {s['jobs']} {s['profile']} jobs at {s['rate']}/s in {s['wall_seconds']} "
        f"wall s: {s['jobs_per_wall_second']} jobs/wall s, {s['cpu_seconds']} CPU s "
        f"({s['cpu_seconds_per_1000_jobs']} s per 1,000 jobs), "
        f"{s['virtual_seconds']} virtual s (speed-up x{s['speed_up']}), "
        f"invariants {'held' if s['invariants_held'] else 'BROKEN'}",
        "",
        "  same traffic, same profile      throughput   p50      p99      utilization",
    ]
    agreement = results["agreement"]
    for name in ("simulated", "real", "ratio_sim_over_real"):
        row = agreement[name]
        util = "  ".join(f"{v} {u}" for v, u in row["utilization"].items())
        if name == "ratio_sim_over_real":
            lines.append(
                f"    {'simulated / real':<28} {row['throughput']!s:>8}   {row['p50']!s:>6}   "
                f"{row['p99']!s:>6}   {util}"
            )
        else:
            lines.append(
                f"    {name:<28} {row['throughput_per_s']!s:>7}/s  {row['p50_s']:>6}s  "
                f"{row['p99_s']:>6}s  {util}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_sim", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    outcome = run(quick=args.quick)
    print(render(outcome))
    print(json.dumps(outcome, indent=2))
