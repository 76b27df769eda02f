"""Run chaos scenarios: fakes, runtime, load, faults, quiet, the full check, a report.

    jobline chaos                          every scenario, seeds 1 2 3
    jobline chaos --scenario ledger-kill --seed 7
    jobline chaos --json                   the reports as JSON (for CI)

One run of a scenario: fake vendors on free loopback ports (counting, not enforcing,
each vendor's limit, so the highest in-flight count is jobline's own restraint), the
runtime (on the harness's Ray, or in a child process), a funded account, the load and
the fault schedule side by side, then a wait until everything is quiet (no open job in
the ledger, no vendor task or webhook in the air, no processor slot taken), then the full
check of ``loadtests.chaos.checks``. A failing run prints its seed and the command that
replays it. Every random choice comes from a ``random.Random`` seeded by name and seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.chaos.broken import broken_build
from loadtests.chaos.checks import (
    full_check,
    open_jobs,
    paid_work,
    read_entries,
    read_history,
    read_jobs,
)
from loadtests.chaos.load import Load
from loadtests.chaos.report import ScenarioReport, VendorLoad, render_summary, to_json
from loadtests.chaos.scenarios import FAST, QUICK, SCENARIOS, ChaosContext, Scenario
from loadtests.chaos.stage import ChildRuntime, SharedRay, Stage
from loadtests.testbed import ROOT_CONFIG, ensure_dev_secrets, local_config
from runtime.config import JoblineConfig, load_config
from runtime.models import Violation

DEFAULT_SEEDS = (1, 2, 3)
FAKE_LIMIT = 10_000  # the fakes count in-flight tasks but never refuse one
VENDOR_QUIET_TIMEOUT = 20.0  # seconds for vendor tasks and webhooks to end after the jobs


def replay_command(name: str, seed: int, broken: frozenset[str] = frozenset()) -> str:
    extra = "".join(f" --broken {b}" for b in sorted(broken))
    return f"jobline chaos --scenario {name} --seed {seed}{extra}"


async def run_scenario(
    name: str,
    seed: int,
    *,
    data: Path | None = None,
    base_config: Path = ROOT_CONFIG,
    broken: frozenset[str] = frozenset(),
) -> ScenarioReport:
    """Run one scenario with one seed; never raises for what the scenario finds."""
    scenario = SCENARIOS[name]
    report = ScenarioReport(name, seed, replay_command(name, seed, broken))
    started = time.monotonic()
    own_data = data is None
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-")) if data is None else data
    try:
        await _run(scenario, seed, workdir, base_config, broken, report)
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    finally:
        report.duration = time.monotonic() - started
        if own_data and report.passed:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not report.passed:
            report.faults.append(f"data kept in {workdir}")
    return report


async def _run(
    scenario: Scenario,
    seed: int,
    workdir: Path,
    base_config: Path,
    broken: frozenset[str],
    report: ScenarioReport,
) -> None:
    from vendors_fake.profile import merge_profile, preset
    from vendors_fake.runner import start_fake_vendors

    base = load_config(base_config)
    ensure_dev_secrets(base)
    profile = merge_profile(preset("calm"), dict(scenario.profile))
    profile = profile.model_copy(update={"concurrency_limit": FAKE_LIMIT})
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    fakes = await start_fake_vendors(base, profile, ports="free", seed=seed)
    try:
        overrides: dict[str, dict[str, Any]] = {
            "ray": {"namespace": f"chaos-{secrets.token_hex(4)}"}
        }
        for section, values in (*FAST.items(), *scenario.overrides.items()):
            overrides[section] = {**overrides.get(section, {}), **values}
        config = local_config(base, workdir, fakes.urls, overrides=overrides)
        stage = _stage(scenario, config, seed, broken)
        await stage.start()
        try:
            await _drive(scenario, seed, config, fakes, stage, report)
        finally:
            await stage.stop()
    finally:
        await fakes.stop()


def _stage(scenario: Scenario, config: JoblineConfig, seed: int, broken: frozenset[str]) -> Stage:
    if scenario.hosting == "shared":
        return SharedRay(config, seed, broken)
    if broken:
        raise ValueError("broken builds run on the shared Ray only")
    return ChildRuntime(config, seed, "serve" if scenario.hosting == "child" else "cluster")


async def _drive(
    scenario: Scenario,
    seed: int,
    config: JoblineConfig,
    fakes: Any,
    stage: Stage,
    report: ScenarioReport,
) -> None:
    import random

    # The faults draw from their own stream, so the load's timing cannot change them.
    rng = random.Random(f"{scenario.name}:{seed}:faults")
    load_rng = random.Random(f"{scenario.name}:{seed}:load")
    base_url = config.gateway.public_url
    admin = {"Authorization": f"Bearer {config.gateway.admin_token()}"}
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        credits = scenario.credits if scenario.credits is not None else 10_000_000
        async with http.post(
            f"{base_url}/v1/accounts", json={"name": "chaos", "credits": credits}, headers=admin
        ) as response:
            account = await response.json()
            if response.status != 201:
                raise RuntimeError(f"cannot create the account: {response.status} {account}")
        load = Load(
            base_url, account["api_key"], scenario.load, load_rng, f"{scenario.name}-{seed}"
        )
        ctx = ChaosContext(config, fakes, stage, load, rng, http, report)
        load_task = asyncio.create_task(load.run(http))
        fault_task = asyncio.create_task(scenario.faults(ctx))
        try:
            await asyncio.wait_for(asyncio.shield(load_task), scenario.quiet_timeout * 2)
        except TimeoutError:
            report.error = "the load did not finish in time"
            load.stop()
            await load_task
        await fault_task
        quiet_problems = await _wait_quiet(config, fakes, stage, scenario.quiet_timeout)
        await load.observe_all(http)  # one last look: a terminal status must not have moved
        processors = await _processor_stats(stage)
    fake_stats = {name: fakes[name].snapshot() for name in config.vendors}
    found = full_check(config, load, fake_stats, processors, scenario.expect)
    report.add_violations([*ctx.findings, *quiet_problems, *found])
    _count(report, config, load, fake_stats)
    report.paid_work = paid_work(config, fake_stats, processors)


async def _wait_quiet(
    config: JoblineConfig, fakes: Any, stage: Stage, timeout: float
) -> list[Violation]:
    """Until no job is open and no processor slot is taken; then until no vendor task or
    webhook is in the air. What is left is reported: an open job breaks I3; a slot still
    taken, or a vendor task still running for a job that ended, breaks I4 (jobline lost
    track of a task that keeps using the vendor's capacity)."""
    deadline = time.monotonic() + timeout
    db = config.storage.database
    slots: dict[str, int] = {}
    while True:
        still_open = await asyncio.to_thread(open_jobs, db)
        if not still_open:
            stats = await _processor_stats(stage)
            slots = {v: s["inflight"] for v, s in (stats or {}).items() if s["inflight"]}
            if stats is not None and not slots:
                break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    problems = [
        Violation("I3", job, "not terminal when the scenario should have gone quiet")
        for job in still_open
    ]
    problems += [
        Violation("I4", vendor, f"{n} slots still taken once every job ended")
        for vendor, n in slots.items()
    ]
    vendor_deadline = time.monotonic() + VENDOR_QUIET_TIMEOUT
    while time.monotonic() < vendor_deadline:
        if not any(f.stats.in_flight or f.pending_webhooks for f in fakes.vendors.values()):
            break
        await asyncio.sleep(0.25)
    for name, fake in fakes.vendors.items():
        for task in fake.tasks.values():
            if not task.phase.ended:
                problems.append(
                    Violation(
                        "I4",
                        f"{name}/{task.id}",
                        f"vendor task of job {task.job_id} (attempt {task.attempt}) still "
                        f"running {VENDOR_QUIET_TIMEOUT:g}s after everything went quiet",
                    )
                )
    return problems


async def _processor_stats(stage: Stage) -> dict[str, dict[str, Any]] | None:
    try:
        return await asyncio.wait_for(stage.processor_stats(), 60)
    except Exception:
        return None


def _count(
    report: ScenarioReport,
    config: JoblineConfig,
    load: Load,
    fake_stats: dict[str, dict[str, Any]],
) -> None:
    db = config.storage.database
    report.submitted = len(load.jobs)
    report.accepted = len({j.job_id for j in load.accepted})
    report.refused = {
        str(status): n
        for status, n in Counter(j.refused for j in load.jobs if j.refused is not None).items()
    }
    ours = {j.job_id for j in load.accepted}
    statuses = Counter(j.status for j in read_jobs(db).values() if j.id in ours)
    report.completed = statuses["completed"]
    report.failed = statuses["failed"]
    report.canceled = statuses["canceled"]
    entries = read_entries(db)
    report.refunds = entries["release"]
    report.captures = entries["capture"]
    for _job, status, _at, detail in read_history(db):
        if status == "queued" and detail and detail.startswith("retry: "):
            if detail.startswith("retry: failover from"):
                report.failovers += 1
            else:
                report.retries += 1
    report.vendors = [
        VendorLoad(
            name,
            int(stats["tasks"]["max_in_flight"]),
            config.vendors[name].concurrency,
            int(stats["tasks"]["created"]),
        )
        for name, stats in fake_stats.items()
    ]


# --- a whole suite --------------------------------------------------------------------------


async def run_suite(
    names: Sequence[str],
    seeds: Sequence[int],
    *,
    broken: frozenset[str] = frozenset(),
    quiet: bool = False,
) -> list[ScenarioReport]:
    reports: list[ScenarioReport] = []
    total = len(names) * len(seeds)
    for name in names:
        for seed in seeds:
            if not quiet:
                print(f"[{len(reports) + 1}/{total}] {name} seed {seed} ...", file=sys.stderr)
            report = await run_scenario(name, seed, broken=broken)
            reports.append(report)
            if not quiet:
                print(report.render(), file=sys.stderr, flush=True)
    return reports


def main(
    scenarios: Sequence[str] | None,
    seeds: Sequence[int] | None,
    *,
    as_json: bool = False,
    broken: Sequence[str] = (),
    quick: bool = False,
) -> int:
    """``jobline chaos``: exit 0 if every run held every invariant, 1 otherwise."""
    names = list(scenarios or (QUICK if quick else SCENARIOS))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(
            f"jobline chaos: unknown scenario {', '.join(unknown)} (known: {', '.join(SCENARIOS)})",
            file=sys.stderr,
        )
        return 2
    try:
        broken_build(broken)
    except ValueError as exc:
        print(f"jobline chaos: {exc}", file=sys.stderr)
        return 2
    run_seeds = list(seeds or ((DEFAULT_SEEDS[0],) if quick else DEFAULT_SEEDS))
    from actors.hosting import start_local_ray, stop_local_ray

    # Ray writes to file descriptor 1 from its own threads and processes: send that to
    # stderr with the progress, so stdout holds only the summary (or the JSON).
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    started_ray = False
    if any(SCENARIOS[n].hosting == "shared" for n in names):
        # The actors read their secrets from the environment Ray's workers inherit.
        ensure_dev_secrets(load_config(ROOT_CONFIG))
        started_ray = start_local_ray()
    started = time.monotonic()
    try:
        reports = asyncio.run(run_suite(names, run_seeds, broken=frozenset(broken), quiet=False))
    finally:
        if started_ray:
            with contextlib.suppress(Exception):
                stop_local_ray()
    duration = time.monotonic() - started
    with out:
        out.write(to_json(reports, duration) if as_json else render_summary(reports, duration))
        out.write("\n")
    return 0 if all(r.passed for r in reports) else 1
