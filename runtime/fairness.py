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
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["DEFAULT_WEIGHT", "FairQueue", "Queued"]

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

    def peek(self, now: float) -> Queued | None:
        """The job that would start next at ``now``, or None when no job is ready."""
        self._promote(now)
        ready = self._ready
        while ready:
            _, _, account, stamp = ready[0]
            lane = self._lanes.get(account)
            if lane is None or lane.stamp != stamp:
                heapq.heappop(ready)
                continue
            top = self._top(lane)
            if top is not None and top.not_before <= now:
                return top
            heapq.heappop(ready)
            if top is None:
                self._idle(lane)
            else:
                self._wait(lane, top.not_before)
        return None

    def pop(self, now: float) -> Queued:
        """Take the job ``peek(now)`` names: it starts, and its account's turn is used.
        Raises ``IndexError`` when no job is ready."""
        top = self.peek(now)
        if top is None:
            raise IndexError("no job is ready")
        lane = self._lanes[top.account]
        heapq.heappop(self._ready)
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


def _checked(weight: float) -> float:
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"an account's weight must be a finite number > 0, not {weight!r}")
    return float(weight)
