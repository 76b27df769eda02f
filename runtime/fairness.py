"""Fair share of a vendor's slots across accounts: which queued job starts next (pure).

Theory of operation
-------------------
A processor's queue holds the jobs of many accounts. When the vendor's slots are scarce,
the next job to start is taken round-robin across the accounts that have a job *ready*,
in proportion to their weights: stride scheduling (Waldspurger and Weihl, 1995). Each
account has a *pass*; the ready account with the lowest pass goes next, and its pass
grows by ``1 / weight``. An account that becomes ready (its first job arrives, or its
jobs' backoff ends) starts at the *virtual time*, the pass of the last account served,
and never below its own pass. So an account cannot bank turns while it has nothing
ready, and an account that floods the queue cannot take them from the others: one
account's burst delays another account's job by at most one turn of each ready
account, that is, with every slot taken, by about one slot turnover.

Within one account, jobs go in ``not_before`` order, then in the order they came: a job
waiting for its backoff (or for a circuit) is not ready before its ``not_before`` and
holds back none of its account's other jobs. With one account queued, this is the
order a plain ``not_before`` heap gives.

``FairQueue`` is a pure data structure: it takes ``now`` (seconds, on the caller's clock)
and never reads a clock, does no I/O and draws nothing at random. Whatever feeds a
processor's queue (dispatch messages, jobs loaded on start, retries, batches read from
the ledger), the order is decided here. Every operation costs O(log n); removals are
lazy (``discard``).

    queue = FairQueue()
    queue.push("job-1", "acct_a", not_before=now)
    entry = queue.peek(now)        # the job that would start next, or None
    if entry is not None and slot_free:
        queue.pop(now)             # it starts: its account's pass moves on
    queue.next_ready_at()          # when a job waiting for its not_before may be ready

Headroom
--------
Fair share alone still lets a flooding account hold every slot whenever nobody else has
a job queued, so another account's job that arrives then waits for a slot to free: up
to one slot turnover, every time (issue 13's Locust flood: the quiet tenants' wait for
a slot went from 32 to 296 ms at the median, and was the whole of their extra latency).
``Headroom`` keeps free slots of a vendor for the accounts that hold none of its slots
and have no job queued, while such an account has been active there (a job queued, or a
slot given back) within the last ``window`` seconds: one slot for each such account, at
most ``slots`` (``[fairness] headroom``). An account already holding slots skips its turn
rather than take a kept one (``peek``/``pop`` with ``skip``). Alone, or next to accounts
that hold slots or have jobs queued already (the round-robin shares among those), an
account uses every slot (work-conserving); an account holding none may always take them,
so a quiet tenant's next job starts at once. Each slot kept costs the flooding account
that slot's throughput while the quiet accounts are active, and only then: with
``headroom`` at least the number of quiet accounts active at once, their jobs never wait
for a slot (issue 13's flood, three quiet tenants on four slots: their p95 next to the
flood was 1.10 times their p95 alone with ``headroom = 3`` and 1.56-1.71 times with 1;
the flooder got 14% fewer jobs through).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["DEFAULT_WEIGHT", "FairQueue", "Headroom", "Queued"]

DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True, slots=True)
class Queued:
    """A job in the queue: its id, its account and the earliest time it may start."""

    job_id: str
    account: str
    not_before: float
    seq: int  # arrival order: ties on not_before go first come, first served


@dataclass(slots=True)
class _Lane:
    """One account's queued jobs and its place in the round (see the module docstring).

    A lane is *idle* (no live job: in no heap), *waiting* (its first job is not ready: in
    ``FairQueue._later`` under that job's ``not_before``) or *ready* (in
    ``FairQueue._ready`` under its pass). ``stamp`` names its one current heap entry;
    older entries are stale and skipped.
    """

    account: str
    weight: float
    passed: float = 0.0
    jobs: list[tuple[float, int, str]] = field(default_factory=list)  # (not_before, seq, id)
    stamp: int = 0
    state: str = "idle"  # idle | waiting | ready
    key: float = math.inf  # its key in _later while waiting


class FairQueue:
    """Jobs queued for one vendor, ordered fairly across accounts (module docstring)."""

    def __init__(self) -> None:
        self._live: dict[str, Queued] = {}
        self._lanes: dict[str, _Lane] = {}
        self._ready: list[tuple[float, int, str, int]] = []  # (pass, order, account, stamp)
        self._later: list[tuple[float, int, str, int]] = []  # (not_before, order, account, stamp)
        self._order = itertools.count()
        self._seq = itertools.count()
        self._vtime = 0.0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._live

    def __iter__(self) -> Iterator[Queued]:
        """Every queued job, in no particular order."""
        return iter(list(self._live.values()))

    def queued(self, account: str) -> bool:
        """Has ``account`` a job in the queue (ready or waiting for its not_before)?"""
        lane = self._lanes.get(account)
        return lane is not None and self._top(lane) is not None

    def accounts(self) -> list[str]:
        """The accounts with a job queued."""
        return [lane.account for lane in self._lanes.values() if lane.state != "idle"]

    # --- changes ---------------------------------------------------------------------------

    def push(
        self, job_id: str, account: str, not_before: float, weight: float | None = None
    ) -> Queued:
        """Queue a job (again: a job already queued is moved to its new place).
        ``weight``: the account's share (> 0), when the caller knows it; else the lane
        keeps the weight it has (``DEFAULT_WEIGHT`` for a new one)."""
        self.discard(job_id)
        lane = self._lanes.get(account)
        if lane is None:
            lane = self._lanes[account] = _Lane(account, DEFAULT_WEIGHT)
        if weight is not None:
            lane.weight = _checked(weight)
        entry = Queued(job_id, account, not_before, next(self._seq))
        self._live[job_id] = entry
        heapq.heappush(lane.jobs, (not_before, entry.seq, job_id))
        if lane.state == "idle" or (lane.state == "waiting" and not_before < lane.key):
            self._wait(lane, not_before)
        return entry

    def discard(self, job_id: str) -> bool:
        """Take a job out of the queue without serving its account; False if not queued."""
        return self._live.pop(job_id, None) is not None

    def set_weight(self, account: str, weight: float) -> None:
        """The account's share of the slots from now on (> 0; ``DEFAULT_WEIGHT``: 1)."""
        lane = self._lanes.get(account)
        if lane is not None:
            lane.weight = _checked(weight)

    # --- the next job ----------------------------------------------------------------------

    def peek(self, now: float, skip: Callable[[str], bool] | None = None) -> Queued | None:
        """The job that would start next at ``now``, or None when no job is ready.
        ``skip(account)`` True: that account's turn is passed over (not used) this time."""
        top, aside = self._choose(now, skip)
        self._put_back(aside)
        return top

    def pop(self, now: float, skip: Callable[[str], bool] | None = None) -> Queued:
        """Take the job ``peek(now, skip)`` names: it starts, and its account's turn is
        used. Raises ``IndexError`` when no job is ready."""
        top, aside = self._choose(now, skip)
        if top is None:
            self._put_back(aside)
            raise IndexError("no job is ready")
        lane = self._lanes[top.account]
        heapq.heappop(self._ready)  # the chosen lane's entry: on top once the skipped are aside
        self._put_back(aside)
        heapq.heappop(lane.jobs)
        del self._live[top.job_id]
        self._vtime = max(self._vtime, lane.passed)
        lane.passed += 1.0 / lane.weight
        following = self._top(lane)
        if following is None:
            self._idle(lane)
        elif following.not_before <= now:
            self._serve_next(lane)  # still ready: it keeps its pass
        else:
            self._wait(lane, following.not_before)
        return top

    def _choose(
        self, now: float, skip: Callable[[str], bool] | None
    ) -> tuple[Queued | None, list[tuple[float, int, str, int]]]:
        """The next job, its lane's entry left on top of ``_ready``; the skipped lanes'
        entries are taken out meanwhile (the caller puts them back)."""
        self._promote(now)
        ready = self._ready
        aside: list[tuple[float, int, str, int]] = []
        while ready:
            _, _, account, stamp = ready[0]
            lane = self._lanes.get(account)
            if lane is None or lane.stamp != stamp:
                heapq.heappop(ready)
                continue
            top = self._top(lane)
            if top is not None and top.not_before <= now:
                if skip is not None and skip(account):
                    aside.append(heapq.heappop(ready))
                    continue
                return top, aside
            heapq.heappop(ready)
            if top is None:
                self._idle(lane)
            else:
                self._wait(lane, top.not_before)
        return None, aside

    def _put_back(self, aside: list[tuple[float, int, str, int]]) -> None:
        for entry in aside:
            heapq.heappush(self._ready, entry)

    def next_ready_at(self) -> float | None:
        """The earliest ``not_before`` of a job not yet ready (None: none is waiting). A
        caller with nothing ready sleeps until then (or until a job is pushed)."""
        later = self._later
        while later:
            _, _, account, stamp = later[0]
            lane = self._lanes.get(account)
            if lane is not None and lane.stamp == stamp:
                return later[0][0]
            heapq.heappop(later)
        return None

    # --- lanes -----------------------------------------------------------------------------

    def _top(self, lane: _Lane) -> Queued | None:
        """The lane's first live job (dropping discarded ones), or None."""
        jobs, live = lane.jobs, self._live
        while jobs:
            _, seq, job_id = jobs[0]
            entry = live.get(job_id)
            if entry is not None and entry.seq == seq:
                return entry
            heapq.heappop(jobs)
        return None

    def _promote(self, now: float) -> None:
        """Lanes whose first job's ``not_before`` came: ready, from the virtual time on."""
        later = self._later
        while later and later[0][0] <= now:
            _, _, account, stamp = heapq.heappop(later)
            lane = self._lanes.get(account)
            if lane is None or lane.stamp != stamp:
                continue
            top = self._top(lane)
            if top is None:
                self._idle(lane)
            elif top.not_before > now:  # its first job was discarded; the next is later
                self._wait(lane, top.not_before)
            else:
                lane.passed = max(lane.passed, self._vtime)
                self._serve_next(lane)

    def _serve_next(self, lane: _Lane) -> None:
        lane.stamp += 1
        lane.state = "ready"
        heapq.heappush(self._ready, (lane.passed, next(self._order), lane.account, lane.stamp))

    def _wait(self, lane: _Lane, not_before: float) -> None:
        lane.stamp += 1
        lane.state = "waiting"
        lane.key = not_before
        heapq.heappush(self._later, (not_before, next(self._order), lane.account, lane.stamp))

    def _idle(self, lane: _Lane) -> None:
        """No job left: the lane goes (a returning account starts at the virtual time)."""
        lane.stamp += 1
        lane.state = "idle"
        del self._lanes[lane.account]


class Headroom:
    """Free slots of one vendor kept for accounts holding none of its slots: one for each
    such account active there within ``window`` seconds, at most ``slots`` (module
    docstring). Pure: every call takes ``now``; the caller reports each slot taken and
    given back (``took``/``gave_back``) and each job queued (``queued``).

        headroom.took("acct_a")                     # a job of acct_a started: a slot
        headroom.may_take("acct_a", free=1, now=t)  # may acct_a take one of the free slots?
        headroom.gave_back("acct_a", now=t)         # its task ended
    """

    def __init__(self, slots: int, window: float) -> None:
        if slots < 0:
            raise ValueError(f"headroom slots must be >= 0, not {slots!r}")
        if not (math.isfinite(window) and window >= 0):
            raise ValueError(f"a headroom window must be a finite number >= 0, not {window!r}")
        self.slots = slots
        self.window = window
        self._holds: Counter[str] = Counter()
        self._seen: dict[str, float] = {}  # account -> when it last queued or gave one back

    def holds(self, account: str) -> int:
        return self._holds[account]

    def took(self, account: str) -> None:
        self._holds[account] += 1

    def gave_back(self, account: str, now: float) -> None:
        self._holds[account] -= 1
        if self._holds[account] <= 0:
            del self._holds[account]
        self._seen[account] = now

    def queued(self, account: str, now: float) -> None:
        self._seen[account] = now

    def may_take(
        self, account: str, free: int, now: float, queued: Callable[[str], bool] = lambda _: False
    ) -> bool:
        """May ``account`` start a job on one of ``free`` free slots now? Yes unless it
        holds slots already and the free slots are all kept: one for each other account
        holding none, with no job ``queued(other)``, active within the window (at most
        ``slots`` of them)."""
        if free > self.slots or not self._holds[account]:
            return True
        return free > self._kept_for_others(account, now, queued, limit=free)

    def wake_at(self, now: float) -> float | None:
        """When the headroom may stop being kept (the soonest an account active now, and
        holding no slot, stops counting as active); None when nobody counts now."""
        ends = [at + self.window for a, at in self._seen.items() if not self._holds[a]]
        ends = [end for end in ends if end > now]
        return min(ends, default=None)

    def _kept_for_others(
        self, account: str, now: float, queued: Callable[[str], bool], limit: int
    ) -> int:
        """How many slots are kept from ``account``: the other accounts holding none, with
        no job queued, active within the window; counted up to ``limit``."""
        since = now - self.window
        kept = 0
        for other, at in list(self._seen.items()):
            if at < since:
                del self._seen[other]  # no longer active: forgotten
            elif other != account and not self._holds[other] and not queued(other):
                kept += 1
                if kept >= limit:
                    break
        return kept


def _checked(weight: float) -> float:
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"an account's weight must be a finite number > 0, not {weight!r}")
    return float(weight)
