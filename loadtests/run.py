"""``make loadtest``: jobline under Locust, then the invariants.

Starts fake vendors (enforcing each vendor's concurrency limit) and the runtime on a
local Ray with a funded account (``loadtests.testbed.Testbed``), runs the scenarios of
``loadtests/locustfile.py`` headless in a subprocess (Locust patches the process with
gevent) for the given time and load shape, waits until everything is quiet (no job
queued or processing, no webhook in the air), checks the ledger's invariants, and
prints one screen. The CSV files, the HTML report, Locust's log, the ledger database
and ``summary.json`` stay under ``results/loadtest-<time>/``.

    python -m loadtests.run --shape steady --duration 60
    python -m loadtests.run --shape spike --duration 120 --users 40 --profile flaky

Exit status 1 when an invariant is violated, a vendor saw more tasks than its limit,
a vendor task was started twice for one attempt, or a job never ended.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from loadtests.chaos.checks import paid_work
from loadtests.chaos.report import PaidWork
from loadtests.testbed import TERMINAL, Testbed
from runtime.invariants import check_invariants

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SHAPES = ("steady", "ramp", "spike")
MODELS = ["flux-schnell", "sdxl"]
QUIET_TIMEOUT = 180.0  # seconds to wait after the load for every job to end
LEDGER = "ledger"


@dataclass
class LocustRow:
    """One line of Locust's ``*_stats.csv``."""

    method: str
    name: str
    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class LoadtestReport:
    shape: str
    duration: float
    users: int
    profile: str
    out: str
    locust_exit: int
    rows: list[LocustRow]
    failures: list[dict[str, Any]]  # Locust's failures: method, name, error, occurrences
    jobs: dict[str, int]  # by status, after the quiet period
    vendors: dict[str, dict[str, Any]]  # name -> max_in_flight, limit, duplicate_attempts
    quiet: bool
    violations: list[str] = field(default_factory=list)
    paid_work: list[PaidWork] = field(default_factory=list)  # billed, delivered, wasted

    @property
    def total(self) -> LocustRow | None:
        return next((row for row in self.rows if row.name == "Aggregated"), None)

    @property
    def limits_held(self) -> bool:
        return all(
            v["limit"] is None or v["max_in_flight"] <= v["limit"] for v in self.vendors.values()
        )

    @property
    def ok(self) -> bool:
        duplicates = any(v["duplicate_attempts"] for v in self.vendors.values())
        return self.quiet and not self.violations and self.limits_held and not duplicates

    def row(self, name: str) -> LocustRow | None:
        return next((row for row in self.rows if row.name == name), None)

    def render(self) -> str:
        total = self.total
        lines = [
            f"jobline loadtest: shape {self.shape}, {self.duration:g}s, up to {self.users} users, "
            f"fake vendors '{self.profile}'",
            "",
        ]
        if total is not None:
            lines.append(
                f"  requests        {total.requests:,} at {total.requests_per_s:,.1f}/s   "
                f"failures {total.failures:,}   p50 {total.p50_ms:,.0f} ms  "
                f"p99 {total.p99_ms:,.0f} ms"
            )
        width = max((len(row.name) for row in self.rows), default=10)
        for row in self.rows:
            if row.name == "Aggregated":
                continue
            lines.append(
                f"    {row.name:<{width}}  {row.requests:>7,}  {row.requests_per_s:>7.1f}/s  "
                f"fail {row.failures:>5,}  p50 {row.p50_ms:>6,.0f} ms  p99 {row.p99_ms:>6,.0f} ms"
            )
        for failure in self.failures[:8]:
            lines.append(
                f"  failure         {failure['occurrences']:>5}x  {failure['name']}: "
                f"{failure['error'][:90]}"
            )
        jobs = "  ".join(f"{status} {n}" for status, n in self.jobs.items() if n)
        lines.append(f"  jobs by status  {jobs or 'none'}" + ("" if self.quiet else "  NOT QUIET"))
        lines.append("  highest in flight (as counted by the fake vendor)")
        for name, v in self.vendors.items():
            verdict = "ok" if v["limit"] is None or v["max_in_flight"] <= v["limit"] else "OVER"
            duplicates = len(v["duplicate_attempts"])
            dup = f"  {duplicates} duplicate starts" if duplicates else ""
            lines.append(
                f"    {name:<12} {v['max_in_flight']} / limit {v['limit']}   {verdict}{dup}"
            )
        lines.append("  wasted vendor work (billed tasks whose output was thrown away)")
        for work in self.paid_work:
            own = "?" if work.jobline_wasted is None else str(work.jobline_wasted)
            lines.append(
                f"    {work.vendor:<12} {work.wasted - work.late_orphans} wasted + "
                f"{work.late_orphans} late orphans (fake: billable {work.billable}, delivered "
                f"{work.delivered}; jobline counted {own})"
            )
        verdict = "all held" if not self.violations else f"{len(self.violations)} VIOLATIONS"
        lines.append(f"  invariants I1 I2 I5  {verdict}")
        for violation in self.violations[:10]:
            lines.append(f"    {violation}")
        lines.append(f"  report          {self.out}/report.html")
        lines.append("  verdict         " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


# --- the parts ----------------------------------------------------------------------------


def write_target(tb: Testbed, path: Path, models: list[str] | None = None) -> Path:
    """The locustfile's target: the account's API key and the vendors' webhook secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    vendors = {
        name: {"api": vendor.api, "webhook_secret": vendor.webhook_secret() or ""}
        for name, vendor in tb.config.vendors.items()
    }
    data = {"api_key": tb.client.api_key, "models": models or MODELS, "vendors": vendors}
    path.write_text(json.dumps(data, indent=2))
    return path


def locust_command(host: str, out: Path, shape: str, duration: float, users: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "--load-shape",
        shape,
        "-u",
        str(users),
        "-t",
        f"{max(int(duration), 1)}s",
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "report.html"),
        "--only-summary",
        "--exit-code-on-error",
        "1",
    ]


async def run_locust(
    host: str,
    target: Path,
    out: Path,
    *,
    shape: str = "steady",
    duration: float = 60.0,
    users: int = 20,
    progress: bool = False,
) -> int:
    """Run the locustfile headless in a subprocess; its exit status. Output: ``out``."""
    env = {
        **os.environ,
        "JOBLINE_LOADTEST_TARGET": str(target),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with _log_file(out) as log:
        process = await asyncio.create_subprocess_exec(
            *locust_command(host, out, shape, duration, users),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        started = time.monotonic()
        while process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), timeout=1.0)
            except TimeoutError:
                if progress:
                    _progress(time.monotonic() - started, duration)
                if time.monotonic() - started > duration + 120:
                    process.kill()
                    await process.wait()
                    raise RuntimeError(f"locust did not stop; see {out / 'locust.log'}") from None
    if progress and sys.stderr.isatty():
        print(file=sys.stderr)
    return process.returncode


def _log_file(out: Path) -> BinaryIO:
    out.mkdir(parents=True, exist_ok=True)
    return open(out / "locust.log", "wb")  # the caller closes it


def _progress(elapsed: float, duration: float) -> None:
    """A bar redrawn in place on a terminal; a line every 10 s otherwise (CI logs)."""
    share = min(elapsed / max(duration, 1e-9), 1.0)
    bar = "#" * int(30 * share) + "." * (30 - int(30 * share))
    line = f"  load  [{bar}] {elapsed:4.0f}/{duration:g}s"
    if sys.stderr.isatty():
        print("\r" + line, end="", file=sys.stderr, flush=True)
    elif int(elapsed) % 10 == 0:
        print(line, file=sys.stderr, flush=True)


def read_stats(out: Path) -> tuple[list[LocustRow], list[dict[str, Any]]]:
    """Locust's per-request rows and its failures, from the CSV files under ``out``."""
    rows = []
    with open(out / "locust_stats.csv", newline="") as file:
        for record in csv.DictReader(file):
            rows.append(
                LocustRow(
                    method=record["Type"],
                    name=record["Name"],
                    requests=int(record["Request Count"]),
                    failures=int(record["Failure Count"]),
                    requests_per_s=float(record["Requests/s"]),
                    p50_ms=_number(record.get("50%")),
                    p99_ms=_number(record.get("99%")),
                )
            )
    failures = []
    path = out / "locust_failures.csv"
    if path.exists():
        with open(path, newline="") as file:
            for record in csv.DictReader(file):
                failures.append(
                    {
                        "method": record["Method"],
                        "name": record["Name"],
                        "error": record["Error"],
                        "occurrences": int(record["Occurrences"]),
                    }
                )
    failures.sort(key=lambda f: -int(f["occurrences"]))
    return rows, failures


def _number(raw: str | None) -> float:
    try:
        return float(raw or 0)
    except ValueError:  # "N/A"
        return 0.0


async def wait_quiet(tb: Testbed, timeout: float = QUIET_TIMEOUT) -> tuple[bool, dict[str, int]]:
    """Until no job is queued or processing and no fake has a webhook in the air."""
    deadline = time.monotonic() + timeout
    while True:
        counts: dict[str, int] = await tb.call(LEDGER, "counts")
        open_jobs = sum(n for status, n in counts.items() if status not in TERMINAL)
        pending = sum(fake.pending_webhooks for fake in tb.fakes.vendors.values())
        if open_jobs == 0 and pending == 0:
            return True, counts
        if time.monotonic() > deadline:
            return False, counts
        await asyncio.sleep(0.5)


def vendor_report(tb: Testbed) -> dict[str, dict[str, Any]]:
    report = {}
    for name in tb.config.vendors:
        stats = tb.fake_stats(name)
        report[name] = {
            "max_in_flight": stats["tasks"]["max_in_flight"],
            "limit": stats["concurrency_limit"],
            "tasks": stats["tasks"]["created"],
            "duplicate_attempts": stats["duplicate_attempts"],
        }
    return report


async def loadtest(
    tb: Testbed,
    out: Path,
    *,
    shape: str = "steady",
    duration: float = 60.0,
    users: int = 20,
    progress: bool = False,
    quiet_timeout: float = QUIET_TIMEOUT,
) -> LoadtestReport:
    """Run the scenarios against a started Testbed and check everything afterwards."""
    target = write_target(tb, out / "target.json")
    exit_code = await run_locust(
        tb.config.gateway.public_url,
        target,
        out,
        shape=shape,
        duration=duration,
        users=users,
        progress=progress,
    )
    rows, failures = read_stats(out)
    quiet, counts = await wait_quiet(tb, quiet_timeout)
    violations = await asyncio.to_thread(check_invariants, tb.config.storage.database)
    fake_stats = {name: tb.fake_stats(name) for name in tb.config.vendors}
    processors = {name: await tb.call(f"processor-{name}", "stats") for name in tb.config.vendors}
    work = await asyncio.to_thread(paid_work, tb.config, fake_stats, processors)
    report = LoadtestReport(
        shape=shape,
        duration=duration,
        users=users,
        profile=tb.profile if isinstance(tb.profile, str) else "custom",
        out=str(out),
        locust_exit=exit_code,
        rows=rows,
        failures=failures,
        jobs=dict(sorted(counts.items())),
        vendors=vendor_report(tb),
        quiet=quiet,
        violations=[str(v) for v in violations],
        paid_work=work,
    )
    (out / "summary.json").write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return report


async def _main(args: argparse.Namespace) -> LoadtestReport:
    out = args.out / f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"starting fake vendors ('{args.profile}') and jobline on a local Ray ...", flush=True)
    async with Testbed(
        out / "data",
        profile=args.profile,
        seed=args.seed,
        credits=10_000_000,
        fake_limit=None,  # the fakes enforce each vendor's limit and report the highest
    ) as tb:
        print(
            f"load: {args.shape}, up to {args.users} users for {args.duration:g}s "
            f"against {tb.config.gateway.public_url}",
            flush=True,
        )
        report = await loadtest(
            tb,
            out,
            shape=args.shape,
            duration=args.duration,
            users=args.users,
            progress=True,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--shape", choices=SHAPES, default="steady")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--users", type=int, default=20, help="peak simulated users")
    parser.add_argument("--profile", default="calm", help="the fake vendors' fault profile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    report = asyncio.run(_main(args))
    print()
    print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
