"""The full check after a chaos scenario: DESIGN §4, I1 to I7, from three independent sources.

- the ledger database (``runtime.invariants.check_invariants``: I1 conservation, I2
  exactly-once settlement, I5 idempotency keys, webhook receipts, terminal history);
- what the clients saw (``loadtests.chaos.load``): every ``202`` job is in the ledger and
  terminal (I3), a key never named two jobs (I5), no status a client saw after a
  terminal one differs from it, and the terminal status of the event stream is the
  ledger's (I5: terminal states absorb);
- what the fake vendors counted themselves: the highest number of tasks in flight
  against the vendor's configured limit (I4), tasks started more than once for one
  attempt (I5), and every vendor task jobline recorded exists at that vendor for that
  job; plus each processor's own slot count once everything is quiet (no slot leaked);
  and paid work (I7): every task the vendor ran to success while its job was open
  delivered its output (its files downloaded in full, or its result read), unless its
  submit's answer was lost (an orphan that showed itself too late: counted apart). A
  scenario expecting ``no_waste`` also counts a task canceled after it started (billed)
  as a violation, unless its job was canceled by its client.

``wasted_work`` counts, per vendor, what the fakes say was billed and not delivered.

Each finding is a ``Violation``; an empty list means the scenario passed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from loadtests.chaos.load import TERMINAL, Load
from loadtests.chaos.report import PaidWork
from runtime.config import JoblineConfig
from runtime.invariants import check_invariants
from runtime.models import Violation


@dataclass(frozen=True)
class LedgerJob:
    id: str
    status: str
    vendor: str
    vendor_task_id: str | None
    attempts: int
    cost: int


@dataclass(frozen=True)
class Expectations:
    """What a scenario promises beyond the invariants."""

    exactly_accepted: int | None = None  # the credit race: exactly N of 3N accepted
    check_limits: bool = True
    check_slots: bool = True  # processors report 0 slots taken once quiet
    retry_after: float | None = None  # 429 retries wait at least this long
    no_waste: bool = False  # I7 strict: no billed task thrown away but late orphans


def read_jobs(db: Path) -> dict[str, LedgerJob]:
    with _connect(db) as conn:
        rows = conn.execute(
            "SELECT id, status, vendor, vendor_task_id, attempts, cost FROM jobs"
        ).fetchall()
    return {row[0]: LedgerJob(*row) for row in rows}


def read_history(db: Path) -> list[tuple[str, str, float, str | None]]:
    with _connect(db) as conn:
        rows = conn.execute("SELECT job_id, status, at, detail FROM job_history ORDER BY seq")
        return [(r[0], r[1], float(r[2]), r[3]) for r in rows.fetchall()]


def read_entries(db: Path) -> Counter[str]:
    with _connect(db) as conn:
        rows = conn.execute("SELECT kind, COUNT(*) FROM credit_entries GROUP BY kind")
        return Counter({kind: n for kind, n in rows.fetchall()})


def read_available(db: Path) -> dict[str, int]:
    with _connect(db) as conn:
        rows = conn.execute("SELECT id, balance - held FROM accounts").fetchall()
    return {account: int(available) for account, available in rows}


@contextlib.contextmanager
def _connect(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection, closed afterwards (sqlite3's own ``with`` only commits)."""
    conn = sqlite3.connect(f"file:{quote(str(Path(db).resolve()))}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("PRAGMA query_only = ON")
        yield conn
    finally:
        conn.close()


def open_jobs(db: Path) -> list[str]:
    return [j.id for j in read_jobs(db).values() if j.status not in TERMINAL]


def full_check(
    config: JoblineConfig,
    load: Load,
    fakes: Mapping[str, Mapping[str, Any]],
    processors: Mapping[str, Mapping[str, Any]] | None,
    expect: Expectations,
) -> list[Violation]:
    db = config.storage.database
    jobs = read_jobs(db)
    found = list(check_invariants(db))
    found += load_problems(load)
    found += clients_against_ledger(load, jobs)
    found += vendors_against_ledger(config, fakes, jobs, expect)
    if processors is not None and expect.check_slots:
        found += slots_released(processors)
    if expect.exactly_accepted is not None:
        found += exact_acceptance(load, expect.exactly_accepted, db)
    if expect.retry_after is not None:
        found += backoff_honoured(read_history(db), expect.retry_after)
    found += paid_work_kept(fakes, jobs, job_ends(read_history(db)), strict=expect.no_waste)
    return found


@dataclass(frozen=True)
class Waste:
    """One vendor's paid work, as the fake counted it."""

    billable: int  # tasks that started running (billed), canceled or not
    delivered: int  # succeeded tasks whose output reached jobline
    wasted: int  # billed, succeeded or canceled, not delivered, not the client's cancel
    late_orphans: int  # of them: submits whose answer was lost (orphans)


def job_ends(history: list[tuple[str, str, float, str | None]]) -> dict[str, float]:
    """When each job reached its terminal status (wall clock, as the ledger wrote it)."""
    return {job: at for job, status, at, _ in history if status in TERMINAL}


def _thrown_away(
    info: Mapping[str, Any], jobs: Mapping[str, LedgerJob], ends: Mapping[str, float]
) -> bool:
    """A billed task whose work jobline did not keep, for a reason of jobline's own."""
    job = jobs.get(str(info.get("job_id")))
    if job is None or not info.get("billable") or info.get("delivered"):
        return False
    if info.get("status") not in ("succeeded", "canceled"):
        return False  # the vendor failed it (or never ran it): not jobline's waste
    if job.status == "canceled":
        return False  # its client canceled it
    ended, job_end = info.get("ended_at"), ends.get(job.id)
    return not (ended is not None and job_end is not None and job_end <= float(ended))


def wasted_work(
    fakes: Mapping[str, Mapping[str, Any]], jobs: Mapping[str, LedgerJob], ends: Mapping[str, float]
) -> dict[str, Waste]:
    counts: dict[str, Waste] = {}
    for vendor, stats in fakes.items():
        thrown = [i for i in stats.get("task_info", {}).values() if _thrown_away(i, jobs, ends)]
        counts[vendor] = Waste(
            int(stats["tasks"]["billable"]),
            int(stats["tasks"]["delivered"]),
            len(thrown),
            sum(1 for info in thrown if info.get("answer_lost")),
        )
    return counts


def paid_work_kept(
    fakes: Mapping[str, Mapping[str, Any]],
    jobs: Mapping[str, LedgerJob],
    ends: Mapping[str, float],
    *,
    strict: bool = False,
) -> Iterable[Violation]:
    """I7 from the vendors' own counts (see the module docstring)."""
    for vendor, stats in fakes.items():
        for task_id, info in stats.get("task_info", {}).items():
            if not _thrown_away(info, jobs, ends) or info.get("answer_lost"):
                continue
            if info.get("status") == "succeeded" or strict:
                yield Violation(
                    "I7",
                    f"{vendor}/{task_id}",
                    f"{info.get('status')} task of job {info.get('job_id')} (attempt "
                    f"{info.get('attempt')}) billed and its output not kept",
                )


def load_problems(load: Load) -> Iterable[Violation]:
    for problem in load.problems:
        invariant, subject, detail = problem.split(" ", 2)
        yield Violation(invariant, subject, detail)


def clients_against_ledger(load: Load, jobs: Mapping[str, LedgerJob]) -> Iterable[Violation]:
    """I3: every 202 job is in the ledger and ended; I5: seen terminal, stays terminal."""
    for client in load.accepted:
        assert client.job_id is not None
        job = jobs.get(client.job_id)
        if job is None:
            yield Violation(
                "I3", client.job_id, f"answered 202 (key {client.key}), not in the ledger"
            )
            continue
        if job.status not in TERMINAL:
            yield Violation("I3", job.id, f"still {job.status} after the scenario went quiet")
        seen_terminal = [s for s in client.observed if s in TERMINAL]
        if seen_terminal and len(set(seen_terminal)) > 1:
            yield Violation("I5", job.id, f"terminal status changed: clients saw {client.observed}")
        if seen_terminal and seen_terminal[0] != job.status:
            yield Violation(
                "I5", job.id, f"clients saw {seen_terminal[0]}, the ledger ends {job.status}"
            )
        if seen_terminal and client.observed.index(seen_terminal[0]) != len(client.observed) - 1:
            yield Violation("I5", job.id, f"status moved after terminal: {client.observed}")
        ended = [s for s in client.events if s in TERMINAL]
        if ended and (ended[-1] != job.status or client.events[-1] != ended[-1]):
            yield Violation(
                "I5", job.id, f"event stream {client.events} vs the ledger's {job.status}"
            )


def vendors_against_ledger(
    config: JoblineConfig,
    fakes: Mapping[str, Mapping[str, Any]],
    jobs: Mapping[str, LedgerJob],
    expect: Expectations,
) -> Iterable[Violation]:
    """I4 from the vendors' own counts; I5 one task per attempt; tasks match the ledger."""
    attempts: Counter[str] = Counter()
    for vendor, stats in fakes.items():
        limit = config.vendors[vendor].concurrency
        highest = int(stats["tasks"]["max_in_flight"])
        if expect.check_limits and highest > limit:
            yield Violation(
                "I4", vendor, f"the vendor counted {highest} tasks in flight, limit {limit}"
            )
        attempts.update(stats.get("attempts", {}))
        tasks = stats.get("task_info", {})
        for task_id, info in tasks.items():
            job_id = info.get("job_id")
            if job_id is None:
                continue  # not sent by jobline (the harness's own probes)
            if job_id not in jobs:
                yield Violation(
                    "I5", job_id, f"{vendor} task {task_id} for a job not in the ledger"
                )
        for job in jobs.values():
            if job.vendor != vendor or job.vendor_task_id is None:
                continue
            info = tasks.get(job.vendor_task_id)
            if info is None:
                yield Violation("I5", job.id, f"{vendor} has no task {job.vendor_task_id}")
            elif info.get("job_id") != job.id:
                yield Violation(
                    "I5",
                    job.id,
                    f"{vendor} task {job.vendor_task_id} is for job {info.get('job_id')}",
                )
    for key, n in sorted(attempts.items()):
        if n > 1:
            yield Violation("I5", key, f"{n} vendor tasks started for one attempt")


def slots_released(processors: Mapping[str, Mapping[str, Any]]) -> Iterable[Violation]:
    for vendor, stats in processors.items():
        if stats.get("inflight", 0) != 0:
            yield Violation(
                "I4", vendor, f"processor still holds {stats['inflight']} slots with no job running"
            )


def exact_acceptance(load: Load, n: int, db: Path) -> Iterable[Violation]:
    accepted = load.accepted_count()
    if accepted != n:
        yield Violation("I1", "credits", f"funded for exactly {n} jobs, {accepted} were accepted")
    refused = Counter(j.refused for j in load.jobs if j.job_id is None)
    if set(refused) - {402}:
        yield Violation("I1", "credits", f"refusals other than 402: {dict(refused)}")
    jobs = read_jobs(db)
    released = sum(j.cost for j in jobs.values() if j.status in ("failed", "canceled"))
    for account, available in read_available(db).items():
        if available != released:
            yield Violation(
                "I1", account, f"available {available} at the end, refunds total {released}"
            )


def backoff_honoured(
    history: list[tuple[str, str, float, str | None]], retry_after: float
) -> Iterable[Violation]:
    """After a 429 with ``Retry-After``, the job's next step waits at least that long."""
    pending: dict[str, float] = {}  # job -> when it was told to wait
    for job, status, at, detail in history:
        told = pending.pop(job, None)
        moved_on = "failover" in (detail or "")  # another vendor: this one's wait is moot
        early = told is not None and at < told + retry_after * 0.95
        if early and told is not None and status in ("processing", "queued") and not moved_on:
            yield Violation(
                "I4", job, f"next step {at - told:.2f}s after a 429 asking for {retry_after:g}s"
            )
        text = detail or ""
        if status == "queued" and "HTTP 429" in text and "failover" not in text:
            pending[job] = at


def paid_work(
    config: JoblineConfig,
    fake_stats: dict[str, dict[str, Any]],
    processors: dict[str, dict[str, Any]] | None,
) -> list[PaidWork]:
    """Each vendor's billed and delivered work (the fake's counts) and the waste jobline
    counted itself (``jobline_vendor_wasted_tasks_total``, via the processors' stats)."""
    db = config.storage.database
    waste = wasted_work(fake_stats, read_jobs(db), job_ends(read_history(db)))
    work = []
    for vendor, counted in waste.items():
        stats = (processors or {}).get(vendor, {})
        own, in_doubt = stats.get("wasted"), stats.get("in_doubt")
        tasks = fake_stats[vendor].get("task_info", {}).values()
        work.append(
            PaidWork(
                vendor,
                counted.billable,
                counted.delivered,
                counted.wasted,
                counted.late_orphans,
                sum(own.values()) if isinstance(own, dict) else None,
                sum(1 for task in tasks if task.get("answer_lost")),
                in_doubt.get("adopted") if isinstance(in_doubt, dict) else None,
            )
        )
    return work
