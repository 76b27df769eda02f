"""Exploration: many short seeded fault schedules, each run with the invariants checked as
it goes; a failing seed is replayed exactly, and its schedule shrunk.

For a seed, :func:`explore_settings` draws everything at once from it: the fault schedule
(1 to 4 faults from ``loadtests.sim.faults`` at random moments of the arrivals), and the
run's own seed (traffic, vendors' fates, every role's generator). A run stops at its first
violation. So ``jobline simulate --explore --seeds 17`` runs seed 17's schedule again, to
the same violation at the same virtual moment, with the same trace hash.

:func:`shrink` then looks for a smaller schedule that still breaks the same invariant:
each fault is dropped in turn while the violation stays, then the jobs are halved while it
stays. The smaller schedule is printed as a ``--faults`` command of its own.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from actors.wiring import Customization, all_roles
from loadtests.sim.faults import Fault, draw_schedule
from loadtests.sim.run import SimResult, SimSettings, simulate
from loadtests.sim.traffic import Traffic
from runtime.config import JoblineConfig
from vendors_fake.profile import FaultProfile

EXPLORE_JOBS = 200
EXPLORE_RATE = 12.0


def explore_traffic(jobs: int = EXPLORE_JOBS, rate: float = EXPLORE_RATE) -> Traffic:
    """Short and busy: a few accounts, cancels and repeated keys, arrivals over ~15 s."""
    return Traffic(rate=rate, jobs=jobs, accounts=4, cancel=0.05, repeat=0.05)


def explore_settings(
    seed: int,
    config: JoblineConfig,
    profile: FaultProfile,
    *,
    customization: Customization | None = None,
    traffic: Traffic | None = None,
    faults: list[Fault] | None = None,
) -> SimSettings:
    """Seed ``seed``'s run: its traffic, its drawn fault schedule (or ``faults``: a shrunk
    one); it stops at the first violation."""
    traffic = traffic or explore_traffic()
    span = (traffic.jobs or 0) / traffic.rate if traffic.jobs else (traffic.duration or 60.0)
    rng = random.Random(f"{seed}:schedule")
    roles = all_roles(config, gateways=1)
    drawn = draw_schedule(rng, list(config.vendors), roles, span)
    schedule = drawn if faults is None else faults
    return SimSettings(
        config=config,
        profile=profile,
        traffic=traffic,
        seed=seed,
        faults=schedule,
        customization=customization or Customization(),
        stop_at_violation=True,
    )


MAX_SEEDS = 1_000_000  # seeds in one exploration (a list of them is built first)


def parse_seeds(text: str) -> list[int]:
    """``1-1000``, ``7``, ``1,5,9-12``: the seeds, in order."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ValueError(f"{part!r}: seeds are N, N-M or a list of those") from None
        if last < first:
            raise ValueError(f"{part!r}: the range is empty")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise ValueError(f"{text!r}: at most {MAX_SEEDS:,} seeds in one exploration")
        seeds.extend(range(first, last + 1))
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


@dataclass
class Finding:
    """A seed whose run broke an invariant."""

    seed: int
    result: SimResult
    shrunk: SimSettings | None = None
    shrunk_result: SimResult | None = None


def explore(
    seeds: Iterable[int],
    make: Callable[[int], SimSettings],
    *,
    on_run: Callable[[SimResult], None] | None = None,
) -> Iterator[SimResult]:
    """Run each seed's settings; yield every result (``on_run`` sees each as it ends)."""
    for seed in seeds:
        result = simulate(make(seed))
        if on_run is not None:
            on_run(result)
        yield result


def describe(result: SimResult) -> str:
    """One line for a seed's run, printed as the exploration goes: what it ran, and its
    first violation if it broke one."""
    faults = len(result.faults)
    line = (
        f"seed {result.seed}: {result.clients.accepted} jobs, {faults} fault"
        f"{'' if faults == 1 else 's'}, {result.virtual_seconds:.0f} s virtual in "
        f"{result.wall_seconds:.2f} s wall: "
    )
    if result.ok:
        return line + "every invariant held"
    return line + f"{len(result.violations)} violations, first {result.violations[0]}"


def shrink(settings: SimSettings, invariant: str, budget: int = 12) -> SimSettings:
    """A smaller schedule (and fewer jobs) that still breaks ``invariant`` (see the module
    docstring); at most ``budget`` runs are spent looking."""
    current = settings

    def still_breaks(candidate: SimSettings) -> bool:
        nonlocal budget
        if budget <= 0:
            return False
        budget -= 1
        result = simulate(candidate)
        return any(v.invariant == invariant for v in result.violations)

    faults: list[Fault] = list(current.faults)
    i = 0
    while i < len(faults):
        fewer = faults[:i] + faults[i + 1 :]
        candidate = dataclasses.replace(current, faults=fewer)
        if still_breaks(candidate):
            faults, current = fewer, candidate
        else:
            i += 1
    jobs = current.traffic.jobs
    while jobs is not None and jobs > 10:
        halved = current.traffic.model_copy(update={"jobs": jobs // 2})
        candidate = dataclasses.replace(current, traffic=halved)
        if not still_breaks(candidate):
            break
        current, jobs = candidate, jobs // 2
    return current
