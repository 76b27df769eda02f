"""A flooding tenant next to quiet ones, under Locust: does the flood move their latency?

Starts fake vendors and jobline (``loadtests.testbed.Testbed``) with few vendor slots
(``--slots`` per vendor, tasks of about half a second), creates the quiet accounts and
a flooding one (its in-flight cap ``--flood-cap``), and runs ``loadtests/locust_flood.py``
twice for ``--duration`` seconds each:

1. *baseline*: only the quiet tenants, each submitting a job every 2 s and following
   it to its end;
2. *flood*: the same tenants, and ``--flooders`` users of the flooding account
   submitting back to back (waiting out each 429's Retry-After).

Each quiet tenant follows the job it has in hand to its end after a run (Locust's
``--stop-timeout``), so a job stuck behind the flood is timed, not dropped. Between the
two runs, and after, it waits until every job has ended, then checks the
ledger's invariants. It prints the quiet tenants' job latency (submit to end: p50, p95,
p99) in both runs side by side, where it went (from the ledger's job history: accepted
to a vendor task recorded, which is mostly the wait for a slot; then the vendor's task
and storing its result), and what the flooder got through. With the fair share
of vendor slots (``runtime.fairness``) a quiet job waits for one slot turnover at most,
however deep the flooder's queue; a free slot is kept for each quiet tenant holding
none, at most ``[fairness] headroom`` (``--headroom``), so one whose job arrives starts
at once (``--headroom 0``: none kept; fewer than the quiet tenants active at once: the
rest wait a turnover). The flood also takes CPU every job shares: this tool runs the fakes,
jobline and Locust on one machine. The CSV files and Locust's logs stay under
``results/flood-<time>/``.

    python -m loadtests.flood [--duration 60] [--tenants 3] [--flooders 8] [--slots 4]
                              [--headroom N] [--mode ray|in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from loadtests.run import wait_quiet
from loadtests.testbed import Testbed
from runtime.invariants import check_invariants
from vendors_fake.profile import load_profile, merge_profile

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locust_flood.py"
MODEL = "flux-schnell"
TASKS = {"run_time": {"kind": "uniform", "low": 0.4, "high": 0.6}}  # a slot turnover
JOB_ROW = "tenant: submit to end"
SUBMIT_ROW = "tenant: POST /v1/jobs"
STOP_TIMEOUT = 120.0  # seconds a quiet tenant may follow its last job after the run
FLOOD_ROWS = ("flood: POST /v1/jobs", "flood: refused (429)")  # every submit; the 429s


@dataclass
class Latency:
    """One Locust row: requests, failures and percentiles in milliseconds."""

    requests: int = 0
    failures: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0


@dataclass
class Phases:
    """Where the quiet tenants' jobs spent their time, from the ledger's job history
    (seconds, p50 and p95): accepted (``queued``) to the vendor task recorded
    (``processing``: the wait for a slot, then the submit), and from there to the end."""

    jobs: int = 0
    to_vendor: tuple[float, float] = (0.0, 0.0)
    at_vendor: tuple[float, float] = (0.0, 0.0)


@dataclass
class FloodReport:
    duration: float
    tenants: int
    flooders: int
    slots: int
    out: str
    exits: dict[str, int]  # phase -> Locust's exit status
    baseline: Latency  # the quiet tenants' jobs, alone
    flood: Latency  # the same, next to the flooder
    flooder_accepted: int  # the flooder's 202s
    flooder_refused: int  # its 429s (its in-flight cap, its submit rate)
    quiet: bool
    violations: list[str]
    phases: dict[str, Phases]  # "baseline" / "flood" -> the quiet tenants' jobs

    @property
    def ok(self) -> bool:
        return (
            self.quiet
            and not self.violations
            and all(code == 0 for code in self.exits.values())
            and self.baseline.requests > 0
            and self.flood.requests > 0
            and self.flooder_accepted > 0
        )

    def render(self) -> str:
        def line(name: str, row: Latency) -> str:
            return (
                f"  {name:<22} jobs {row.requests:>5}  failed {row.failures:>3}  "
                f"p50 {row.p50_ms:>6,.0f} ms  p95 {row.p95_ms:>6,.0f} ms  "
                f"p99 {row.p99_ms:>6,.0f} ms"
            )

        change = (
            f"{self.flood.p95_ms / self.baseline.p95_ms:.2f}x" if self.baseline.p95_ms else "n/a"
        )
        return "\n".join(
            [
                f"jobline flood: {self.tenants} quiet tenants, 1 flooder ({self.flooders} users), "
                f"{self.slots} slots per vendor, {self.duration:g}s per run",
                "",
                "quiet tenants' jobs, submit to end",
                line("baseline (no flood)", self.baseline),
                line("next to the flood", self.flood),
                f"  p95 next to the flood / baseline: {change}",
                *(
                    f"  {name:<22} accepted -> vendor task p50/p95 {p.to_vendor[0] * 1000:,.0f}/"
                    f"{p.to_vendor[1] * 1000:,.0f} ms; vendor task -> end "
                    f"{p.at_vendor[0] * 1000:,.0f}/{p.at_vendor[1] * 1000:,.0f} ms"
                    for name, p in self.phases.items()
                ),
                f"  the flooder: {self.flooder_accepted:,} jobs accepted, "
                f"{self.flooder_refused:,} submits refused (429)",
                f"  invariants: {'hold' if not self.violations else self.violations[:3]}"
                + ("" if self.quiet else "  NOT QUIET"),
                "  verdict: " + ("PASS" if self.ok else "FAIL"),
            ]
        )


def locust_command(
    host: str, out: Path, duration: float, users: int, classes: list[str]
) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "-u", str(users), "-r", str(users),
        "-t", f"{max(int(duration), 1)}s", "--csv", str(out / "locust"),
        "--only-summary", "--exit-code-on-error", "1",
        "--stop-timeout", str(int(STOP_TIMEOUT)), *classes,
    ]  # fmt: skip


async def run_phase(
    host: str, target: Path, out: Path, duration: float, users: int, classes: list[str]
) -> int:
    """One headless Locust run (a subprocess: Locust patches with gevent); its exit status."""
    env = {
        **os.environ,
        "JOBLINE_LOADTEST_TARGET": str(target),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with _log_file(out) as log:
        process = await asyncio.create_subprocess_exec(
            *locust_command(host, out, duration, users, classes),
            cwd=ROOT, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            await asyncio.wait_for(process.wait(), timeout=duration + STOP_TIMEOUT + 60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"locust did not stop; see {out / 'locust.log'}") from None
    assert process.returncode is not None
    return process.returncode


def _log_file(out: Path) -> BinaryIO:
    out.mkdir(parents=True, exist_ok=True)
    return open(out / "locust.log", "wb")  # the caller closes it


def _write_target(out: Path, data: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    target = out / "target.json"
    target.write_text(json.dumps(data))
    return target


def read_rows(out: Path) -> dict[str, Latency]:
    """Locust's rows by name, from ``locust_stats.csv`` under ``out``."""
    rows = {}
    with open(out / "locust_stats.csv", newline="") as file:
        for record in csv.DictReader(file):
            rows[record["Name"]] = Latency(
                requests=int(record["Request Count"]),
                failures=int(record["Failure Count"]),
                p50_ms=_number(record.get("50%")),
                p95_ms=_number(record.get("95%")),
                p99_ms=_number(record.get("99%")),
            )
    return rows


def phases(database: str | Path, flood_start: float, tenant_ids: list[str]) -> dict[str, Phases]:
    """The quiet tenants' completed jobs, split into baseline and flood (jobs opened from
    ``flood_start`` on, wall clock), each split at its vendor task's record (``Phases``)."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        rows = conn.execute(
            "SELECT j.created_at, min(CASE WHEN h.status = 'queued' THEN h.at END), "
            "min(CASE WHEN h.status = 'processing' THEN h.at END), "
            "min(CASE WHEN h.status = 'completed' THEN h.at END) "
            "FROM jobs j JOIN job_history h ON h.job_id = j.id "
            "WHERE j.account_id IN (SELECT value FROM json_each(?)) GROUP BY j.id",
            (json.dumps(tenant_ids),),
        ).fetchall()
    split: dict[str, list[tuple[float, float]]] = {"baseline": [], "flood": []}
    for created, queued, processing, completed in rows:
        if None not in (queued, processing, completed):
            phase = "flood" if created >= flood_start else "baseline"
            split[phase].append((processing - queued, completed - processing))
    return {
        name: Phases(
            len(times),
            _p50_p95([t[0] for t in times]),
            _p50_p95([t[1] for t in times]),
        )
        for name, times in split.items()
    }


def _p50_p95(values: list[float]) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    ordered = sorted(values)
    last = len(ordered) - 1
    return ordered[round(0.5 * last)], ordered[round(0.95 * last)]


def _number(raw: str | None) -> float:
    try:
        return float(raw or 0)
    except ValueError:  # "N/A"
        return 0.0


async def flood(
    tb: Testbed,
    out: Path,
    *,
    duration: float = 60.0,
    tenants: int = 3,
    flooders: int = 8,
    flood_cap: int = 300,
    quiet_timeout: float = 180.0,
) -> FloodReport:
    """The baseline run, then the flood run, against a started Testbed (module docstring)."""
    tenant_accounts = [
        await tb.client.create_account(100_000, f"tenant-{i}") for i in range(tenants)
    ]
    keys = [key for _, key in tenant_accounts]
    flooder_id, flooder_key = await tb.client.create_account(10_000_000, "flooder")
    status, body = await tb.client.request(
        "PUT", f"/v1/accounts/{flooder_id}/limits", admin=True,
        json={"max_jobs_in_flight": flood_cap},
    )  # fmt: skip
    if status != 200:
        raise RuntimeError(f"flooder limits: {status} {body}")
    target = _write_target(out, {"tenants": keys, "flooder": flooder_key, "model": MODEL})
    host = tb.config.gateway.public_url
    exits: dict[str, int] = {}
    exits["baseline"] = await run_phase(
        host, target, out / "baseline", duration, tenants, ["QuietTenant"]
    )
    quiet, _ = await wait_quiet(tb, quiet_timeout)
    flood_start = time.time()  # the ledger's clock: the system's
    exits["flood"] = await run_phase(
        host, target, out / "flood", duration, tenants + flooders, ["QuietTenant", "Flooder"]
    )
    quiet_after, _ = await wait_quiet(tb, quiet_timeout)
    violations = await asyncio.to_thread(check_invariants, tb.config.storage.database)
    baseline, flooded = read_rows(out / "baseline"), read_rows(out / "flood")
    report = FloodReport(
        duration=duration,
        tenants=tenants,
        flooders=flooders,
        slots=min(v.concurrency for v in tb.config.vendors.values()),
        out=str(out),
        exits=exits,
        baseline=baseline.get(JOB_ROW, Latency()),
        flood=flooded.get(JOB_ROW, Latency()),
        flooder_accepted=flooded.get(FLOOD_ROWS[0], Latency()).requests
        - flooded.get(FLOOD_ROWS[1], Latency()).requests,
        flooder_refused=flooded.get(FLOOD_ROWS[1], Latency()).requests,
        quiet=quiet and quiet_after,
        violations=[str(v) for v in violations],
        phases=phases(
            tb.config.storage.database, flood_start, [account for account, _ in tenant_accounts]
        ),
    )
    (out / "summary.json").write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return report


def flood_testbed(
    data: Path,
    slots: int,
    mode: Literal["ray", "in-process"] = "ray",
    seed: int = 0,
    headroom: int | None = None,
) -> Testbed:
    """Fake vendors with half-second tasks and ``slots`` slots per vendor, and jobline
    (``headroom``: its ``[fairness] headroom``; None: jobline.toml's)."""
    overrides: dict[str, dict[str, Any]] = {
        f"vendors.{name}": {"concurrency": slots, "poll_interval": 0.2}
        for name in ("fal", "replicate")
    }
    if headroom is not None:
        overrides["fairness"] = {"headroom": headroom}
    profile = merge_profile(load_profile("calm"), TASKS)
    return Testbed(
        data, profile=profile, seed=seed, mode=mode, overrides=overrides, fake_limit=None
    )


async def _main(args: argparse.Namespace) -> FloodReport:
    out = args.out / f"flood-{time.strftime('%Y%m%d-%H%M%S')}"
    print("starting fake vendors and jobline ...", flush=True)
    async with flood_testbed(out / "data", args.slots, args.mode, args.seed, args.headroom) as tb:
        print(
            f"baseline, then flood: {args.duration:g}s each against {tb.config.gateway.public_url}",
            flush=True,
        )
        return await flood(
            tb,
            out,
            duration=args.duration,
            tenants=args.tenants,
            flooders=args.flooders,
            flood_cap=args.flood_cap,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.flood", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--tenants", type=int, default=3, help="quiet accounts")
    parser.add_argument("--flooders", type=int, default=8, help="users of the flooding account")
    parser.add_argument("--flood-cap", type=int, default=300, help="the flooder's jobs in flight")
    parser.add_argument("--slots", type=int, default=4, help="concurrency of each vendor")
    parser.add_argument(
        "--headroom", type=int, default=None, help="[fairness] headroom (default: jobline.toml's)"
    )
    parser.add_argument("--mode", choices=("ray", "in-process"), default="ray")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    report = asyncio.run(_main(args))
    print()
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
