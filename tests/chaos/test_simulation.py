"""The simulation (DESIGN §10): a seed replays bit for bit, the exploration of seeded fault
schedules holds every invariant, and it catches the deliberately broken builds and replays
each from its seed to the same violation. No Ray, no sockets: all in virtual time."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
import weakref
from pathlib import Path

import pytest

from loadtests.chaos.broken import broken_build
from loadtests.sim.explore import describe, explore, explore_settings
from loadtests.sim.faults import parse_schedule
from loadtests.sim.report import build_report, render_text
from loadtests.sim.run import SimSettings, simulate
from loadtests.sim.traffic import Traffic
from runtime.config import JoblineConfig, load_config
from vendors_fake.profile import preset

ROOT = Path(__file__).resolve().parents[2]
EXPLORE_SEEDS = range(1, 25)  # about a minute on a loaded 2-core CI runner
FAULTS = (
    "outage:fal@4+10,crash:processor-replicate@6+2,webhooks:replicate@2+20,"
    "lost-answers:fal@3+15,ledger-lost:ledger@9+2,crash:ledger@14+2,crash:gateway-0@16+1"
)


@pytest.fixture(scope="module")
def config() -> JoblineConfig:
    return load_config(ROOT / "jobline.toml")


def _hash_in_a_process_of_its_own(seed: int, hash_seed: str) -> str:
    script = textwrap.dedent(
        f"""
        from runtime.config import load_config
        from vendors_fake.profile import preset
        from loadtests.sim.faults import parse_schedule
        from loadtests.sim.run import SimSettings, simulate
        from loadtests.sim.traffic import Traffic
        config = load_config({str(ROOT / "jobline.toml")!r})
        roles = ["ledger", "sweeper", "processor-fal", "processor-replicate", "gateway-0"]
        faults = parse_schedule({FAULTS!r}, list(config.vendors), roles)
        traffic = Traffic(rate=12.0, jobs=150, cancel=0.1, repeat=0.1)
        result = simulate(SimSettings(config, preset("flaky"), traffic, {seed}, faults))
        print(result.trace_hash, result.events, len(result.violations))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_seed_gives_the_same_run_bit_for_bit_in_another_process() -> None:
    """Two processes with different string hashing, one seed: one trace; another seed:
    another trace."""
    first = _hash_in_a_process_of_its_own(11, "1")
    again = _hash_in_a_process_of_its_own(11, "2")
    other = _hash_in_a_process_of_its_own(12, "1")
    assert first == again
    assert first.split()[0] != other.split()[0]
    assert first.split()[2] == "0"  # and the faults broke no invariant


def test_exploring_seeded_fault_schedules_holds_every_invariant(config: JoblineConfig) -> None:
    started = time.perf_counter()
    failed = []
    jobs = 0

    def make(seed: int) -> SimSettings:
        return explore_settings(seed, config, preset("flaky"))

    for result in explore(EXPLORE_SEEDS, make):
        print(describe(result), flush=True)  # as it goes (pytest -s shows it live)
        jobs += result.clients.accepted
        if not result.ok:
            failed.append(
                (result.seed, [str(v) for v in result.violations[:3]], result.context[-15:])
            )
    assert failed == [], f"jobline simulate --explore --seeds {failed[0][0]}: {failed[0]}"
    assert jobs > 100 * len(EXPLORE_SEEDS)
    print(
        f"explored {len(EXPLORE_SEEDS)} seeds, {jobs} jobs in {time.perf_counter() - started:.1f}s"
    )


@pytest.mark.parametrize(
    ("broken", "invariant"), [("ignore-slot-limit", "I4"), ("double-submit", "I5")]
)
def test_exploration_catches_a_broken_build_and_its_seed_replays_the_violation(
    config: JoblineConfig, broken: str, invariant: str
) -> None:
    customization = broken_build([broken])
    found = []
    for seed in range(1, 4):
        result = simulate(
            explore_settings(seed, config, preset("flaky"), customization=customization)
        )
        assert not result.ok, f"seed {seed}: the {broken} build went unnoticed"
        found.append(result)
    assert any(v.invariant == invariant for r in found for v in r.violations)
    first = found[0]
    replay = simulate(
        explore_settings(first.seed, config, preset("flaky"), customization=customization)
    )
    assert replay.trace_hash == first.trace_hash
    assert replay.violations[0] == first.violations[0]
    assert replay.virtual_seconds == first.virtual_seconds


def test_a_lost_submit_answer_keeps_its_slot_at_the_vendor(config: JoblineConfig) -> None:
    """Field case of the simulation (flaky, seed 1, 500 jobs at 8/s, no other fault): a
    submit answered 5xx after the vendor created the task gave its slot back, the job's
    next attempt started another task, and replicate counted 7 tasks in flight against a
    limit of 6 (I4) at 17 s. A submit in doubt (``VendorSubmitInDoubt``) now has its
    task looked for, adopted if found, or held as an orphan with its slot
    (``actors.in_doubt``)."""
    settings = SimSettings(
        config, preset("flaky"), Traffic(rate=8.0, jobs=500), seed=1, stop_at_violation=True
    )
    result = simulate(settings)
    assert result.violations == []
    assert result.clients.accepted == 500


def test_faults_come_in_where_the_schedule_says(config: JoblineConfig) -> None:
    roles = ["ledger", "sweeper", "processor-fal", "processor-replicate", "gateway-0"]
    faults = parse_schedule(FAULTS, list(config.vendors), roles)
    traffic = Traffic(rate=12.0, jobs=150, cancel=0.1, repeat=0.1)
    result = simulate(SimSettings(config, preset("flaky"), traffic, 3, faults))
    assert result.ok, result.violations[:3]
    assert result.counts.retries > 0 and result.counts.op_errors > 0  # outage, lost answers
    by_status = {job.status.value for job in result.jobs}
    assert by_status <= {"completed", "failed", "canceled"}
    assert result.clients.accepted == 150 and len(result.jobs) == 150


def test_a_failover_the_ledger_refused_leaves_the_job_to_the_sweeper(config: JoblineConfig) -> None:
    """Field case of the simulation (flaky, seed 1; fal down and the ledger's writes failing
    now and then, both for a minute): fal's circuit opened and its queued jobs were handed
    to replicate in background steps; when the ledger refused one of those writes, the
    step died with the exception nobody retrieved and the job stayed "held" by fal's
    processor, which then refused the sweeper's hand-back: the job sat until its deadline
    (15 minutes) and was refunded. The writes that end an attempt are now retried until
    they land or the deadline passes (``actors.ledger_writes``), and a background step
    that fails is logged, not left for asyncio to complain about."""
    roles = ["ledger", "sweeper", "processor-fal", "processor-replicate", "gateway-0"]
    faults = parse_schedule("outage:fal@1+60,ledger-flaky:ledger@1+60", list(config.vendors), roles)
    traffic = Traffic(rate=10.0, jobs=150, accounts=2)
    result = simulate(SimSettings(config, preset("flaky"), traffic, 1, faults))
    assert result.violations == [] and result.unhandled == 0
    assert result.counts.expired == 0
    assert result.virtual_seconds < 400  # over long before any deadline


def test_a_processor_restarted_while_the_ledger_is_down_waits_for_it(config: JoblineConfig) -> None:
    """Field case of the exploration (seeds 2-6 of ``--explore``, found when a fault task's
    error stopped being dropped): replicate's processor crashed while the ledger was down,
    and its fresh start read its jobs from the ledger, met ``LedgerUnavailable`` and gave
    up. The role stayed broken for the rest of the run: of 400 jobs at 4/s, 212 expired and
    were refunded at their deadline (on Ray, a role whose start failed answers every call
    with that error until it is restarted by hand). A processor's start now reads again
    with backoff until the ledger answers (``VendorProcessor.start``)."""
    roles = ["ledger", "sweeper", "processor-fal", "processor-replicate", "gateway-0"]
    faults = parse_schedule(
        "ledger-down:ledger@20+10,crash:processor-replicate@22+3", list(config.vendors), roles
    )
    result = simulate(SimSettings(config, preset("flaky"), Traffic(rate=4.0, jobs=400), 1, faults))
    assert result.violations == [] and result.unhandled == 0
    assert result.counts.expired == 0
    assert result.virtual_seconds < 400  # over long before any deadline (15 minutes)


@pytest.mark.parametrize(
    ("second", "ledger", "back_at"),
    [
        ("@2.6+3.3", "", 5.9),
        ("@2.6+3.3", ",ledger-down:ledger@2.8+11.2", 14.0),
        ("@1.5+0.5", "", 3.7),  # a later, shorter crash ends no sooner than the first
    ],
)
def test_a_role_that_crashes_again_before_it_is_back_is_started_once(
    config: JoblineConfig, tmp_path: Path, second: str, ledger: str, back_at: float
) -> None:
    """Field case of the exploration (seed 2 of 40 jobs): replicate's processor crashed at
    0.9 s for 2.8 s and again at 2.6 s for 3.3 s. Each crash started a fresh processor when
    its own downtime ended, so two ran side by side and replicate counted 7 tasks in flight
    against 6 (I4); with the ledger down, the first was still waiting for it to start. A
    crash now also kills a start under way, and only the last crash starts the role, once
    the longest of them is over (a newcomer found a later, shorter crash ending the
    downtime of an earlier, longer one)."""
    roles = ["ledger", "sweeper", "processor-fal", "processor-replicate", "gateway-0"]
    schedule = f"crash:processor-replicate@0.9+2.8,crash:processor-replicate{second}{ledger}"
    faults = parse_schedule(schedule, list(config.vendors), roles)
    trace = tmp_path / "trace.txt"
    traffic = Traffic(rate=12.0, jobs=60, accounts=2)
    result = simulate(SimSettings(config, preset("flaky"), traffic, 2, faults, trace_file=trace))
    assert result.violations == [] and result.unhandled == 0
    started = [
        float(line.split()[0])
        for line in trace.read_text().splitlines()
        if line.endswith(" started processor-replicate")
    ]
    assert len(started) == 2 and started[1] >= back_at - 1e-6  # at the start, then once


def test_a_submitted_task_is_kept_through_a_ledger_restart(
    config: JoblineConfig, tmp_path: Path
) -> None:
    """Found by a newcomer (300 jobs at 12/s, ``crash:ledger@5+5``): a replicate task
    submitted at 4.96 s had its ``MarkProcessing`` fail at 5.06 s while the ledger
    restarted; the attempt "crashed", the task (billed) was cancelled, and the job ran a
    second one at 30.5 s, through the sweeper. The record is now sent again until the
    ledger answers, as the writes that end an attempt are."""
    roles = ["ledger", "sweeper", "processor-fal", "processor-replicate", "gateway-0"]
    faults = parse_schedule("crash:ledger@5+5", list(config.vendors), roles)
    trace = tmp_path / "trace.txt"
    traffic = Traffic(rate=12.0, jobs=300)
    result = simulate(SimSettings(config, preset("flaky"), traffic, 1, faults, trace_file=trace))
    assert result.violations == [] and result.unhandled == 0
    crashed = [line for line in trace.read_text().splitlines() if "attempt crashed" in line]
    assert crashed == []


def test_two_vendor_faults_at_once_share_the_request_rates(
    config: JoblineConfig, tmp_path: Path
) -> None:
    """Field case of the exploration (seed 19): a 429 storm on replicate during its hangs
    asked for hang 0.1 + rate_limited 0.9 + the flaky profile's server_error 0.02 of its
    submits; the merged profile was refused (rates above 1), the storm's task died and the
    run went on without the storm. Each fault now takes the rate it names and the rates
    already there share the rest."""
    roles = ["ledger", "sweeper", "processor-fal", "processor-replicate", "gateway-0"]
    faults = parse_schedule(
        "hangs:replicate@10.8+14.9,storm-429:replicate@13.2+5.2", list(config.vendors), roles
    )
    trace = tmp_path / "trace.txt"
    traffic = Traffic(rate=12.0, jobs=200)
    result = simulate(SimSettings(config, preset("flaky"), traffic, 19, faults, trace_file=trace))
    assert result.violations == [] and result.unhandled == 0
    assert result.clients.accepted == 200
    during_the_storm = [  # "<virtual s> vendor replicate submit <status> <job> <n>"
        line.split()[4]
        for line in trace.read_text().splitlines()
        if " vendor replicate submit " in line and 13.2 <= float(line.split()[0]) < 18.4
    ]
    assert during_the_storm.count("429") >= 3  # the storm came in over the hangs
    assert during_the_storm.count("429") > during_the_storm.count("201")


def test_exploring_many_seeds_in_one_process_keeps_no_memory_per_seed(
    config: JoblineConfig,
) -> None:
    """Field case: exploring grew by ~5 MB a seed (aiohttp's process-wide cache of
    middleware chains kept every run's gateway application, and through it the run)."""
    traffic = Traffic(rate=12.0, jobs=40, accounts=2)

    def run(seed: int) -> None:
        result = simulate(explore_settings(seed, config, preset("flaky"), traffic=traffic))
        assert result.ok, result.violations[:3]

    run(1)  # caches the process fills once (imports, the fakes' images)
    tracemalloc.start()
    try:
        run(2)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for seed in range(3, 7):
            run(seed)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4 * 256 * 1024, f"{grown / 2**20:.1f} MB kept by 4 more seeds"
    assert gc.get_freeze_count() == 0  # what a run sets aside from the collector comes back


def test_garbage_left_before_a_run_is_not_kept_by_it(config: JoblineConfig) -> None:
    """Found by a newcomer: a run sets what lives before it aside from the collector
    (``gc.freeze``), and with it the cyclic garbage of the run before, which then was
    never collected: an exploration grew by ~6 MB a seed (459 MB after 50 seeds)."""

    class Cycle:
        me: Cycle

    garbage = Cycle()
    garbage.me = garbage
    left = weakref.ref(garbage)
    del garbage
    traffic = Traffic(rate=12.0, jobs=5, accounts=1)
    simulate(explore_settings(1, config, preset("calm"), traffic=traffic))
    assert left() is None


def test_letting_go_of_long_ended_vendor_tasks_changes_nothing_jobline_or_the_report_sees(
    config: JoblineConfig,
) -> None:
    """A long run held every fake task it made (and each failed prediction's rendered JSON,
    logs included): 100k flaky jobs peaked at 1.3 GB. The fakes now let go of tasks ended
    beyond the horizon jobline can ask about, counted into the report first: the same run
    keeping every task has the same trace and the same vendor figures."""
    traffic = Traffic(rate=0.1, jobs=600, accounts=2)
    kept = simulate(SimSettings(config, preset("flaky"), traffic, 5, task_horizon=math.inf))
    let_go = simulate(SimSettings(config, preset("flaky"), traffic, 5))
    assert kept.ok and let_go.ok, (kept.violations[:3], let_go.violations[:3])
    assert kept.tasks_let_go == 0 and let_go.tasks_let_go > 100
    assert let_go.trace_hash == kept.trace_hash
    assert let_go.vendors == kept.vendors


def test_the_report_says_what_the_run_cost_in_cpu_per_1000_jobs(config: JoblineConfig) -> None:
    result = simulate(SimSettings(config, preset("flaky"), Traffic(rate=10.0, jobs=40), 3))
    report = build_report(result)
    run = report["run"]
    assert len(result.jobs) == 40 and result.cpu_seconds > 0
    assert run["cpu_seconds"] == round(result.cpu_seconds, 3)
    assert run["cpu_seconds_per_1000_jobs"] == round(result.cpu_seconds / 40 * 1000, 3)
    text = render_text(report, process_cpu=12.5)
    assert f"{run['cpu_seconds_per_1000_jobs']} s per 1,000 jobs; 12.5 s with start-up" in text


@pytest.mark.timeout(60, method="thread")  # a hang inside the loop swallows a signal
def test_a_check_that_raises_ends_the_run_with_a_finding_instead_of_running_forever(
    config: JoblineConfig,
) -> None:
    """Field case: the sampler (the per-second checks, the progress bar) raised, nothing
    ended the run, and virtual time ran on forever with the gateway's revocation poll."""

    def progress(ended: int, accepted: int) -> None:
        if ended >= 5:
            raise RuntimeError("the progress bar broke")

    traffic = Traffic(rate=10.0, jobs=30)
    result = simulate(SimSettings(config, preset("flaky"), traffic, 3, progress=progress))
    first = result.violations[0]  # then the jobs it left open (I3)
    assert first.invariant == "bug" and "the progress bar broke" in first.detail
