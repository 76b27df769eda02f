"""The whole runtime against its baselines, side by side in one run (``make bench``).

One Testbed (fake vendors enforcing their limits, every task taking exactly
``latency`` seconds, webhooks on, no faults; jobline on a local Ray) serves four
measurements, each next to what it could be:

- utilization: completed jobs/s while every vendor has a backlog, divided by the
  Little's-law bound ``sum(limit_v / latency_v)``; the fakes' highest in-flight count
  next to each limit.
- overhead: end-to-end latency (submit, poll every ``poll`` s, download) through jobline
  against the same client steps sent straight to the fake vendor with jobline's own
  vendor adapter, at the same offered rate (evenly spaced), in alternating blocks.
- accepts: durable ``POST /v1/jobs`` per second against a bare aiohttp endpoint (its
  own process, same load generator, same connections), in alternating rounds.
- status reads: ``GET /v1/jobs/{id}`` per second against the same bare endpoint, of
  completed jobs (a gateway answers an ended job from memory once it has read it ended)
  and of live ones (queued behind the accepts' backlog: a ledger read each time).

For the accepts and status reads it also gives the CPU each request cost the gateways (all
replicas' processes, from ``/proc``) next to what it cost the bare endpoint's process: the
request rate under a flood is set by the whole machine (the processors working off the
accepts' backlog share the two cores), the CPU per request by the gateway alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from loadtests.bench_cpu import cpu_seconds
from loadtests.bench_fake import get_requests, run_requests
from loadtests.testbed import TERMINAL, Testbed
from runtime.vendors import make_client
from vendors_fake.profile import FaultProfile, merge_profile, preset

ROOT = Path(__file__).resolve().parent.parent
FIRST_MODEL = {"fal": "flux-schnell", "replicate": "sdxl"}  # the model whose route starts there
OVERHEAD_MODEL = "flux-schnell"  # fal first
CONNECTIONS = 64
BLOCK_PAUSE = 1.5  # seconds between overhead blocks: the previous block's tasks end


def fixed_latency_profile(latency: float) -> FaultProfile:
    """Calm, with every task taking exactly ``latency`` seconds."""
    return merge_profile(
        preset("calm"),
        {
            "queue_delay": {"kind": "fixed", "seconds": 0.0},
            "run_time": {"kind": "fixed", "seconds": latency},
        },
    )


@contextlib.asynccontextmanager
async def testbed(data: Path, latency: float) -> Any:
    bed = Testbed(
        data,
        profile=fixed_latency_profile(latency),
        credits=10**12,
        fake_limit=None,  # the fakes enforce each vendor's limit and report the highest
        overrides={"gateway": {"max_jobs_in_flight_per_account": 10**9}},
    )
    async with bed as tb:
        yield tb


async def _gather_limited(calls: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def _submit(tb: Testbed, model: str, tag: str) -> str:
    status, job = await tb.client.submit(model, {"prompt": f"bench {tag} {uuid.uuid4().hex[:8]}"})
    if status != 202:
        raise RuntimeError(f"submit: {status} {job}")
    return str(job["id"])


async def wait_all_ended(tb: Testbed, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts: dict[str, int] = await tb.call("ledger", "counts")
        if all(n == 0 for status, n in counts.items() if status not in TERMINAL):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still open after {timeout:.0f}s: {counts}")
        await asyncio.sleep(0.5)


# --- utilization ------------------------------------------------------------------------


async def utilization(tb: Testbed, latency: float, warm: float, window: float) -> dict[str, Any]:
    """Saturate every vendor; completions per second in a window where all have backlog."""
    span = warm + window + 5.0  # each vendor keeps a backlog past the window's end
    calls: list[Callable[[], Awaitable[str]]] = []
    for vendor, model in FIRST_MODEL.items():
        n = math.ceil(tb.config.vendors[vendor].concurrency * span / latency)
        calls += [functools.partial(_submit, tb, model, f"{vendor}{i}") for i in range(n)]
    started = time.time()
    ids = await _gather_limited(calls, 32)
    submitted_in = time.time() - started
    await wait_all_ended(tb, timeout=span * 3 + 60)
    done = _completions(tb.config.storage.database, ids)
    lo, hi = started + warm, started + warm + window
    per_vendor = {}
    for vendor in FIRST_MODEL:
        limit = tb.config.vendors[vendor].concurrency
        times = sorted(at for v, at in done if v == vendor and lo <= at < hi)
        stats = tb.fake_stats(vendor)["tasks"]
        per_vendor[vendor] = {
            "completed_per_s": _slope(times),
            "completed_in_window": len(times),
            "bound_per_s": limit / latency,
            "limit": limit,
            "max_in_flight": stats["max_in_flight"],
        }
    rate = sum(v["completed_per_s"] for v in per_vendor.values())
    bound = sum(v["bound_per_s"] for v in per_vendor.values())
    return {
        "jobs": len(ids),
        "submitted_in_s": submitted_in,
        "window_s": window,
        "latency_s": latency,
        "completed_per_s": rate,
        "bound_per_s": bound,
        "ratio": rate / bound,
        "limits_held": all(v["max_in_flight"] <= v["limit"] for v in per_vendor.values()),
        "vendors": per_vendor,
    }


def _slope(times: list[float]) -> float:
    """Completions per second: the least-squares slope of the count against time.

    With a fixed latency the slots finish in waves, so a plain count over a window is
    off by up to one wave; the slope of the staircase is not.
    """
    if len(times) < 2:
        return 0.0
    counts = range(1, len(times) + 1)
    mean_t, mean_n = statistics.fmean(times), statistics.fmean(counts)
    covariance = sum((t - mean_t) * (n - mean_n) for t, n in zip(times, counts, strict=True))
    variance = sum((t - mean_t) ** 2 for t in times)
    return covariance / variance if variance > 0 else 0.0


def _completions(db: Path, ids: list[str]) -> list[tuple[str, float]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT vendor, updated_at FROM jobs WHERE status = 'completed' "
            "AND id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        ).fetchall()
    finally:
        conn.close()
    return [(str(vendor), float(at)) for vendor, at in rows]


# --- overhead ---------------------------------------------------------------------------


async def overhead(tb: Testbed, rate: float, jobs: int, poll: float) -> dict[str, Any]:
    """End-to-end latency through jobline and straight to the fake, same offered rate."""
    vendor = tb.config.models[OVERHEAD_MODEL].route[0]
    config = tb.config.vendors[vendor.vendor]
    client = make_client(config, config.api_key() or "", config.webhook_secret() or "")

    async def direct(i: int) -> float:
        started = time.perf_counter()
        trace = f"bench-direct-{i}"
        task_id = await client.submit(
            vendor.model,
            {"prompt": f"direct {i}"},
            job_id=trace,
            attempt=1,
            trace_id=trace,
            webhook_url=None,
        )
        while True:
            status = await client.status(vendor.model, task_id, trace_id=trace)
            if status.state.ended:
                break
            await asyncio.sleep(poll)
        if status.output_url is None:
            raise RuntimeError(f"direct task {task_id} ended {status}")
        await client.fetch_output(status.output_url, trace_id=trace)
        return time.perf_counter() - started

    async def through_jobline(i: int) -> float:
        started = time.perf_counter()
        job_id = await _submit(tb, OVERHEAD_MODEL, f"overhead {i}")
        while True:
            code, job = await tb.client.job(job_id)
            if code == 200 and job["status"] in TERMINAL:
                break
            await asyncio.sleep(poll)
        if job["status"] != "completed":
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        code, _ = await tb.client.request("GET", f"/v1/jobs/{job_id}/result")
        if code != 200:
            raise RuntimeError(f"result of {job_id}: {code}")
        return time.perf_counter() - started

    async def offered(one: Callable[[int], Awaitable[float]], first: int, n: int) -> list[float]:
        async def at(k: int) -> float:
            await asyncio.sleep(k / rate)
            return await one(first + k)

        return list(await asyncio.gather(*(at(k) for k in range(n))))

    samples: dict[str, list[float]] = {"jobline": [], "direct": []}
    blocks = 2
    per_block = max(jobs // blocks, 1)
    try:
        for block in range(blocks):
            first = block * per_block
            samples["direct"] += await offered(direct, first, per_block)
            await asyncio.sleep(BLOCK_PAUSE)
            samples["jobline"] += await offered(through_jobline, first, per_block)
            await asyncio.sleep(BLOCK_PAUSE)
    finally:
        await client.close()
    result: dict[str, Any] = {"rate_per_s": rate, "jobs_per_side": len(samples["direct"])}
    for side, values in samples.items():
        result[side] = {"p50_s": _percentile(values, 50), "p99_s": _percentile(values, 99)}
    result["p50_ratio"] = result["jobline"]["p50_s"] / result["direct"]["p50_s"]
    result["p99_ratio"] = result["jobline"]["p99_s"] / result["direct"]["p99_s"]
    return result


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)) - 1, 0)
    return ordered[rank]


# --- accepts and status reads ----------------------------------------------------------


@contextlib.contextmanager
def bare_endpoint() -> Iterator[tuple[int, int]]:
    """A bare aiohttp server in its own process, answering like the two routes: (its port,
    its pid)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "loadtests.bench_runtime", "bare"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        yield int(json.loads(server.stdout.readline())["port"]), server.pid
    finally:
        server.terminate()
        server.wait(10)


async def _serve_bare() -> None:
    from aiohttp import web

    async def submit(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        job = {"id": "job_" + uuid.uuid4().hex, "status": "queued", "model": body.get("model")}
        return web.json_response(job, status=202)

    async def read(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "status": "completed"})

    app = web.Application()
    app.add_routes([web.post("/v1/jobs", submit), web.get("/v1/jobs/{id}", read)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def submit_requests(port: int, api_key: str, n: int = 64) -> list[bytes]:
    requests = []
    for i in range(n):
        body = json.dumps({"model": "flux-schnell", "input": {"prompt": f"bench accept {i}"}})
        requests.append(
            (
                f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
    return requests


def read_requests(port: int, api_key: str, job_ids: list[str]) -> list[bytes]:
    urls = [f"http://127.0.0.1:{port}/v1/jobs/{job_id}" for job_id in job_ids]
    return get_requests(urls, {"Authorization": f"Bearer {api_key}"})


def cpu_of(pids: list[int]) -> Callable[[], float]:
    """The CPU seconds the processes ``pids`` have used so far, summed."""
    return lambda: sum(cpu_seconds(pid) or 0.0 for pid in pids)


async def _timed(load: Callable[[], dict[str, Any]], cpu: Callable[[], float]) -> dict[str, Any]:
    """One round of ``load``, with ``cpu_ms_per_request``: the CPU ``cpu`` counted during
    it per request sent."""
    before = cpu()
    result = await asyncio.to_thread(load)
    used = cpu() - before
    return result | {"cpu_ms_per_request": 1000 * used / max(result["requests"], 1)}


async def side_by_side(
    jobline: Callable[[], dict[str, Any]],
    bare: Callable[[], dict[str, Any]],
    rounds: int,
    jobline_cpu: Callable[[], float],
    bare_cpu: Callable[[], float],
) -> dict[str, Any]:
    """Alternate rounds of the two; the medians of ok answers per second, and of the CPU
    per request of the processes serving them (the gateways; the bare server)."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for _ in range(rounds):
        theirs.append(await _timed(bare, bare_cpu))
        ours.append(await _timed(jobline, jobline_cpu))
    jobline_rate = statistics.median(r["ok_per_s"] for r in ours)
    bare_rate = statistics.median(r["ok_per_s"] for r in theirs)
    return {
        "jobline_per_s": jobline_rate,
        "bare_per_s": bare_rate,
        "ratio": jobline_rate / bare_rate,
        "jobline_cpu_ms": statistics.median(r["cpu_ms_per_request"] for r in ours),
        "bare_cpu_ms": statistics.median(r["cpu_ms_per_request"] for r in theirs),
        "jobline_errors": sum(r["errors"] for r in ours),
        "bare_errors": sum(r["errors"] for r in theirs),
        "rounds": rounds,
        "connections": CONNECTIONS,
    }


# --- all of it ----------------------------------------------------------------------------


async def run(quick: bool = False, latency: float = 1.0, http: bool = True) -> dict[str, Any]:
    """Overhead and utilization, then (``http``) accepts and status reads against a bare
    endpoint."""
    warm, window = (3.0, 6.0) if quick else (5.0, 20.0)
    overhead_jobs, poll = (12, 0.05) if quick else (100, 0.05)
    seconds, rounds = (2.0, 1) if quick else (5.0, 2)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="jobline-bench-") as tmp:
        async with testbed(Path(tmp), latency) as tb:
            print("  overhead: end-to-end through jobline vs straight to the fake ...", flush=True)
            results["overhead"] = await overhead(tb, 4.0, overhead_jobs, poll)
            print("  utilization: saturating every vendor ...", flush=True)
            results["utilization"] = await utilization(tb, latency, warm, window)
            if not http:
                return results
            done = _completed_ids(tb.config.storage.database)
            results.update(await gateway_rows(tb, done, seconds, rounds))
            results["limits"] = {
                name: {
                    "max_in_flight": tb.fake_stats(name)["tasks"]["max_in_flight"],
                    "limit": tb.config.vendors[name].concurrency,
                }
                for name in tb.config.vendors
            }
    return results


async def gateway_rows(
    tb: Testbed, done: list[str], seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """The gateway's three rows against the bare endpoint: accepts, status reads of the
    ``done`` (ended) jobs, status reads of the accepts' backlog (live jobs)."""
    port = int(tb.config.gateway.port)
    key = tb.client.api_key
    db = tb.config.storage.database
    results: dict[str, dict[str, Any]] = {}

    def load(at: int, requests: list[bytes]) -> Callable[[], dict[str, Any]]:
        return lambda: run_requests("127.0.0.1", at, requests, seconds, CONNECTIONS)

    replicas = range(tb.config.gateway.replicas)
    gateways = cpu_of([await asyncio.to_thread(tb.runtime.pid, f"gateway-{n}") for n in replicas])
    with bare_endpoint() as (bare, bare_pid):
        server = cpu_of([bare_pid])
        print("  accepts: POST /v1/jobs vs a bare aiohttp endpoint ...", flush=True)
        results["accepts"] = await side_by_side(
            load(port, submit_requests(port, key)),
            load(bare, submit_requests(bare, key)),
            rounds,
            gateways,
            server,
        )
        print("  status reads: GET /v1/jobs/{id} vs the bare endpoint ...", flush=True)
        results["status_reads"] = await side_by_side(
            load(port, read_requests(port, key, done)),
            load(bare, read_requests(bare, key, done)),
            rounds,
            gateways,
            server,
        )
        live = _job_ids(db, ("queued", "processing"))  # the accepts' backlog
        print("  status reads of live jobs vs the bare endpoint ...", flush=True)
        results["status_reads_live"] = await side_by_side(
            load(port, read_requests(port, key, live)),
            load(bare, read_requests(bare, key, live)),
            rounds,
            gateways,
            server,
        )
    return results


async def run_gateway(seconds: float = 3.0, rounds: int = 3, jobs: int = 200) -> dict[str, Any]:
    """Only the gateway's rows (``bench_table --gateway``): ``jobs`` jobs run to their
    end first (the ended jobs read), then ``rounds`` alternating rounds of each row."""
    with tempfile.TemporaryDirectory(prefix="jobline-bench-") as tmp:
        async with testbed(Path(tmp), latency=0.2) as tb:
            calls: list[Callable[[], Awaitable[str]]] = [
                functools.partial(_submit, tb, model, f"{vendor}{i}")
                for i in range(jobs // len(FIRST_MODEL))
                for vendor, model in FIRST_MODEL.items()
            ]
            await _gather_limited(calls, 32)
            await wait_all_ended(tb, timeout=120.0)
            done = _completed_ids(tb.config.storage.database)
            return await gateway_rows(tb, done, seconds, rounds)


def _completed_ids(db: Path, limit: int = 500) -> list[str]:
    return _job_ids(db, ("completed",), limit)


def _job_ids(db: Path, statuses: tuple[str, ...], limit: int = 500) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        marks = ", ".join("?" for _ in statuses)
        rows = conn.execute(
            f"SELECT id FROM jobs WHERE status IN ({marks}) LIMIT ?", (*statuses, limit)
        ).fetchall()
    finally:
        conn.close()
    return [str(row[0]) for row in rows]


TARGETS = {  # measure -> (comparison, target ratio): issue 16's aims
    "utilization": (">=", 0.98),
    "overhead": ("<=", 1.05),
    "accepts": (">=", 0.25),
    "status_reads": (">=", 0.60),
    "status_reads_live": (">=", 0.60),
}


def met(measure: str, ratio: float) -> bool:
    comparison, target = TARGETS[measure]
    return ratio >= target if comparison == ">=" else ratio <= target


def render(results: dict[str, Any]) -> str:
    """One table: each measure, its baseline, the ratio and the target."""
    rows: list[tuple[str, str, str, str, str]] = []

    def verdict(measure: str, ratio: float) -> tuple[str, str]:
        comparison, target = TARGETS[measure]
        sign = "≥" if comparison == ">=" else "≤"
        return f"{ratio:.2f}", f"{sign} {target:.2f} " + ("ok" if met(measure, ratio) else "MISSED")

    u = results["utilization"]
    rows.append(
        (
            "vendor-slot utilization",
            f"{u['completed_per_s']:.2f} jobs/s",
            f"{u['bound_per_s']:.2f} jobs/s (Σ limit/latency)",
            *verdict("utilization", u["ratio"]),
        )
    )
    for name, v in u["vendors"].items():
        over = "" if v["max_in_flight"] <= v["limit"] else "  OVER THE LIMIT"
        rows.append(
            (
                f"  {name}",
                f"{v['completed_per_s']:.2f} jobs/s",
                f"{v['bound_per_s']:.2f}; in flight max {v['max_in_flight']} / {v['limit']}{over}",
                "",
                "",
            )
        )
    o = results["overhead"]
    rows.append(
        (
            f"end-to-end p50 ({o['rate_per_s']:g} jobs/s)",
            f"{o['jobline']['p50_s']:.3f} s",
            f"{o['direct']['p50_s']:.3f} s (straight to the fake)",
            f"{o['p50_ratio']:.2f}",
            "",
        )
    )
    rows.append(
        (
            f"end-to-end p99 ({o['jobs_per_side']} jobs)",
            f"{o['jobline']['p99_s']:.3f} s",
            f"{o['direct']['p99_s']:.3f} s",
            *verdict("overhead", o["p99_ratio"]),
        )
    )
    for measure, label in (
        ("accepts", "accepts (POST /v1/jobs)"),
        ("status_reads", "status reads, ended jobs"),
        ("status_reads_live", "status reads, live jobs"),
    ):
        r = results[measure]
        errors = f", {r['jobline_errors']} errors" if r["jobline_errors"] else ""
        rows.append(
            (
                label,
                f"{r['jobline_per_s']:,.0f}/s{errors}",
                f"{r['bare_per_s']:,.0f}/s (bare aiohttp)",
                *verdict(measure, r["ratio"]),
            )
        )
    header = ("measure", "jobline", "baseline", "ratio", "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(header)).rstrip()]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join("  " + line for line in lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["bare"]:
        asyncio.run(_serve_bare())
    else:
        print(json.dumps(asyncio.run(run(quick="--quick" in sys.argv)), indent=2))
