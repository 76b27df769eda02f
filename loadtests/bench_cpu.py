"""CPU per completed job, per process and in total, next to the machine's floor (``make bench``).

What a job costs the machine, measured from ``/proc/<pid>/stat`` (user + system time) of
every process taking part, before and after a timed run:

- every Ray process this run started (GCS, raylet, the agents, idle workers, and each
  role's actor: gateways, ledger, processors, sweeper), the driver (this process), the
  fake vendors (a process of their own) and the client (another);
- **steady**: the client submits at a paced rate (35 jobs/s by default, two models, so
  both vendors), polls each job once a second after its task's latency, and downloads
  its result; the CPU of a window in the middle of the run is divided by the jobs that
  completed in that window (read from the ledger);
- **burst**: the client submits a backlog at once, as fast as it is accepted, and waits
  for it to drain (no polls: the ledger says when); the CPU from the first submit to the
  last completion is divided by the jobs;
- the **ledger actor**'s own CPU per job, and so its ceiling: the jobs per second one
  core of it could carry (``1000 / ms per job``);
- the **floor**, measured in the same run: a bare aiohttp server and client (two
  processes) doing the same number of HTTP exchanges per job as this run did (the
  client's requests, the vendor requests the fakes counted, the webhooks they sent), at
  full speed on a few keep-alive connections; plus SQLite row writes, ``ROWS_PER_JOB``
  per job (a job's insert, its hold and capture, three history rows, two updates and an
  idempotency key), ``FLOOR_BATCH`` rows per durable transaction, with the ledger's
  pragmas. Both floors are CPU time too.

    .venv/bin/python -m loadtests.bench_cpu [--rate 35] [--seconds 20] [--burst 600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
ROWS_PER_JOB = 9
FLOOR_BATCH = 100
FLOOR_CONNECTIONS = 4
MODELS = ("flux-schnell", "sdxl")  # fal first, replicate first
LATENCY = 1.0  # seconds every fake task takes
FIRST_POLL = 1.0  # the client reads a job's status this long after its submit ...
POLL = 1.0  # ... then this often until it ends


# --- processes ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


_KINDS = (  # (a piece of the command line, the label of a process that is not a role)
    ("gcs_server", "ray: gcs"),
    ("raylet/raylet", "ray: raylet"),
    ("dashboard/agent.py", "ray: dashboard agent"),
    ("DashboardAgent", "ray: dashboard agent"),
    ("runtime_env/agent", "ray: runtime env agent"),
    ("RuntimeEnvAgent", "ray: runtime env agent"),
    ("log_monitor.py", "ray: log monitor"),
    ("autoscaler/_private/monitor.py", "ray: monitor"),
    ("dashboard/dashboard.py", "ray: dashboard"),
    ("default_worker.py", "ray: idle workers"),
    ("ray::IDLE", "ray: idle workers"),
)


def label_of(pid: int, named: dict[int, str]) -> str:
    if pid in named:
        return named[pid]
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    for piece, label in _KINDS:
        if piece in command:
            return label
    return "other"


@dataclass
class CpuSnapshot:
    at: float
    seconds: dict[int, float] = field(default_factory=dict)

    @classmethod
    def take(cls, root: int) -> CpuSnapshot:
        snap = cls(time.time())
        for pid in descendants(root):
            value = cpu_seconds(pid)
            if value is not None:
                snap.seconds[pid] = value
        return snap


def cpu_by_label(
    before: CpuSnapshot, after: CpuSnapshot, named: dict[int, str]
) -> dict[str, float]:
    """CPU seconds used between the snapshots, by label (a process born between them
    counts from 0; one that died between them is lost, and reported as nothing)."""
    used: dict[str, float] = defaultdict(float)
    for pid, seconds in after.seconds.items():
        used[label_of(pid, named)] += max(seconds - before.seconds.get(pid, 0.0), 0.0)
    return dict(used)


# --- the fake vendors, in a process of their own ---------------------------------------


async def _serve_fakes(config_path: str, latency: float, limit: int) -> None:
    from loadtests.bench_runtime import fixed_latency_profile
    from runtime.config import load_config
    from vendors_fake.runner import start_fake_vendors

    config = load_config(Path(config_path))
    profile = fixed_latency_profile(latency).model_copy(update={"concurrency_limit": limit})
    fakes = await start_fake_vendors(config, profile, ports="free")
    try:
        print(json.dumps({"urls": fakes.urls}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await fakes.stop()


@contextlib.contextmanager
def fake_vendors(
    config_path: Path, latency: float, limit: int
) -> Iterator[tuple[dict[str, str], int]]:
    """The fakes (every task ``latency`` s, ``limit`` in flight each): (URLs, pid)."""
    args = ["fakes", str(config_path), str(latency), str(limit)]
    process = subprocess.Popen(
        [sys.executable, "-m", "loadtests.bench_cpu", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())["urls"], process.pid
    finally:
        process.terminate()
        process.wait(10)


async def fake_counts(urls: dict[str, str]) -> dict[str, int]:
    """The HTTP exchanges the fakes took part in: requests they answered, webhooks sent."""
    import aiohttp

    requests = webhooks = 0
    async with aiohttp.ClientSession() as http:
        for url in urls.values():
            async with http.get(f"{url}/_control/stats") as response:
                stats = await response.json()
            requests += int(stats["requests_total"])
            webhooks += int(stats["webhooks"]["sent"])
    return {"requests": requests, "webhooks": webhooks}


# --- the client, in a process of its own ------------------------------------------------


async def _client(url: str, key: str, mode: str, rate: float, count: int) -> dict[str, Any]:
    """Steady: ``count`` jobs at ``rate``/s, each polled and its result fetched. Burst:
    ``count`` jobs as fast as they are accepted (64 at a time), nothing else."""
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    counts = {"requests": 0, "submitted": 0, "completed": 0, "errors": 0}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:

        async def get(path: str) -> tuple[int, Any]:
            counts["requests"] += 1
            async with http.get(path) as response:
                body = await response.read()
                data = json.loads(body) if response.content_type == "application/json" else None
                return response.status, data

        async def submit(i: int) -> str | None:
            body = {"model": MODELS[i % 2], "input": {"prompt": f"cpu {i} {uuid.uuid4().hex}"}}
            counts["requests"] += 1
            async with http.post("/v1/jobs", json=body) as response:
                job = await response.json()
            if response.status != 202:
                counts["errors"] += 1
                return None
            counts["submitted"] += 1
            return str(job["id"])

        async def follow(i: int, at: float) -> None:
            await asyncio.sleep(max(at - time.monotonic(), 0.0))
            started = time.monotonic()
            job_id = await submit(i)
            if job_id is None:
                return
            await asyncio.sleep(FIRST_POLL)
            while True:
                status, job = await get(f"/v1/jobs/{job_id}")
                if status == 200 and job["status"] in ("completed", "failed", "canceled"):
                    break
                await asyncio.sleep(POLL)
            if job["status"] != "completed":
                counts["errors"] += 1
                return
            status, _ = await get(f"/v1/jobs/{job_id}/result")
            counts["completed" if status == 200 else "errors"] += 1
            latencies.append(time.monotonic() - started)

        if mode == "steady":
            start = time.monotonic() + 0.2
            await asyncio.gather(*(follow(i, start + i / rate) for i in range(count)))
        else:
            gate = asyncio.Semaphore(64)

            async def one(i: int) -> None:
                async with gate:
                    await submit(i)

            await asyncio.gather(*(one(i) for i in range(count)))
    latencies.sort()
    result: dict[str, Any] = dict(counts)
    if latencies:
        result["p50_s"] = latencies[len(latencies) // 2]
        result["p99_s"] = latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)]
    return result


def start_client(url: str, key: str, mode: str, rate: float, count: int) -> subprocess.Popen[str]:
    args = ["client", url, key, mode, str(rate), str(count)]
    return subprocess.Popen(
        [sys.executable, "-m", "loadtests.bench_cpu", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


# --- the floor ----------------------------------------------------------------------------


async def _bare_server() -> None:
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {"id": "job_" + uuid.uuid4().hex, "status": "queued", "n": len(body)}
        )

    app = web.Application()
    app.add_routes([web.post("/x", answer), web.get("/x", answer)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _bare_exchanges(port: int, exchanges: int) -> float:
    """Do ``exchanges`` small JSON exchanges; this process's CPU seconds for them."""
    import aiohttp

    body = {"model": "flux-schnell", "input": {"prompt": "a floor"}}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        async with http.get("/x") as response:  # connect and warm up outside the count
            await response.read()
        started = time.process_time()
        per_connection = exchanges // FLOOR_CONNECTIONS

        async def one(n: int) -> None:
            for i in range(n):
                if i % 2:
                    async with http.get("/x") as response:
                        await response.read()
                else:
                    async with http.post("/x", json=body) as response:
                        await response.read()

        await asyncio.gather(*(one(per_connection) for _ in range(FLOOR_CONNECTIONS)))
        return time.process_time() - started


def http_floor(exchanges: int) -> float:
    """CPU seconds per HTTP exchange, both sides, bare aiohttp on loopback."""
    exchanges = max(exchanges, 400)
    server = subprocess.Popen(
        [sys.executable, "-m", "loadtests.bench_cpu", "bare"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(json.loads(server.stdout.readline())["port"])
        before = cpu_seconds(server.pid) or 0.0
        client = asyncio.run(_bare_exchanges(port, exchanges))
        after = cpu_seconds(server.pid) or before
    finally:
        server.terminate()
        server.wait(10)
    done = exchanges // FLOOR_CONNECTIONS * FLOOR_CONNECTIONS
    return (client + after - before) / done


def sqlite_floor(rows: int, batch: int = FLOOR_BATCH) -> float:
    """CPU seconds per row written, ``batch`` rows per durable transaction."""
    from runtime.ledger_schema import connect

    rows = max(rows, 2_000)
    with tempfile.TemporaryDirectory(prefix="jobline-floor-") as tmp:
        conn = connect(Path(tmp, "floor.db"))
        conn.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, kind TEXT, amount INTEGER, "
            "j TEXT, at REAL)"
        )
        conn.execute("CREATE INDEX t_j ON t (j)")
        values = [(f"acct-{i % 7}", "hold", 5, uuid.uuid4().hex, float(i)) for i in range(rows)]
        started = time.process_time()
        for first in range(0, rows, batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO t (a, kind, amount, j, at) VALUES (?, ?, ?, ?, ?)",
                values[first : first + batch],
            )
            conn.execute("COMMIT")
        used = time.process_time() - started
        conn.close()
    return used / rows


# --- the run -----------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured stretch: CPU by process label, jobs completed, HTTP exchanges."""

    name: str
    seconds: float
    jobs: int
    cpu: dict[str, float]
    exchanges: int
    client: dict[str, Any]

    def per_job_ms(self) -> dict[str, float]:
        jobs = max(self.jobs, 1)
        return {label: 1000 * s / jobs for label, s in sorted(self.cpu.items())}

    def total_ms(self) -> float:
        return 1000 * sum(self.cpu.values()) / max(self.jobs, 1)


def completed_between(db: Path, start: float, end: float) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE status = 'completed' AND updated_at >= ? "
            "AND updated_at < ?",
            (start, end),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


def open_jobs(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


@contextlib.asynccontextmanager
async def runtime_on_ray(
    data: Path, urls: dict[str, str], concurrency: int
) -> AsyncIterator[tuple[Any, str, str, Any]]:
    """jobline on a local Ray against the fakes at ``urls``: (runtime, base URL, API key,
    config)."""
    import aiohttp

    from actors.hosting import RayRuntime
    from loadtests.testbed import ROOT_CONFIG, ensure_dev_secrets, local_config
    from runtime.config import load_config

    base = load_config(ROOT_CONFIG)
    ensure_dev_secrets(base)
    vendors = {f"vendors.{name}": {"concurrency": concurrency} for name in base.vendors}
    config = local_config(
        base,
        data,
        urls,
        overrides={
            "ray": {"namespace": f"jobline-cpu-{uuid.uuid4().hex[:8]}"},
            "gateway": {"max_jobs_in_flight_per_account": 10**9},
            **vendors,
        },
    )
    runtime = await asyncio.to_thread(RayRuntime.start, config, seed=0)
    try:
        token = config.gateway.admin_token() or ""
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{config.gateway.public_url}/v1/accounts",
                json={"name": "cpu", "credits": 10**12},
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            account = await response.json()
        yield runtime, config.gateway.public_url, account["api_key"], config
    finally:
        await asyncio.to_thread(runtime.stop)


async def measure(
    rate: float = 35.0,
    seconds: float = 20.0,
    burst: int = 600,
    concurrency: int = 64,
    warm: float = 4.0,
) -> dict[str, Any]:
    me = os.getpid()
    with tempfile.TemporaryDirectory(prefix="jobline-cpu-") as tmp:
        data = Path(tmp)
        from loadtests.testbed import ROOT_CONFIG

        with fake_vendors(ROOT_CONFIG, LATENCY, concurrency) as (urls, fakes_pid):
            async with runtime_on_ray(data, urls, concurrency) as (runtime, url, key, config):
                named = {me: "driver (bench harness)", fakes_pid: "fake vendors"}
                for role in runtime.roles():
                    named[await asyncio.to_thread(runtime.pid, role)] = f"actor: {role}"
                db = Path(config.storage.database)
                steady = await _steady(me, named, db, urls, url, key, rate, seconds, warm)
                await _drain(db)
                backlog = await _burst(me, named, db, urls, url, key, burst)
    exchanges = steady.exchanges / max(steady.jobs, 1)
    http = await asyncio.to_thread(http_floor, int(exchanges * 300))
    rows = await asyncio.to_thread(sqlite_floor, ROWS_PER_JOB * 300)
    floor_ms = 1000 * (http * exchanges + rows * ROWS_PER_JOB)
    burst_exchanges = backlog.exchanges / max(backlog.jobs, 1)
    burst_floor_ms = 1000 * (http * burst_exchanges + rows * ROWS_PER_JOB)
    ledger_floor_ms = 1000 * rows * ROWS_PER_JOB
    result: dict[str, Any] = {"load_average": os.getloadavg()}
    for phase, floor in ((steady, floor_ms), (backlog, burst_floor_ms)):
        ledger_ms = phase.per_job_ms().get("actor: ledger", 0.0)
        result[phase.name] = {
            "jobs": phase.jobs,
            "seconds": phase.seconds,
            "jobs_per_s": phase.jobs / phase.seconds,
            "cpu_ms_per_job": phase.total_ms(),
            "by_process_ms_per_job": phase.per_job_ms(),
            "exchanges_per_job": phase.exchanges / max(phase.jobs, 1),
            "floor_ms_per_job": floor,
            "ratio_to_floor": phase.total_ms() / floor,
            "ledger_ms_per_job": ledger_ms,
            "ledger_ceiling_jobs_per_s": 1000 / ledger_ms if ledger_ms else float("inf"),
            "client": phase.client,
        }
    result["floor"] = {
        "http_ms_per_exchange": 1000 * http,
        "sqlite_ms_per_row": 1000 * rows,
        "rows_per_job": ROWS_PER_JOB,
        "ledger_floor_ms_per_job": ledger_floor_ms,
        "ledger_floor_jobs_per_s": 1000 / ledger_floor_ms,
    }
    return result


async def _steady(
    me: int,
    named: dict[int, str],
    db: Path,
    urls: dict[str, str],
    url: str,
    key: str,
    rate: float,
    seconds: float,
    warm: float,
) -> Phase:
    count = int(rate * (warm + seconds + 2.0))
    client = start_client(url, key, "steady", rate, count)
    named[client.pid] = "client"
    await asyncio.sleep(warm + FIRST_POLL)
    fakes_before = await fake_counts(urls)
    before = CpuSnapshot.take(me)
    await asyncio.sleep(seconds)
    after = CpuSnapshot.take(me)
    fakes_after = await fake_counts(urls)
    report = await asyncio.to_thread(_finish, client)
    jobs = completed_between(db, before.at, after.at)
    client_share = report["requests"] / max(report["completed"], 1)
    vendor_side = sum(fakes_after.values()) - sum(fakes_before.values())
    exchanges = int(client_share * jobs) + vendor_side
    return Phase("steady", after.at - before.at, jobs, cpu_by_label(before, after, named),
                 exchanges, report)  # fmt: skip


async def _burst(
    me: int, named: dict[int, str], db: Path, urls: dict[str, str], url: str, key: str, n: int
) -> Phase:
    fakes_before = await fake_counts(urls)
    before = CpuSnapshot.take(me)
    client = start_client(url, key, "burst", 0.0, n)
    named[client.pid] = "client"
    await asyncio.sleep(0.5)
    # The client is gone once it submitted everything: take its CPU before it exits.
    client_cpu = 0.0
    while client.poll() is None:
        client_cpu = cpu_seconds(client.pid) or client_cpu
        await asyncio.sleep(0.2)
    report = await asyncio.to_thread(_finish, client)
    await _drain(db)
    after = CpuSnapshot.take(me)
    fakes_after = await fake_counts(urls)
    cpu = cpu_by_label(before, after, named)
    cpu["client"] = cpu.get("client", 0.0) + client_cpu
    jobs = completed_between(db, before.at, after.at)
    exchanges = report["requests"] + sum(fakes_after.values()) - sum(fakes_before.values())
    return Phase("burst", after.at - before.at, jobs, cpu, exchanges, report)


async def _drain(db: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while open_jobs(db):
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs still open after {timeout:.0f}s")
        await asyncio.sleep(0.1)


def _finish(client: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = client.communicate(timeout=600)
    if client.returncode != 0:
        raise RuntimeError(f"the client failed ({client.returncode})")
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


def run(runs: int = 1, **kwargs: Any) -> dict[str, Any]:
    """``runs`` measurements in a row; the medians of the headline numbers, and each run."""
    each = [asyncio.run(measure(**kwargs)) for _ in range(runs)]
    medians: dict[str, Any] = {}
    for phase in ("steady", "burst"):
        medians[phase] = {
            name: statistics.median(r[phase][name] for r in each)
            for name in ("cpu_ms_per_job", "floor_ms_per_job", "ratio_to_floor",
                         "ledger_ms_per_job", "ledger_ceiling_jobs_per_s", "jobs_per_s",
                         "exchanges_per_job")
        }  # fmt: skip
        labels = {label for r in each for label in r[phase]["by_process_ms_per_job"]}
        medians[phase]["by_process_ms_per_job"] = {
            label: statistics.median(
                r[phase]["by_process_ms_per_job"].get(label, 0.0) for r in each
            )
            for label in sorted(labels)
        }
    medians["floor"] = {
        name: statistics.median(r["floor"][name] for r in each) for name in each[0]["floor"]
    }
    return {"median": medians, "runs": each, "load_average": os.getloadavg()}


def render(result: dict[str, Any]) -> str:
    m = result["median"]
    n = len(result["runs"])
    lines = [f"  CPU ms per completed job (median of {n} run{'s' if n > 1 else ''})"]
    steady, burst = m["steady"], m["burst"]
    labels = sorted(set(steady["by_process_ms_per_job"]) | set(burst["by_process_ms_per_job"]))
    width = max(len(label) for label in [*labels, "ledger ceiling, jobs/s"]) + 2

    def row(label: str, s: float, b: float, digits: int = 2) -> str:
        return f"    {label:<{width}}{s:>10.{digits}f}{b:>10.{digits}f}"

    lines.append(f"    {'process':<{width}}{'steady':>10}{'burst':>10}")
    for label in labels:
        by_s, by_b = steady["by_process_ms_per_job"], burst["by_process_ms_per_job"]
        lines.append(row(label, by_s.get(label, 0.0), by_b.get(label, 0.0)))
    lines.append(row("total", steady["cpu_ms_per_job"], burst["cpu_ms_per_job"]))
    lines.append(row("floor (bare HTTP + rows)", steady["floor_ms_per_job"],
                     burst["floor_ms_per_job"]))  # fmt: skip
    lines.append(row("total / floor", steady["ratio_to_floor"], burst["ratio_to_floor"], 1))
    lines.append(row("ledger ceiling, jobs/s", steady["ledger_ceiling_jobs_per_s"],
                     burst["ledger_ceiling_jobs_per_s"], 0))  # fmt: skip
    lines.append(row("jobs/s", steady["jobs_per_s"], burst["jobs_per_s"], 1))
    lines.append(row("HTTP exchanges/job", steady["exchanges_per_job"],
                     burst["exchanges_per_job"], 1))  # fmt: skip
    f = m["floor"]
    lines.append(
        f"  floor: {f['http_ms_per_exchange']:.3f} ms per HTTP exchange (both sides), "
        f"{f['sqlite_ms_per_row']:.4f} ms per row ({FLOOR_BATCH} per transaction): "
        f"a ledger of bare rows carries {f['ledger_floor_jobs_per_s']:,.0f} jobs/s; "
        f"load average {result['load_average'][0]:.1f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fakes"]:
        asyncio.run(_serve_fakes(argv[1], float(argv[2]), int(argv[3])))
        return 0
    if argv[:1] == ["bare"]:
        asyncio.run(_bare_server())
        return 0
    if argv[:1] == ["client"]:
        url, key, mode, rate, count = argv[1:6]
        print(json.dumps(asyncio.run(_client(url, key, mode, float(rate), int(count)))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_cpu", description=__doc__)
    parser.add_argument("--rate", type=float, default=35.0, help="steady jobs/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="the steady window")
    parser.add_argument("--burst", type=int, default=600, help="jobs in the backlog burst")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.runs, rate=args.rate, seconds=args.seconds, burst=args.burst)
    print(render(result))
    print(json.dumps(result["median"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
