"""``jobline simulate``: one run with its capacity report, or an exploration of many seeds.

    jobline simulate --jobs 100000 --profile flaky          # a report, a JSON file, a picture
    jobline simulate --traffic traffic.toml --rate 20 --duration 3600
    jobline simulate --seed 7 --faults outage:fal@60+30,crash:processor-replicate@90+3
    jobline simulate --explore --seeds 1-1000               # short fault schedules, one a seed
    jobline simulate --explore --seeds 1-50 --broken ignore-slot-limit   # must fail

The exit status is 1 when an invariant broke (or a seed failed), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from actors.wiring import Customization, all_roles
from loadtests.chaos.broken import broken_build
from loadtests.sim.explore import (
    EXPLORE_JOBS,
    Finding,
    describe,
    explore,
    explore_settings,
    explore_traffic,
    parse_seeds,
    shrink,
)
from loadtests.sim.faults import format_schedule, parse_schedule
from loadtests.sim.report import build_report, render_text, save_json, save_picture
from loadtests.sim.run import SimResult, SimSettings, simulate
from loadtests.sim.traffic import Traffic, check_models, load_traffic
from runtime.config import load_config
from vendors_fake.profile import load_profile

DEFAULT_RATE = 2.0  # jobs/s: what jobline.toml's 14 vendor slots carry under the flaky profile


def run_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        profile = load_profile(args.profile)
        customization = broken_build(args.broken) or Customization()
        if args.explore:
            return _explore(args, config, profile, customization)
        traffic = _traffic(args)
        check_models(traffic, config)
        roles = all_roles(config, gateways=1)
        faults = parse_schedule(args.faults, list(config.vendors), roles)
        out = args.out or Path("results") / f"simulate-{args.seed}"
        out.mkdir(parents=True, exist_ok=True)  # before the run, not after it
        if args.trace is not None:
            args.trace.open("w").close()
    except (ValueError, OSError, KeyError) as exc:
        print(f"jobline simulate: {exc}", file=sys.stderr)
        return 2
    settings = SimSettings(
        config,
        profile,
        traffic,
        seed=args.seed,
        faults=faults,
        customization=customization,
        trace_file=args.trace,
    )
    result = _run_with_progress(settings, traffic, quiet=args.no_progress)
    report = build_report(result)
    save_json(report, out / "report.json")
    save_picture(result, out / "report.png")
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(render_text(report, process_cpu=time.process_time()))
        print(f"  report                 {out / 'report.json'}  {out / 'report.png'}")
        if not result.ok:
            print("\n  the trace before the first violation:")
            print("\n".join(f"    {line}" for line in result.context[-25:]))
    return 0 if result.ok else 1


def _traffic(args: argparse.Namespace) -> Traffic:
    if args.traffic is not None:
        base = load_traffic(args.traffic)
        return base.with_overrides(rate=args.rate, duration=args.duration, jobs=args.jobs)
    jobs = args.jobs if args.jobs is not None or args.duration is not None else 2000
    return Traffic(rate=args.rate or DEFAULT_RATE, duration=args.duration, jobs=jobs)


def _run_with_progress(settings: SimSettings, traffic: Traffic, *, quiet: bool) -> SimResult:
    if quiet or not sys.stderr.isatty():
        return simulate(settings)
    from tqdm import tqdm

    expected = traffic.rate * (traffic.duration or 0)  # may be huge: 1e308 s of arrivals
    total = traffic.jobs or (int(expected) if expected < 1e12 else 0)
    bar = tqdm(total=total, unit="job", desc="simulating", file=sys.stderr, smoothing=0.1)

    def progress(ended: int, accepted: int) -> None:
        bar.total = max(total, accepted)
        bar.update(ended - bar.n)

    try:
        return simulate(dataclasses.replace(settings, progress=progress))
    finally:
        bar.close()


EXPLORE_IGNORES = ("--traffic", "--rate", "--duration", "--out", "--json", "--trace")


def _explore(
    args: argparse.Namespace, config: Any, profile: Any, customization: Customization
) -> int:
    ignored = [
        flag for flag in EXPLORE_IGNORES if getattr(args, flag.lstrip("-").replace("-", "_"))
    ]
    if ignored:  # a run the user did not ask for is worse than no run
        raise ValueError(
            "--explore runs short runs of its own (--seeds, --jobs, --faults, --profile and "
            f"--broken apply): {', '.join(ignored)} would not be used"
        )
    seeds = parse_seeds(args.seeds)
    traffic = explore_traffic(jobs=args.jobs or EXPLORE_JOBS)
    roles = all_roles(config, gateways=1)
    faults = parse_schedule(args.faults, list(config.vendors), roles) if args.faults else None

    def make(seed: int) -> SimSettings:
        return explore_settings(
            seed, config, profile, customization=customization, traffic=traffic, faults=faults
        )

    findings: list[Finding] = []
    started = time.perf_counter()
    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(seeds), unit="seed", desc="exploring", file=sys.stderr)
    jobs = 0
    for result in explore(seeds, make):
        jobs += result.clients.accepted
        if not result.ok:
            findings.append(Finding(result.seed, result))
        if bar is not None:  # a terminal: a bar, and the failing seeds as they come
            bar.update(1)
            bar.set_postfix(failed=len(findings))
            if not result.ok:
                bar.write(describe(result))
        elif not args.no_progress:  # a log: one line a seed, as each ends
            print(describe(result), flush=True)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - started
    print(
        f"jobline simulate --explore: {len(seeds)} seeds, {jobs} jobs in {wall:.1f} s; "
        f"{len(findings)} failed"
    )
    for finding in findings:
        _print_finding(args, finding, shrink_it=not args.no_shrink)
    return 1 if findings else 0


def _replay_command(
    args: argparse.Namespace, seed: int, jobs: int | None = None, faults: str | None = None
) -> str:
    parts = ["jobline simulate --explore", f"--seeds {seed}"]
    if args.profile != "flaky":
        parts.append(f"--profile {args.profile}")
    jobs = jobs or args.jobs
    if jobs:
        parts.append(f"--jobs {jobs}")
    faults = faults if faults is not None else args.faults
    if faults:
        parts.append(f"--faults '{faults}'")
    parts += [f"--broken {name}" for name in args.broken]
    if str(args.config) != "jobline.toml":
        parts.append(f"--config {args.config}")
    return " ".join(parts)


def _print_finding(args: argparse.Namespace, finding: Finding, *, shrink_it: bool) -> None:
    result = finding.result
    first = result.violations[0]
    at = result.context[-1].split(" ", 1)[0] if result.context else "?"
    print(f"\nseed {finding.seed}: {first} (at {at} s virtual)")
    print(f"  schedule  {format_schedule(result.faults) or '(no faults)'}")
    print(f"  replay    {_replay_command(args, finding.seed)}")
    print(f"  trace     {result.trace_hash}")
    print("  the trace before it:")
    print("\n".join(f"    {line}" for line in result.context[-20:]))
    if not shrink_it:
        return
    smaller = shrink(result.settings, first.invariant)
    if smaller.faults == result.settings.faults and smaller.traffic == result.settings.traffic:
        print("  shrunk    (nothing smaller breaks it)")
        return
    schedule = format_schedule(smaller.faults)
    command = _replay_command(args, finding.seed, smaller.traffic.jobs, schedule or "none")
    print(f"  shrunk    {schedule or '(no faults needed)'}, {smaller.traffic.jobs} jobs")
    print(f"  replay    {command}")
