"""One simulation run: a world, its clients, its faults, until every job has ended.

:func:`simulate` runs on a fresh virtual-time loop and returns a :class:`SimResult`: the
trace's hash, what the invariants found (and the trace around the first finding), the
counts, and what the report draws: a sample per virtual second (open jobs, each vendor's
tasks in flight as the vendor counts them against its limit, each processor's queue) and
every job's latency.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.wiring import Customization
from loadtests.sim.clients import ClientCounts, Clients
from loadtests.sim.faults import Fault
from loadtests.sim.loop import run_virtual
from loadtests.sim.traffic import Traffic, arrivals
from loadtests.sim.watch import Counts, JobRecord
from loadtests.sim.world import World, WorldOptions, logs_in_trace
from runtime.config import JoblineConfig
from runtime.models import Violation
from vendors_fake.profile import FaultProfile

SAMPLE_EVERY = 1.0  # virtual seconds between two samples (and two I3/I4 checks)
FORGET_EVERY = 60  # samples between two lettings-go of the fakes' long-ended tasks


@dataclass
class SimSettings:
    config: JoblineConfig
    profile: FaultProfile
    traffic: Traffic
    seed: int = 1
    faults: list[Fault] = field(default_factory=list)
    customization: Customization = field(default_factory=Customization)
    full_check_first: int = 1000  # jobs ended before the first whole-database check
    stop_at_violation: bool = False  # end the run at the first violation (exploration)
    progress: Callable[[int, int], None] | None = None  # (jobs ended, jobs accepted)
    data: Path | None = None  # where the ledger's file goes (None: a temporary directory)
    trace_file: Path | None = None  # every line of the trace goes there
    # The fakes let go of tasks ended this long ago (virtual s; None: twice the longest job
    # deadline and the sweeper's grace, past which jobline never asks about them again).
    task_horizon: float | None = None


@dataclass(slots=True)
class Sample:
    t: float
    open_jobs: int
    ended: int
    vendors: dict[str, tuple[int, int, int]]  # vendor -> (in flight at the vendor, slots, queue)


@dataclass
class SimResult:
    seed: int
    trace_hash: str
    events: int
    violations: list[Violation]
    context: list[str]
    counts: Counts
    clients: ClientCounts
    jobs: list[JobRecord]
    samples: list[Sample]
    vendors: dict[str, dict[str, Any]]  # each fake's own counts
    max_in_flight: dict[str, int]
    virtual_seconds: float
    wall_seconds: float
    cpu_seconds: float  # of this process during the run (its fixed costs left out)
    results_bytes: int
    faults: list[Fault]
    settings: SimSettings
    tasks_let_go: int = 0  # fake tasks counted into the report and dropped during the run
    errors_logged: int = 0  # jobline's own error logs during the run (in the trace)
    unhandled: int = 0  # exceptions no task handled: each one is a bug
    unhandled_seen: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def simulate(settings: SimSettings) -> SimResult:
    """Run one simulation to its end (see the module docstring)."""
    owned = settings.data is None
    data = Path(tempfile.mkdtemp(prefix="jobline-sim-", dir=_scratch())) if owned else settings.data
    assert data is not None
    started, cpu = time.perf_counter(), time.process_time()
    # What lives before the run (modules, classes, the config) is set aside from the
    # cyclic garbage collector for the run: its full collections then walk only what the
    # run made (at 3,000 flaky jobs 0.37 -> 0.11 s of CPU in them). Whether and when it
    # collects never enters the trace. What an earlier run in this process left for the
    # collector is collected first: frozen, it would be kept for good (an exploration grew
    # by ~6 MB a seed).
    gc.collect()
    gc.freeze()
    try:
        result = run_virtual(_simulate(settings, data))
    finally:
        gc.unfreeze()
        if owned:
            shutil.rmtree(data, ignore_errors=True)
    result.wall_seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu
    return result


def _scratch() -> str | None:
    """Where a throw-away database goes: memory-backed ``/dev/shm`` where there is one."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


async def _simulate(settings: SimSettings, data: Path) -> SimResult:
    profiles = {name: settings.profile for name in settings.config.vendors}
    sink = None if settings.trace_file is None else settings.trace_file.open("w", encoding="utf-8")
    options = WorldOptions(
        settings.config,
        profiles,
        settings.seed,
        data,
        settings.customization,
        sink,
        task_horizon=settings.task_horizon,
    )
    try:
        world = World(options)
        with logs_in_trace(world.trace) as logs:
            result = await _run_world(settings, world)
        result.errors_logged = logs.errors
        result.unhandled = world.unhandled
        result.unhandled_seen = world.unhandled_seen
        return result
    finally:
        if sink is not None:
            sink.close()


async def _run_world(settings: SimSettings, world: World) -> SimResult:
    rng = random.Random(f"{settings.seed}:traffic")
    clients = Clients(world, settings.traffic, random.Random(f"{settings.seed}:clients"))
    stop = asyncio.Event()
    if settings.stop_at_violation:
        world.watch.on_violation = lambda _: stop.set()
    samples: list[Sample] = []
    await world.start()
    try:
        await clients.create_accounts()
        traffic = asyncio.ensure_future(clients.run(arrivals(settings.traffic, world.config, rng)))
        faults = [asyncio.ensure_future(_fault_at(world, fault)) for fault in settings.faults]
        sampler = asyncio.ensure_future(_sample(world, clients, settings, samples, traffic, stop))
        sampler.add_done_callback(lambda _: stop.set())  # a check that raised ends it too
        await stop.wait()
        for task in (traffic, *faults, sampler):
            task.cancel()
        ended = await asyncio.gather(traffic, *faults, sampler, return_exceptions=True)
        for error in ended:  # a client, a fault or a check that raised: a bug, reported
            if isinstance(error, Exception):
                world.watch.violation("bug", "simulation", repr(error))
        world.watch.finish(await world.full_check())
    finally:
        await world.stop()
    if world.unhandled:  # a task died of an exception nobody handled: a bug, whatever it broke
        first = world.unhandled_seen[0] if world.unhandled_seen else "?"
        world.watch.violation("bug", "unhandled", f"{world.unhandled} exceptions: {first}")
    result = SimResult(
        seed=settings.seed,
        trace_hash=world.trace.digest(),
        events=world.trace.events,
        violations=list(world.watch.violations),
        context=world.watch.context,
        counts=world.watch.counts,
        clients=clients.counts,
        jobs=list(world.watch.jobs.values()),
        samples=samples,
        vendors={
            name: world.vendors.summary(name, world.clock.time()) for name in world.vendors.fakes
        },
        max_in_flight={name: world.watch.max_in_flight(name) for name in world.vendors.fakes},
        virtual_seconds=world.clock.elapsed(),
        wall_seconds=0.0,
        cpu_seconds=0.0,
        results_bytes=world.results.stored_bytes,
        faults=list(settings.faults),
        settings=settings,
        tasks_let_go=world.tasks_let_go,
    )
    world.release()
    return result


async def _fault_at(world: World, fault: Fault) -> None:
    await world.clock.sleep(fault.at - world.clock.elapsed())
    await world.act(fault)


async def _sample(
    world: World,
    clients: Clients,
    settings: SimSettings,
    samples: list[Sample],
    traffic: asyncio.Future[None],
    stop: asyncio.Event,
) -> None:
    """Every virtual second: a sample, the time-bound checks; a whole-database check now
    and then; the end of the run once the clients are done and every job has ended."""
    clock = world.clock
    watch = world.watch
    check_at = settings.full_check_first
    # Past this, jobs still open can only be I3 violations: every deadline has passed.
    config = world.config
    while True:
        await clock.sleep(SAMPLE_EVERY)
        now = clock.elapsed()
        watch.tick()
        samples.append(await _one_sample(world, now))
        if len(samples) % FORGET_EVERY == 0:
            world.tasks_let_go += world.forget_old_tasks()
        if settings.progress is not None:
            settings.progress(len(watch.ended), clients.counts.accepted)
        if len(watch.ended) >= check_at:  # at 1000, 2000, 4000, ... jobs: a bounded share
            check_at *= 2
            found = await world.full_check()
            world.trace.add("full-check", len(found))
            for violation in found:
                detail = f"(database) {violation.detail}"
                watch.violation(violation.invariant, violation.subject, detail)
        if traffic.done() and watch.open == 0:
            stop.set()
            return
        if traffic.done() and now > watch.last_deadline + watch.grace + config.sweeper.interval:
            stop.set()  # finish() reports what is still open
            return


async def _one_sample(world: World, now: float) -> Sample:
    vendors: dict[str, tuple[int, int, int]] = {}
    for name, fake in world.vendors.fakes.items():
        processor = world.processor(name)
        slots = queue = 0
        if processor is not None:
            stats = await processor.stats()
            slots, queue = stats["inflight"], stats["queued"]
        vendors[name] = (fake.core.stats.in_flight, slots, queue)
    return Sample(now, world.watch.open, len(world.watch.ended), vendors)
