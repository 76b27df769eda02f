"""The ledger: jobs and money in one SQLite database, written with group commit.

Theory of operation
-------------------
Every change is a *ledger operation* (``runtime.models``: ``OpenJob``, ``Complete``, …),
a value. Each operation is one transaction and idempotent: executing it twice has the
effect of once, so an actor message that is retried, duplicated or replayed after a
restart cannot charge, refund or move a job twice. Terminal states absorb: a settle on
a terminal job is a no-op, and the guard is in SQL (``UPDATE jobs … WHERE status IN
(…)`` and the row count), so two writers on two connections or processes cannot both
settle one job; a unique index on ``credit_entries`` makes a second hold or a second
settlement impossible even for a buggy writer.

Group commit. SQLite commits are durable (WAL, ``synchronous=FULL``), so each commit
costs an fsync, and a thread hop costs more than a statement. Callers therefore only
enqueue their operations (one future per call, whatever its length); one writer task
drains everything pending, runs the whole batch as ONE synchronous function on the
database thread inside one ``BEGIN IMMEDIATE`` … ``COMMIT``, and then resolves each
caller's future. Under load a batch holds hundreds of operations (one fsync, one thread
hop); an idle ledger commits a lone operation at once, with no waiting window. Inline (a
simulation, ``LedgerMode``) the same drain is a callback on the loop's next turn: no
thread, no task.

Inside a batch every operation does its checks before its first write, so an operation
that raises a ``LedgerError`` (or ``IllegalTransition``) has written nothing and its
neighbours go on. (A SAVEPOINT per operation would give the same guarantee; measured
here, SAVEPOINT + RELEASE around each op cost 8% of the throughput, for no gain.) The
money side is kept in the batch: each touched account's cached ``balance``/``held``/
``in_flight`` is read once per batch and written back once, and credit entries and
history rows are inserted with ``executemany`` at the end — all inside the same
transaction, so the cache and the entries can never disagree on disk. The counters the
gauges read (``ledger_counters``) move the same way. An unexpected exception (a bug, a
constraint the checks missed) rolls the batch back and re-runs its operations one by
one, so only the guilty operation fails, with a ``LedgerFault`` (logged here with its
traceback; the caller gets no traceback). ``sqlite3`` errors become ``LedgerUnavailable``
in one place (``_unavailable``), except a broken constraint, which no retry fixes.

The submit rate of each account is a token bucket the writer holds in memory
(``_SubmitBuckets``): the ledger is the one writer every gateway replica goes through,
so the rate holds across replicas; a batch works on copies and keeps them only once it
commits. A restarted ledger starts every bucket full (at most one extra burst).

The account operations (accounts, API keys, grants, limits) are in
``runtime.ledger_accounts``.

Runs. A one-row UPDATE with a trigger and RETURNING costs mostly its statement's fixed
work (RETURNING opens a temporary b-tree each time), so consecutive operations of one
hot kind (``_RUNS``: start_attempt, mark_processing, complete) on distinct jobs share
ONE UPDATE, each job with its own parameters (a JSON array) and its own guard in SQL;
an operation whose guard matched nothing was not written and takes its own one-op
path, which finds out why exactly as it would alone. Such operations touch only their
own job's row (complete adds to the account cache, a sum), so this is the effect of one
UPDATE each, in order. (Measured: about 35% less time per UPDATE, and a fifth less
writer time per operation under load.)

Why the stdlib ``sqlite3`` on threads we own rather than ``aiosqlite``: aiosqlite
awaits one statement at a time (a thread hop per statement: ~70 µs measured here, while
our statements take 1-10 µs) and has no public call to run a function on its thread; its private
``_execute`` would tie us to its internals. A ``ThreadPoolExecutor(max_workers=1)`` per
connection gives the same "one connection, one thread" model with public APIs only:
the writer thread owns the write connection, two reader threads own a ``query_only``
connection each, and WAL lets reads run while a batch is being written. One reader
answers the reads of a few rows (a job, a balance, an API key), the other the pages and
scans (statements, job lists, dead letters, the sweeper's scans), so a point read never
waits behind a page another account asked for.

The schema is in ``runtime.ledger_migrations``, the file's settings and rows -> values in
``runtime.ledger_schema``; the reads, plain functions run on the reader thread, in
``runtime.ledger_reads``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import random
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runtime import ledger_accounts as accounts_ops
from runtime import ledger_reads as reads
from runtime.errors import (
    AccountNotFound,
    AccountThrottled,
    DeadLetterNotFound,
    IdempotencyConflict,
    InputInvalid,
    InsufficientCredits,
    JoblineError,
    JobNotFound,
    LedgerError,
    LedgerFault,
    LedgerUnavailable,
    SubmitRateLimited,
    TooManyJobsInFlight,
)
from runtime.invariants import check_invariants
from runtime.ledger_migrations import DEAD_LETTERS_OPEN, sql_set
from runtime.ledger_schema import (
    BUSY_TIMEOUT_S,
    JOB_COLUMNS,
    MUTABLE_COLUMNS,
    SELECT_JOB,
    connect,
    fixed_fields,
    job_from_row,
    job_from_update,
    migrate,
    outputs_to_json,
)
from runtime.models import (
    FEE_NOTE,
    REFUND_LESS_FEE_NOTE,
    AccountLimits,
    AccountPage,
    AccountThrottle,
    ApiKeyPage,
    Balance,
    Cancel,
    ClearThrottle,
    Complete,
    CreateAccount,
    CreateApiKey,
    DeadLetterPage,
    EndOrphan,
    EntryKind,
    EntryPage,
    Fail,
    Grant,
    Job,
    JobHistoryEntry,
    KeyMatch,
    KeyRevocation,
    LedgerOp,
    MarkProcessing,
    OpenJob,
    Orphan,
    Outcome,
    Page,
    RecordCharge,
    RecordKeyUse,
    RecordOrphan,
    RecordWebhook,
    Redrive,
    RevokeApiKey,
    ScheduleRetry,
    SetAccountLimits,
    StartAttempt,
    VendorCharge,
    Violation,
)
from runtime.policies import TokenBucket
from runtime.refunds import RejectionThrottle
from runtime.states import TRANSITIONS, JobEvent, JobStatus, sources_of, transition
from runtime.telemetry import get_logger

log = get_logger("ledger")

T = TypeVar("T")
MAX_BATCH = 2048  # operations per transaction; bounds one batch's latency


def new_job_id(now: float, rng: random.Random) -> str:
    """A new job id: a UUIDv7 (RFC 9562), time-ordered by its first 48 bits.

    ``now`` (seconds since the epoch) gives the time bits and ``rng`` the 80 others, so a
    seeded run names its jobs the same way every time. The ledger keys jobs, entries and
    history by job id; ids that grow with time are inserted at the right edge of those
    indexes instead of on random pages, so each commit writes fewer pages (measured:
    about 25% more durable operations per second than with random UUIDv4 ids).
    """
    millis = int(now * 1000)
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | rng.getrandbits(80)
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant 10
    return str(uuid.UUID(int=value))


_to_json = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds one per call
# For parameters SQLite reads back out of JSON: UTF-8 as is (a lone surrogate fails to
# bind, as it does as a plain parameter, instead of being decoded into invalid UTF-8).
_params_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _unavailable(exc: BaseException) -> LedgerUnavailable:
    """The one place where SQLite (and thread) failures become ``LedgerUnavailable``."""
    return LedgerUnavailable(f"{type(exc).__name__}: {exc}")


def _fault(what: str, exc: BaseException) -> LedgerError:
    """What the caller of a failed operation or read gets: a broken constraint or a bug is a
    ``LedgerFault`` (logged here with its traceback), anything else of SQLite's is
    ``LedgerUnavailable`` (worth retrying: a lock, a full disk)."""
    if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
        return _unavailable(exc)
    log.error("ledger %s failed", what, exc_info=exc, extra={"error": repr(exc)})
    return LedgerFault(what, f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _as_ledger_errors(fn: Callable[..., Any]) -> Iterator[None]:
    """A read's errors as the ledger raises them: a ``JoblineError`` as it is, an SQLite
    error as ``LedgerUnavailable``, anything else as the fault of ``fn``."""
    try:
        yield
    except JoblineError:
        raise
    except sqlite3.Error as exc:
        raise _unavailable(exc) from exc
    except Exception as exc:
        raise _fault(getattr(fn, "__name__", "read"), exc) from exc


# --- the write side: one batch, one transaction -----------------------------------------


def _target(event: JobEvent) -> JobStatus:
    """The status ``event`` leads to from every status it is legal in (one, by design)."""
    afters = {TRANSITIONS[s][event] for s in sources_of(event)}
    assert len(afters) == 1, f"{event} leads to several statuses: {afters}"
    return afters.pop()


class _Update:
    """One guarded UPDATE of a job, written once as a template, in the forms the writer runs.

    The template names its parameters (``{job_id}``, ``{now}``, …); ``params`` lists them
    in the order callers pass them. ``full`` and ``short`` update one job, binding
    ``params`` as ``?1``, ``?2``, …: ``full`` returns every column, ``short`` only the
    columns an update can change, for when the writer already knows the job's fixed
    columns (``_FixedColumns``); reading 20 columns back costs more than the UPDATE.

    ``many`` updates a run of jobs in one statement (``_Batch.apply_run``): ``?1`` is
    ``now``, ``?2`` a JSON array holding each job's ``params`` tuple, and each updated row
    comes back as ``id`` and the ``short`` columns. Every job keeps its own parameters and
    guard; what the run shares is one statement's fixed cost, which with a trigger and
    RETURNING (a temporary b-tree per statement) is most of a one-row UPDATE's.
    """

    __slots__ = ("full", "many", "short")

    def __init__(self, template: str, params: tuple[str, ...]) -> None:
        one = template.format_map({name: f"?{i}" for i, name in enumerate(params, 1)})
        self.full = f"{one} RETURNING {JOB_COLUMNS}"
        self.short = f"{one} RETURNING {MUTABLE_COLUMNS}"
        # In the run, parameter ``name`` is column ``op_name`` (no clash with jobs').
        per_job = [(i, name) for i, name in enumerate(params) if name != "now"]
        columns = ", ".join(f"value ->> {i} AS op_{name}" for i, name in per_job)
        sql = template.format_map({"now": "?1", **{name: f"op_{name}" for _, name in per_job}})
        update, where = sql.split("\n    WHERE ", 1)
        self.many = (
            f"{update}\n    FROM (SELECT {columns} FROM json_each(?2))\n    WHERE {where}"
            f" RETURNING id, {MUTABLE_COLUMNS}"
        )


def _settle(event: JobEvent, sets: str, params: tuple[str, ...]) -> _Update:
    owner = " AND account_id = {account_id}" if "account_id" in params else ""
    return _Update(
        f"UPDATE jobs SET status = '{_target(event).value}', {sets}, updated_at = {{now}}"
        f"\n    WHERE id = {{job_id}} AND status IN {sql_set(sources_of(event))}{owner}",
        params,
    )


INSERT_JOB = f"""INSERT INTO jobs ({JOB_COLUMNS})
    VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, NULL, 0, 0, ?, ?, NULL, NULL, ?, ?, ?, ?, NULL)"""
INSERT_JOB_UNLESS_EXISTS = INSERT_JOB + " ON CONFLICT (id) DO NOTHING"
START_PARAMS = ("vendor", "route_position", "now", "job_id", "attempt")
# The usual attempt stays on the job's vendor: no vendor/position in the SET list, so
# SQLite leaves the jobs_open index alone.
START_ATTEMPT_SAME_VENDOR = _Update(
    """UPDATE jobs SET attempts = attempts + 1,
        vendor_attempts = vendor_attempts + 1, vendor_task_id = NULL, submit_in_doubt = 1,
        updated_at = {now}
    WHERE id = {job_id} AND status = 'queued' AND attempts = {attempt} - 1
        AND vendor = {vendor} AND route_position = {route_position}""",
    START_PARAMS,
)
START_ATTEMPT = _Update(
    """UPDATE jobs SET attempts = attempts + 1,
        vendor_attempts = CASE WHEN vendor = {vendor} AND route_position = {route_position}
                          THEN vendor_attempts + 1 ELSE 1 END,
        vendor = {vendor}, route_position = {route_position}, vendor_task_id = NULL,
        submit_in_doubt = 1, updated_at = {now}
    WHERE id = {job_id} AND status = 'queued' AND attempts = {attempt} - 1""",
    START_PARAMS,
)
MARK_PROCESSING = _Update(
    f"""UPDATE jobs SET status = '{_target(JobEvent.SUBMITTED).value}',
        vendor_task_id = {{vendor_task_id}}, submit_in_doubt = 0, updated_at = {{now}}
    WHERE id = {{job_id}} AND status IN {sql_set(sources_of(JobEvent.SUBMITTED))}
        AND attempts = {{attempt}}""",
    ("vendor_task_id", "now", "job_id", "attempt"),
)
# A replay (the job already queued with exactly these values) changes nothing.
SCHEDULE_RETRY = _Update(
    f"""UPDATE jobs SET status = '{_target(JobEvent.RETRY).value}',
        vendor_attempts = CASE WHEN route_position = {{route_position}} AND vendor = {{vendor}}
                          THEN vendor_attempts ELSE 0 END,
        route_position = {{route_position}}, vendor = {{vendor}}, not_before = {{not_before}},
        error = {{error}}, vendor_task_id = NULL, submit_in_doubt = 0, updated_at = {{now}}
    WHERE id = {{job_id}} AND status IN {sql_set(sources_of(JobEvent.RETRY))}
        AND attempts = {{attempt}}
        AND NOT (status = 'queued' AND route_position = {{route_position}}
                 AND vendor = {{vendor}} AND not_before = {{not_before}}
                 AND error IS {{error}} AND vendor_task_id IS NULL)""",
    ("route_position", "vendor", "not_before", "error", "now", "job_id", "attempt"),
)
COMPLETE = _settle(
    JobEvent.SUCCEEDED,
    "result_key = {result_key}, outputs = {outputs}, error = NULL",
    ("result_key", "outputs", "now", "job_id"),
)
FAIL = _settle(JobEvent.FAILED, "error = {error}", ("error", "now", "job_id"))
EXPIRE = _settle(JobEvent.EXPIRED, "error = {error}", ("error", "now", "job_id"))
INSERT_ORPHAN = (
    "INSERT INTO orphans (job_id, attempt, vendor, model, since, until, task_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
# How long the task of a job canceled while processing stays an open orphan unless the
# processor ends it (it cancels it until the vendor confirms, within its own bounds).
CANCELED_TASK_HORIZON = 86_400.0
CANCEL = _settle(JobEvent.CANCELED, "error = {error}", ("error", "now", "job_id"))
CANCEL_OWN = _settle(JobEvent.CANCELED, "error = {error}", ("error", "now", "job_id", "account_id"))

# The columns of an account a batch keeps (``_Batch.account``); the first three are cached
# sums the batch writes back, the next three the account's own limits (None: the
# default), the last three its input-rejection throttle (``runtime.refunds``).
BALANCE, HELD, IN_FLIGHT, MAX_IN_FLIGHT, SUBMIT_RATE, SUBMIT_BURST = range(6)
REJECTIONS, REJECTIONS_AT, THROTTLED_UNTIL = range(6, 9)
ACCOUNT_COLUMNS = (
    "balance, held, in_flight, max_jobs_in_flight, submits_per_second, submit_burst, "
    "input_rejections, input_rejections_at, throttled_until"
)


class _FixedColumns:
    """The columns of a job that never change after it is opened, by job id.

    Owned by the writer thread. Because these columns are immutable, an entry can never
    be stale, even when another process writes the same database; a job not found here
    is simply read in full. Filled when a job is opened, dropped when it settles, and
    bounded (oldest first out).
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self.rows: dict[str, tuple[Any, ...]] = {}  # job id -> its fixed_fields

    def remember(self, job: Job) -> None:
        rows = self.rows
        if len(rows) >= self.capacity:
            del rows[next(iter(rows))]
        rows[job.id] = fixed_fields(job)


class _SubmitBuckets:
    """Each account's submit-rate token bucket, owned by the writer thread (see the module
    docstring). A batch takes copies (``_Batch.bucket``) and ``keep`` stores them once the
    batch has committed. Bounded: the least recently used buckets go first."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.buckets: dict[str, TokenBucket] = {}

    def keep(self, changed: dict[str, TokenBucket]) -> None:
        buckets = self.buckets
        for account_id, bucket in changed.items():
            buckets.pop(account_id, None)
            buckets[account_id] = bucket
        while len(buckets) > self.capacity:
            del buckets[next(iter(buckets))]


@dataclass(slots=True)
class _WriterState:
    """What the writer thread remembers between batches (nothing a restart needs)."""

    fixed: _FixedColumns
    buckets: _SubmitBuckets


class _Batch:
    """The operations of one transaction, applied on the writer thread.

    Account rows are read once and written back in ``flush``; entries and history rows
    are appended to lists and inserted in ``flush``; so are the counters' changes. Each
    ``_op_*`` method checks before it writes: when it raises a ``JoblineError`` it has
    changed nothing.
    """

    def __init__(self, conn: sqlite3.Connection, now: float, state: _WriterState) -> None:
        self.conn = conn
        self.now = now
        self.fixed = state.fixed
        self.submit_buckets = state.buckets
        self.accounts: dict[str, list[Any]] = {}  # ACCOUNT_COLUMNS
        self.dirty: set[str] = set()
        self.throttled: set[str] = set()  # accounts whose throttle columns changed
        self.entries: list[tuple[str, str, int, str, float, str | None]] = []
        self.charges: list[tuple[Any, ...]] = []  # vendor_charges rows (CHARGE_COLUMNS)
        self.history: list[tuple[str, str, str, float, str | None]] = []
        self.counters: dict[str, int] = {}  # name -> change
        self.buckets: dict[str, TokenBucket] = {}  # copies taken by this batch

    def apply_all(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        """Each op's Outcome, in order: runs of one kind together, the others one by one."""
        if len(ops) == 1:  # most batches, unless the ledger is busy
            return [self.apply(ops[0])]
        outcomes: list[Outcome] = []
        start = 0
        while start < len(ops):
            end = self.run_end(ops, start)
            if end - start > 1:
                outcomes.extend(self.apply_run(ops[start:end]))
            else:
                outcomes.append(self.apply(ops[start]))
            start = end
        return outcomes

    def apply(self, op: LedgerOp) -> Outcome:
        try:
            value, changed = _HANDLERS[type(op)](self, op)
        except JoblineError as exc:
            return Outcome(error=exc, changed=False)
        return Outcome(value, None, changed)

    def run_end(self, ops: Sequence[LedgerOp], start: int) -> int:
        """Where the run starting at ``ops[start]`` ends (``start + 1``: no run).

        A run is consecutive ops of one kind in ``_RUNS``, on distinct jobs whose fixed
        columns are known. Such ops touch only their own job's row (complete also adds
        to the account's cached sums), so one UPDATE for all of them has the effect of one
        UPDATE each, in order.
        """
        kind = type(ops[start])
        if kind not in _RUNS:
            return start + 1
        known = self.fixed.rows
        seen: set[str] = set()
        end = start
        while end < len(ops) and type(ops[end]) is kind:
            job_id = ops[end].job_id  # type: ignore[union-attr]
            if job_id in seen or job_id not in known:
                break
            seen.add(job_id)
            end += 1
        return max(end, start + 1)

    def apply_run(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        """A run (``run_end``) with one UPDATE statement; each op's own Outcome.

        An op whose guard matched nothing was not written by the statement; it then
        takes its own path (``apply``), which finds out why, exactly as when alone.
        """
        run = _RUNS[type(ops[0])]
        params = _params_json([run.params(op, self.now) for op in ops])
        if "\\u0000" in params:  # SQLite's JSON strings end at NUL: bind these one by one
            return [self.apply(op) for op in ops]
        rows = self.conn.execute(run.update.many, (self.now, params)).fetchall()
        updated = {row[0]: row[1:] for row in rows}
        outcomes: list[Outcome] = []
        for op in ops:
            job_id: str = op.job_id  # type: ignore[union-attr]
            row = updated.get(job_id)
            if row is None:
                outcomes.append(self.apply(op))
                continue
            job = job_from_update(self.fixed.rows[job_id], row)
            try:
                outcomes.append(Outcome(run.updated(self, op, job), None, True))
            except JoblineError as exc:
                outcomes.append(Outcome(error=exc, changed=False))
        return outcomes

    def flush(self) -> None:
        conn = self.conn
        if self.entries:
            conn.executemany(
                "INSERT INTO credit_entries (account_id, kind, amount, job_id, created_at, "
                "note) VALUES (?, ?, ?, ?, ?, ?)",
                self.entries,
            )
        if self.charges:
            # A replayed Complete of an ended job names its charge again: the first stays.
            conn.executemany(INSERT_CHARGE + " ON CONFLICT DO NOTHING", self.charges)
        if self.history:
            conn.executemany(
                "INSERT INTO job_history (job_id, account_id, status, at, detail) "
                "VALUES (?, ?, ?, ?, ?)",
                self.history,
            )
        if self.dirty:
            conn.executemany(
                "UPDATE accounts SET balance = ?, held = ?, in_flight = ? WHERE id = ?",
                [(*self.accounts[a][:3], a) for a in self.dirty],
            )
        if self.throttled:
            conn.executemany(
                "UPDATE accounts SET input_rejections = ?, input_rejections_at = ?, "
                "throttled_until = ? WHERE id = ?",
                [(*self.accounts[a][REJECTIONS:], a) for a in self.throttled],
            )
        if self.counters:
            changed = [(n, name) for name, n in self.counters.items() if n]
            if changed:
                conn.executemany("UPDATE ledger_counters SET n = n + ? WHERE name = ?", changed)

    # --- helpers ---

    def account(self, account_id: str) -> list[Any]:
        """The account's ``ACCOUNT_COLUMNS``, read once per batch."""
        cached = self.accounts.get(account_id)
        if cached is None:
            row = self.conn.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,)
            ).fetchone()
            if row is None:
                raise AccountNotFound(account_id)
            cached = self.accounts[account_id] = list(row)
        return cached

    def count(self, name: str, change: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + change

    def bucket(self, account_id: str, rate: float, burst: int) -> TokenBucket:
        """This batch's copy of the account's submit bucket (a new one if the rate changed)."""
        bucket = self.buckets.get(account_id)
        if bucket is None:
            kept = self.submit_buckets.buckets.get(account_id)
            if kept is not None and kept.rate == rate and kept.burst == burst:
                bucket = copy.copy(kept)
            else:
                bucket = TokenBucket(rate, burst)
            self.buckets[account_id] = bucket
        return bucket

    def job(self, job_id: str) -> Job:
        job = self.maybe_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def maybe_job(self, job_id: str) -> Job | None:
        row = self.conn.execute(SELECT_JOB, (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def update(self, job_id: str, update: _Update, params: tuple[Any, ...]) -> Job | None:
        """Run a guarded UPDATE; the job after it, or None when the guard matched nothing."""
        fixed = self.fixed.rows.get(job_id)
        if fixed is not None:
            row = self.conn.execute(update.short, params).fetchone()
            return None if row is None else job_from_update(fixed, row)
        row = self.conn.execute(update.full, params).fetchone()
        if row is None:
            return None
        job = job_from_row(row)
        if not job.terminal:
            self.fixed.remember(job)
        return job

    def hold(self, job: Job, detail: str) -> None:
        """The new job's hold, its first history row and its account's cache."""
        account = self.account(job.account_id)
        account[HELD] += job.cost
        account[IN_FLIGHT] += 1
        self.dirty.add(job.account_id)
        self.entries.append((job.account_id, "hold", job.cost, job.id, self.now, None))
        self.history.append((job.id, job.account_id, "queued", self.now, detail))
        self.fixed.remember(job)

    def settle(self, job: Job, kind: EntryKind, detail: str | None, fee: int = 0) -> Job:
        """After a guarded terminal UPDATE matched: the settlement of the job's hold. With
        a ``fee`` (a release only, 0 < fee <= cost): one capture of the fee and one release
        of the rest instead (the schema allows that pair, and only that pair)."""
        account = self.account(job.account_id)
        account[HELD] -= job.cost
        account[IN_FLIGHT] -= 1
        if kind is EntryKind.CAPTURE:
            account[BALANCE] -= job.cost
        self.dirty.add(job.account_id)
        if fee:
            account[BALANCE] -= fee
            rest = job.cost - fee
            self.entries.append((job.account_id, "capture", fee, job.id, self.now, FEE_NOTE))
            note = REFUND_LESS_FEE_NOTE
            self.entries.append((job.account_id, "release", rest, job.id, self.now, note))
        else:
            self.entries.append((job.account_id, kind.value, job.cost, job.id, self.now, None))
        self.history.append((job.id, job.account_id, job.status.value, self.now, detail))
        self.count(f"jobs_{job.status.value}")
        self.fixed.rows.pop(job.id, None)
        return job

    def started(self, op: StartAttempt, job: Job) -> Job:
        return job

    def processing(self, op: MarkProcessing, job: Job) -> Job:
        """After MARK_PROCESSING matched: the history row."""
        detail = f"{job.vendor} task {op.vendor_task_id} (attempt {op.attempt})"
        self.history.append((job.id, job.account_id, job.status.value, self.now, detail))
        return job

    def completed(self, op: Complete, job: Job) -> Job:
        self.charge(op.charge, "succeeded")
        return self.settle(job, EntryKind.CAPTURE, None)

    def charge(self, charge: VendorCharge | None, outcome: str | None = None) -> None:
        """A billed vendor attempt, inserted at the flush (once per job and attempt)."""
        if charge is not None:
            self.charges.append(_charge_row(charge, outcome or charge.outcome, self.now))

    def count_rejection(self, account_id: str, throttle: RejectionThrottle) -> None:
        """One more input rejection of the account: its throttle's leaky bucket."""
        account = self.account(account_id)
        level, until = throttle.after_rejection(
            account[REJECTIONS], account[REJECTIONS_AT], self.now
        )
        account[REJECTIONS], account[REJECTIONS_AT] = level, self.now
        if until is not None:
            account[THROTTLED_UNTIL] = max(until, account[THROTTLED_UNTIL] or 0.0)
        self.throttled.add(account_id)

    def absorbed(self, job: Job, event: JobEvent) -> tuple[Job, bool]:
        """A guarded UPDATE matched nothing: the job is terminal, or the move is illegal."""
        transition(job.status, event)  # raises IllegalTransition for a move the table forbids
        return job, False  # a terminal job absorbed the event

    # --- operations ---

    def _op_open_job(self, op: OpenJob) -> tuple[Job, bool]:
        if op.price < 0:
            raise ValueError(f"a job's price cannot be negative, not {op.price}")
        conn = self.conn
        if op.idempotency_key is not None:
            row = conn.execute(
                "SELECT job_id, request_hash FROM idempotency_keys "
                "WHERE account_id = ? AND key = ?",
                (op.account_id, op.idempotency_key),
            ).fetchone()
            if row is not None:
                if row[1] != op.request_hash:
                    raise IdempotencyConflict(op.idempotency_key, row[0])
                return self.job(row[0]), False
        account = self.account(op.account_id)
        refusal = self.refusal(op, account)
        if refusal is not None:
            existing = self.maybe_job(op.job_id)  # a replay of a job opened before
            if existing is None:
                raise refusal
            return existing, False
        now = self.now
        inserted = conn.execute(
            INSERT_JOB_UNLESS_EXISTS,
            (
                op.job_id,
                op.account_id,
                op.model,
                _to_json(op.input),
                op.price,
                op.trace_id,
                op.route_position,
                op.vendor,
                now,
                op.deadline,
                op.idempotency_key,
                op.redriven_from,
                now,
                now,
            ),
        ).rowcount
        if not inserted:
            return self.job(op.job_id), False
        self.take_submit_token(op, account)
        if op.idempotency_key is not None:
            conn.execute(
                "INSERT INTO idempotency_keys (account_id, key, job_id, request_hash, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (op.account_id, op.idempotency_key, op.job_id, op.request_hash, now),
            )
        job = Job(
            id=op.job_id,
            account_id=op.account_id,
            model=op.model,
            input=op.input,
            status=JobStatus.QUEUED,
            cost=op.price,
            trace_id=op.trace_id,
            route_position=op.route_position,
            vendor=op.vendor,
            vendor_task_id=None,
            attempts=0,
            vendor_attempts=0,
            not_before=now,
            deadline=op.deadline,
            result_key=None,
            error=None,
            idempotency_key=op.idempotency_key,
            redriven_from=op.redriven_from,
            created_at=now,
            updated_at=now,
        )
        self.hold(job, "opened" if op.redriven_from is None else f"redrive of {op.redriven_from}")
        return job, True

    def refusal(self, op: OpenJob, account: list[Any]) -> JoblineError | None:
        """Why the account may not open this job now (its own limits before the defaults)."""
        throttled_until = account[THROTTLED_UNTIL]
        if throttled_until is not None and throttled_until > self.now:
            return AccountThrottled(op.account_id, throttled_until - self.now)
        cap = account[MAX_IN_FLIGHT] if account[MAX_IN_FLIGHT] is not None else op.max_in_flight
        if cap is not None and account[IN_FLIGHT] >= cap:
            return TooManyJobsInFlight(op.account_id, cap)
        available = account[BALANCE] - account[HELD]
        if available < op.price:
            return InsufficientCredits(op.account_id, op.price, available)
        rate, burst = self.submit_rate(op, account)
        if rate > 0:
            delay = self.bucket(op.account_id, rate, burst).delay_until_available(self.now)
            if delay > 0:
                return SubmitRateLimited(op.account_id, rate, delay)
        return None

    def submit_rate(self, op: OpenJob, account: list[Any]) -> tuple[float, int]:
        rate = account[SUBMIT_RATE] if account[SUBMIT_RATE] is not None else op.submits_per_second
        burst = account[SUBMIT_BURST] if account[SUBMIT_BURST] is not None else op.submit_burst
        return float(rate), max(1, int(burst))

    def take_submit_token(self, op: OpenJob, account: list[Any]) -> None:
        rate, burst = self.submit_rate(op, account)
        if rate > 0:
            self.bucket(op.account_id, rate, burst).try_acquire(self.now)

    def _op_start_attempt(self, op: StartAttempt) -> tuple[Job, bool]:
        params = _start_params(op, self.now)
        job = self.update(op.job_id, START_ATTEMPT_SAME_VENDOR, params)
        if job is None:
            job = self.update(op.job_id, START_ATTEMPT, params)
        if job is not None:
            return job, True
        # Compare-and-set failed: terminal, already started, or not queued. The caller
        # reads the job it gets back to see which.
        return self.job(op.job_id), False

    def _op_mark_processing(self, op: MarkProcessing) -> tuple[Job, bool]:
        job = self.update(op.job_id, MARK_PROCESSING, _processing_params(op, self.now))
        if job is not None:
            return self.processing(op, job), True
        job = self.job(op.job_id)
        if (
            job.status is JobStatus.PROCESSING
            and job.attempts == op.attempt
            and job.vendor_task_id != op.vendor_task_id
        ):
            # A second vendor task for one attempt: the table has no such move.
            transition(job.status, JobEvent.SUBMITTED)
        return job, False  # terminal, a replay, or a stale attempt

    def _op_schedule_retry(self, op: ScheduleRetry) -> tuple[Job, bool]:
        params = (
            op.route_position,
            op.vendor,
            op.not_before,
            op.error,
            self.now,
            op.job_id,
            op.attempt,
        )
        job = self.update(op.job_id, SCHEDULE_RETRY, params)
        if job is None:
            return self.job(op.job_id), False  # terminal, stale attempt, or a replay
        self.history.append(
            (job.id, job.account_id, job.status.value, self.now, f"retry: {op.error}")
        )
        return job, True

    def _op_complete(self, op: Complete) -> tuple[Job, bool]:
        job = self.update(op.job_id, COMPLETE, _complete_params(op, self.now))
        if job is None:
            absorbed = self.absorbed(self.job(op.job_id), JobEvent.SUCCEEDED)
            if absorbed[0].status is not JobStatus.COMPLETED:
                self.charge(op.charge, "wasted")  # paid for; its job had ended
            return absorbed
        return self.completed(op, job), True

    def _op_fail(self, op: Fail) -> tuple[Job, bool]:
        event = JobEvent.EXPIRED if op.expired else JobEvent.FAILED
        if op.fee < 0:
            raise ValueError(f"a fee cannot be negative, not {op.fee}")
        job = self.update(
            op.job_id, EXPIRE if op.expired else FAIL, (op.error, self.now, op.job_id)
        )
        if job is None:
            return self.absorbed(self.job(op.job_id), event)
        fee = min(op.fee, job.cost) if op.input_rejected and not op.expired else 0
        self.settle(job, EntryKind.RELEASE, op.error, fee)
        if op.input_rejected and op.throttle is not None:
            self.count_rejection(job.account_id, op.throttle)
        self.count(DEAD_LETTERS_OPEN)
        self.conn.execute(
            "INSERT INTO dead_letters (job_id, account_id, model, vendor, error, attempts, "
            "trace_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.id,
                job.account_id,
                job.model,
                job.vendor,
                op.error,
                job.attempts,
                job.trace_id,
                self.now,
            ),
        )
        return job, True

    def _op_cancel(self, op: Cancel) -> tuple[Job, bool]:
        if op.account_id is None:
            job = self.update(op.job_id, CANCEL, ("canceled", self.now, op.job_id))
        else:
            params = ("canceled", self.now, op.job_id, op.account_id)
            job = self.update(op.job_id, CANCEL_OWN, params)
        if job is None:
            job = self.job(op.job_id)
            if op.account_id is not None and job.account_id != op.account_id:
                raise JobNotFound(op.job_id)
            return self.absorbed(job, JobEvent.CANCELED)
        if job.vendor_task_id is not None:
            # Processing: its task runs at the vendor until the processor's cancel is
            # confirmed. Kept as an orphan in this transaction, so a processor that
            # restarts before then still counts it and cancels it (RecordOrphan).
            until = self.now + CANCELED_TASK_HORIZON
            task = (job.id, job.attempts, job.vendor, "", self.now, until, job.vendor_task_id)
            self.conn.execute(INSERT_ORPHAN, task)
        return self.settle(job, EntryKind.RELEASE, "canceled"), True

    def _op_record_webhook(self, op: RecordWebhook) -> tuple[bool, bool]:
        new = self.conn.execute(
            "INSERT INTO webhook_receipts (vendor, webhook_id, received_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (op.vendor, op.webhook_id, self.now),
        ).rowcount
        return bool(new), bool(new)

    def _op_record_orphan(self, op: RecordOrphan) -> tuple[bool, bool]:
        new = self.conn.execute(
            INSERT_ORPHAN,
            (op.job_id, op.attempt, op.vendor, op.model, op.since, op.until, op.task_id),
        ).rowcount
        return bool(new), bool(new)

    def _op_end_orphan(self, op: EndOrphan) -> tuple[bool, bool]:
        ended = self.conn.execute(
            "UPDATE orphans SET ended_at = ?, task_id = ? "
            "WHERE job_id = ? AND attempt = ? AND ended_at IS NULL",
            (self.now, op.task_id, op.job_id, op.attempt),
        ).rowcount
        return bool(ended), bool(ended)

    def _op_record_charge(self, op: RecordCharge) -> tuple[bool, bool]:
        charge = op.charge
        new = self.conn.execute(
            INSERT_CHARGE + " ON CONFLICT DO NOTHING", _charge_row(charge, None, self.now)
        ).rowcount
        return bool(new), bool(new)

    def _op_clear_throttle(self, op: ClearThrottle) -> tuple[AccountThrottle, bool]:
        account = self.account(op.account_id)
        changed = account[REJECTIONS] != 0 or account[THROTTLED_UNTIL] is not None
        account[REJECTIONS:] = [0.0, None, None]
        self.throttled.add(op.account_id)
        return AccountThrottle(op.account_id), changed

    def _op_redrive(self, op: Redrive) -> tuple[Job, bool]:
        conn = self.conn
        row = conn.execute(
            "SELECT redriven_to FROM dead_letters WHERE job_id = ?", (op.job_id,)
        ).fetchone()
        if row is None:
            raise DeadLetterNotFound(op.job_id)
        if row[0] is not None:
            return self.job(row[0]), False
        dead = self.job(op.job_id)
        account = self.account(dead.account_id)
        available = account[BALANCE] - account[HELD]
        if available < dead.cost:
            raise InsufficientCredits(dead.account_id, dead.cost, available)
        now = self.now
        # The gateway names where on the route the new job starts: a redrive starts the
        # route over. Without a vendor, the dead job's vendor and route position carry over.
        if op.vendor:
            position, vendor = op.route_position, op.vendor
        else:
            position, vendor = dead.route_position, dead.vendor
        conn.execute(
            INSERT_JOB,
            (
                op.new_job_id,
                dead.account_id,
                dead.model,
                _to_json(dead.input),
                dead.cost,
                op.trace_id,
                position,
                vendor,
                now,
                op.deadline,
                None,
                dead.id,
                now,
                now,
            ),
        )
        conn.execute(
            "UPDATE dead_letters SET redriven_to = ? WHERE job_id = ?", (op.new_job_id, dead.id)
        )
        self.count(DEAD_LETTERS_OPEN, -1)
        job = self.job(op.new_job_id)
        self.hold(job, f"redrive of {dead.id}")
        return job, True


_HANDLERS: dict[type[Any], Callable[[_Batch, Any], tuple[Any, bool]]] = {
    CreateAccount: accounts_ops.create_account,
    Grant: accounts_ops.grant,
    CreateApiKey: accounts_ops.create_api_key,
    RevokeApiKey: accounts_ops.revoke_api_key,
    RecordKeyUse: accounts_ops.record_key_use,
    SetAccountLimits: accounts_ops.set_account_limits,
    OpenJob: _Batch._op_open_job,
    StartAttempt: _Batch._op_start_attempt,
    MarkProcessing: _Batch._op_mark_processing,
    ScheduleRetry: _Batch._op_schedule_retry,
    Complete: _Batch._op_complete,
    Fail: _Batch._op_fail,
    Cancel: _Batch._op_cancel,
    RecordWebhook: _Batch._op_record_webhook,
    Redrive: _Batch._op_redrive,
    RecordOrphan: _Batch._op_record_orphan,
    EndOrphan: _Batch._op_end_orphan,
    RecordCharge: _Batch._op_record_charge,
    ClearThrottle: _Batch._op_clear_throttle,
}


def _start_params(op: StartAttempt, now: float) -> tuple[Any, ...]:
    return (op.vendor, op.route_position, now, op.job_id, op.attempt)  # START_PARAMS


def _processing_params(op: MarkProcessing, now: float) -> tuple[Any, ...]:
    return (op.vendor_task_id, now, op.job_id, op.attempt)


INSERT_CHARGE = (
    "INSERT INTO vendor_charges (job_id, attempt, account_id, vendor, model, outcome, "
    "cost_micros, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _charge_row(charge: VendorCharge, outcome: str | None, now: float) -> tuple[Any, ...]:
    """A ``vendor_charges`` row (``INSERT_CHARGE``); ``outcome`` None: the charge's own."""
    return (
        charge.job_id,
        charge.attempt,
        charge.account_id,
        charge.vendor,
        charge.model,
        outcome or charge.outcome,
        charge.cost_micros,
        now,
    )


def _complete_params(op: Complete, now: float) -> tuple[Any, ...]:
    return (op.result_key, outputs_to_json(op.outputs), now, op.job_id)


@dataclass(frozen=True, slots=True)
class _Run:
    """How a run of one kind of op is applied (``_Batch.apply_run``).

    ``update`` is the op's usual first UPDATE, ``params`` its parameters for one op,
    ``updated`` what the op does once its UPDATE matched (as on its own path).
    """

    update: _Update
    params: Callable[[Any, float], tuple[Any, ...]]
    updated: Callable[[_Batch, Any, Job], Any]


# The hot, account-free transitions (and Complete, whose account effect is a sum).
# Their parameters are strings and integers besides ``now``, so JSON carries them exactly.
_RUNS: dict[type[Any], _Run] = {
    StartAttempt: _Run(START_ATTEMPT_SAME_VENDOR, _start_params, _Batch.started),
    MarkProcessing: _Run(MARK_PROCESSING, _processing_params, _Batch.processing),
    Complete: _Run(COMPLETE, _complete_params, _Batch.completed),
}


def run_batch(
    conn: sqlite3.Connection, ops: Sequence[LedgerOp], now: float, state: _WriterState
) -> list[Outcome]:
    """Apply ``ops`` in one transaction and commit once; one result per op, in order.

    Runs on the writer thread. A ``JoblineError`` raised by an op becomes that op's
    ``Outcome.error`` (the op wrote nothing). Anything else rolls the whole batch back
    and the ops are re-run one per transaction, so only the guilty op fails (with a
    ``LedgerFault``, or ``LedgerUnavailable`` for SQLite trouble a retry may outlast).
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:  # locked past busy_timeout, disk gone: nobody can proceed
        return [Outcome(error=_unavailable(exc), changed=False)] * len(ops)
    try:
        batch = _Batch(conn, now, state)
        results = batch.apply_all(ops)
        batch.flush()
    except Exception as exc:
        _rollback(conn)
        state.fixed.rows.clear()  # it may name jobs the rollback just un-inserted
        if len(ops) > 1:
            return [run_batch(conn, [op], now, state)[0] for op in ops]
        return [Outcome(error=_fault(type(ops[0]).__name__, exc), changed=False)]
    except BaseException:
        _rollback(conn)
        state.fixed.rows.clear()
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        state.fixed.rows.clear()
        return [Outcome(error=_unavailable(exc), changed=False)] * len(ops)
    if batch.buckets:
        state.buckets.keep(batch.buckets)
    return results


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


# --- where the database work runs ----------------------------------------------------


@dataclass(frozen=True)
class LedgerMode:
    """How a ledger runs its database work.

    ``inline=False`` (the runtime): each connection is owned by a thread of its own, so
    a commit's fsync never blocks the event loop. ``inline=True`` (a simulation on
    virtual time): every call runs on the event loop itself, one after the other, on one
    connection, so no thread runs and a seeded run is repeatable. ``durable=False`` turns
    SQLite's ``synchronous`` off: a crash of the machine may lose the last commits;
    ``memory=True`` keeps the whole database in this process's memory (``memory_uri``,
    named after the path; gone when its last connection closes). Only a simulation, whose
    database is thrown away at the end, can accept either.
    """

    inline: bool = False
    durable: bool = True
    memory: bool = False


THREADED = LedgerMode()  # the runtime's: a thread per connection, durable commits


class _Connection:
    """One connection and where the work on it runs: on a thread of its own (the
    default), or inline on the event loop (``LedgerMode.inline``)."""

    def __init__(self, name: str, *, inline: bool = False) -> None:
        self._executor = None if inline else ThreadPoolExecutor(1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on this connection's thread (or inline). Raises only
        ``JoblineError``s: sqlite3 errors become LedgerUnavailable, anything unexpected a
        LedgerFault (logged)."""
        if self._executor is None:
            return self.call_inline(fn, *args)
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, fn, self._conn, *args)
        except RuntimeError as exc:  # the executor was shut down
            raise _unavailable(exc) from exc
        with _as_ledger_errors(fn):
            return await future

    def call_inline(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` here and now (``inline`` only); raises as ``call``."""
        with _as_ledger_errors(fn):
            return fn(self._conn, *args)

    async def open(
        self, path: Path, busy_timeout_s: float, *, writer: bool, mode: LedgerMode
    ) -> None:
        def opened(_: None) -> sqlite3.Connection:
            conn = connect(
                path, busy_timeout_s=busy_timeout_s, durable=mode.durable, memory=mode.memory
            )
            if writer:
                migrate(conn)
            else:
                conn.execute("PRAGMA query_only = ON")
            return conn

        self._conn = await self.call(opened)

    async def close(self) -> None:
        if self._conn is not None:
            await self.call(lambda conn: conn.close())
            self._conn = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def offload(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, blocking work that needs no connection of ours: on a
        thread of its own, or inline."""
        if self._executor is None:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)


class _Waiter:
    """A caller of ``execute_many``: its future, and its ops' Outcomes as batches answer them."""

    __slots__ = ("future", "missing", "outcomes")

    def __init__(self, future: asyncio.Future[list[Outcome]], count: int) -> None:
        self.future = future
        self.missing = count  # ops not answered yet
        self.outcomes: list[Outcome] = []


def _resolve(future: asyncio.Future[list[Outcome]], outcomes: list[Outcome]) -> None:
    if not future.done():  # else the caller gave up waiting; its ops still happened
        future.set_result(outcomes)


@dataclass(slots=True)
class WriterStats:
    """What the group commit did: ``ops / batches`` is the grouping."""

    batches: int = 0
    ops: int = 0
    largest_batch: int = 0


# --- the ledger -----------------------------------------------------------------------


class Ledger:
    """The single source of truth for jobs and money. Use ``await Ledger.open(path)``.

    Call it from the event loop that opened it. Reads go to separate connections and
    threads (point reads and page reads apart) and may run while a batch is being
    written (``LedgerMode``: or all of them run inline on the event loop, for a
    simulation).
    """

    def __init__(self, path: Path, clock: Callable[[], float], mode: LedgerMode = THREADED) -> None:
        self.path = path
        self.mode = mode
        self._clock = clock
        self._writer = _Connection("jobline-ledger-writer", inline=mode.inline)
        # Inline, every call runs alone on the loop: reads take the writer's connection (the
        # others exist for threads; on an in-memory database each one more makes every
        # commit cost more).
        self._reader = self._writer
        self._lists = self._writer
        if not mode.inline:
            self._reader = _Connection("jobline-ledger-reader")  # a few rows
            self._lists = _Connection("jobline-ledger-lists")  # pages, scans
        self._queue: list[LedgerOp] = []  # submitted, not yet run
        self._waiters: deque[_Waiter] = deque()  # their callers, in the same order
        self._wakeup = asyncio.Event()  # threaded: the writer task waits on it
        # The loop that opens the ledger serves it; asking for the running loop on each
        # submit costs a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._task: asyncio.Task[None] | None = None  # threaded: the writer task
        self._drain_due = False  # inline: a drain is scheduled on the loop
        self._closed: asyncio.Future[None] | None = None  # inline: set by the last drain
        self.stats = WriterStats()
        self._state = _WriterState(_FixedColumns(), _SubmitBuckets())  # writer thread only

    @classmethod
    async def open(
        cls,
        path: str | Path,
        clock: Callable[[], float] = time.time,
        *,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        mode: LedgerMode = THREADED,
    ) -> Ledger:
        """Open (creating or migrating) the database at ``path`` and start the writer."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ledger = cls(path, clock, mode)
        try:
            await ledger._writer.open(path, busy_timeout_s, writer=True, mode=mode)
            if not mode.inline:
                await ledger._reader.open(path, busy_timeout_s, writer=False, mode=mode)
                await ledger._lists.open(path, busy_timeout_s, writer=False, mode=mode)
        except BaseException:
            await ledger._writer.close()
            await ledger._reader.close()
            await ledger._lists.close()
            raise
        if mode.inline:
            ledger._schedule_drain()
        else:
            ledger._task = ledger._loop.create_task(
                ledger._write_loop(), name="jobline-ledger-writer"
            )
        return ledger

    async def close(self) -> None:
        """Finish every operation already submitted, then close both connections."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._wakeup.set()
            await self._task
        elif self.mode.inline:
            self._closed = self._loop.create_future()
            if not self._drain_due:
                self._schedule_drain()
            await self._closed
        await self._writer.close()
        await self._reader.close()
        await self._lists.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the write path ---

    async def execute(self, op: LedgerOp) -> Outcome:
        """Run one operation (grouped with every other caller's); never raises LedgerError."""
        return (await self._submit([op]))[0]

    async def execute_many(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        """One Outcome per op, in order (each op is still its own unit of success)."""
        if not ops:
            return []
        return await self._submit(ops)

    def _submit(self, ops: Sequence[LedgerOp]) -> asyncio.Future[list[Outcome]]:
        """Queue ``ops`` for the next batch; one future for all of their Outcomes."""
        future: asyncio.Future[list[Outcome]] = self._loop.create_future()
        if self._closing:
            closed = Outcome(error=LedgerUnavailable("the ledger is closed"), changed=False)
            self._loop.call_soon(_resolve, future, [closed] * len(ops))
            return future
        self._queue.extend(ops)
        self._waiters.append(_Waiter(future, len(ops)))
        if self._task is not None:
            self._wakeup.set()
        elif not self._drain_due:
            self._schedule_drain()
        return future

    async def _write_loop(self) -> None:
        """Threaded: run what is queued, a batch at a time on the writer's thread; what
        arrives meanwhile goes in the next batch."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                ops = self._take_batch()
                try:
                    results = await self._writer.call(run_batch, ops, self._clock(), self._state)
                except BaseException as exc:  # the thread is gone: the outcome is unknown
                    self._answer(self._lost(ops, exc))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._count(ops)
                self._answer(results)
            if self._closing:
                return

    def _schedule_drain(self) -> None:
        """Inline: run what is queued on the loop's next turn, as the writer task of the
        threaded mode would when woken (so callers are answered in the same order)."""
        self._drain_due = True
        self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Inline: every queued op, a batch at a time, on the loop itself."""
        self._drain_due = False
        while self._queue:
            ops = self._take_batch()
            try:
                results = self._writer.call_inline(run_batch, ops, self._clock(), self._state)
            except BaseException as exc:
                self._answer(self._lost(ops, exc))
                if not isinstance(exc, Exception):
                    raise
                continue
            self._count(ops)
            self._answer(results)
        if self._closing and self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def _take_batch(self) -> list[LedgerOp]:
        ops = self._queue[:MAX_BATCH]
        del self._queue[:MAX_BATCH]
        return ops

    @staticmethod
    def _lost(ops: list[LedgerOp], exc: BaseException) -> list[Outcome]:
        error = exc if isinstance(exc, LedgerError) else _unavailable(exc)
        return [Outcome(error=error, changed=False)] * len(ops)

    def _count(self, ops: list[LedgerOp]) -> None:
        stats = self.stats
        stats.batches += 1
        stats.ops += len(ops)
        stats.largest_batch = max(stats.largest_batch, len(ops))

    def _answer(self, results: list[Outcome]) -> None:
        """Hand each waiting caller its ops' Outcomes (the batch answers the head of the
        queue). A caller whose ops are all answered gets them on the loop's next turn,
        as when each op had a future of its own and ``gather`` collected them: callers
        resume in the same order as then, so a seeded simulation keeps its trace."""
        waiters = self._waiters
        start, end = 0, len(results)
        while start < end:
            waiter = waiters[0]
            taken = results[start : start + waiter.missing]
            waiter.outcomes.extend(taken)
            waiter.missing -= len(taken)
            start += len(taken)
            if waiter.missing:
                break  # the rest of its ops are in the next batch
            waiters.popleft()
            self._loop.call_soon(_resolve, waiter.future, waiter.outcomes)

    async def check_invariants(self) -> list[Violation]:
        """Every violation of I1, I2 and I5 in the database now
        (``runtime.invariants.check_invariants``: a connection of its own, off the event
        loop unless the ledger runs inline)."""
        return await self._reader.offload(check_invariants, self.path, memory=self.mode.memory)

    # --- reads ---

    async def get_job(self, job_id: str, account_id: str | None = None) -> Job:
        """The job; ``JobNotFound`` also when it belongs to another account."""
        job = await self._reader.call(reads.job, job_id)
        if job is None or (account_id is not None and job.account_id != account_id):
            raise JobNotFound(job_id)
        return job

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Many jobs in one query, in the order asked (None for an unknown id)."""
        return await self._reader.call(reads.jobs, list(job_ids))

    async def list_jobs(
        self,
        account_id: str,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """The account's jobs, newest first; pass ``next_cursor`` back for the next page."""
        if limit < 1:
            raise InputInvalid(f"limit must be at least 1, not {limit}")
        before: int | None = None
        if cursor is not None:
            try:
                before = int(cursor)
            except ValueError:
                raise InputInvalid(f"invalid cursor {cursor[:40]!r}") from None
        return await self._lists.call(reads.page, account_id, status, limit, before)

    async def jobs_for_vendor(
        self,
        vendor: str,
        statuses: Sequence[JobStatus] = (JobStatus.QUEUED, JobStatus.PROCESSING),
    ) -> list[Job]:
        return await self._lists.call(reads.jobs_for_vendor, vendor, list(statuses))

    async def submits_in_doubt(self, vendor: str, updated_after: float) -> list[Job]:
        """Jobs of ``vendor`` (any status) whose last submit may have created a vendor task
        jobline never recorded, last updated after ``updated_after``."""
        return await self._lists.call(reads.in_doubt, vendor, updated_after)

    async def orphans(self, vendor: str, now: float) -> list[Orphan]:
        """The open orphans of ``vendor`` (``RecordOrphan``) the vendor may still run at
        ``now``: not ended, ``until`` later than ``now``."""
        return await self._reader.call(reads.orphans, vendor, now)

    async def jobs_by_status(
        self, status: JobStatus, updated_before: float | None = None, limit: int = 1000
    ) -> list[Job]:
        """Jobs in ``status``, least recently updated first."""
        return await self._lists.call(reads.jobs_by_status, status, updated_before, limit)

    async def expired_jobs(self, now: float, limit: int = 1000) -> list[Job]:
        """Non-terminal jobs whose deadline has passed, earliest deadline first."""
        return await self._lists.call(reads.expired, now, limit)

    async def history(self, job_id: str, after_seq: int = 0) -> list[JobHistoryEntry]:
        """The job's status changes in order (those after ``after_seq``, to resume)."""
        return await self._reader.call(reads.history, job_id, after_seq)

    async def account_history(
        self, account_id: str, after_seq: int, limit: int = 500
    ) -> list[JobHistoryEntry]:
        """The status changes of the account's jobs after ``after_seq``, oldest first."""
        return await self._lists.call(reads.account_history, account_id, after_seq, limit)

    async def accounts_changed(
        self, after_seq: int | None, limit: int = 5000
    ) -> tuple[int, list[str]]:
        """(last seq read, accounts with status changes after ``after_seq``); see reads."""
        return await self._lists.call(reads.accounts_changed, after_seq, limit)

    async def accounts(self, limit: int = 50, cursor: str | None = None) -> AccountPage:
        """Accounts newest first with their grants; pass ``next_cursor`` back for more."""
        if limit < 1:
            raise InputInvalid(f"limit must be at least 1, not {limit}")
        return await self._lists.call(reads.accounts, limit, _time_cursor(cursor))

    async def statement(
        self,
        account_id: str,
        limit: int = 100,
        cursor: str | None = None,
        newest_first: bool = False,
    ) -> EntryPage:
        """One page of the account's credit entries, oldest first (or newest first); pass
        ``next_cursor`` back for the next page. A keyset read: every page costs the same."""
        after = _int_cursor(cursor, limit)
        return await self._lists.call(reads.statement, account_id, limit, after, newest_first)

    async def balance(self, account_id: str) -> Balance:
        balance = await self._reader.call(reads.balance, account_id)
        if balance is None:
            raise AccountNotFound(account_id)
        return balance

    async def keys_for_hashes(self, key_hashes: Sequence[str]) -> list[KeyMatch | None]:
        """The account and key of each API key hash, in the order asked (None: unknown).
        A revoked key is still matched, with its ``expires_at``: the caller compares it."""
        return await self._reader.call(reads.keys_for_hashes, list(key_hashes))

    async def revocations(
        self, after_seq: int | None, limit: int = 1000
    ) -> tuple[int, list[KeyRevocation]]:
        """The revocation feed: (last seq read, keys revoked after ``after_seq``); with
        None, where the feed ends now and nothing. Gateways follow it to drop keys."""
        return await self._reader.call(reads.revocations, after_seq, limit)

    async def api_keys(
        self, account_id: str, limit: int = 50, cursor: str | None = None
    ) -> ApiKeyPage:
        """The account's API keys, newest first (never a key or its hash)."""
        before = _int_cursor(cursor, limit)
        return await self._lists.call(reads.api_keys, account_id, limit, before)

    async def account_limits(self, account_id: str) -> AccountLimits:
        limits = await self._reader.call(reads.account_limits, account_id)
        if limits is None:
            raise AccountNotFound(account_id)
        return limits

    async def slot_weights(self, account_ids: Sequence[str]) -> dict[str, float]:
        """The fair-share weights of those accounts that have their own (others: 1)."""
        return await self._reader.call(reads.slot_weights, list(account_ids))

    async def account_throttle(self, account_id: str) -> AccountThrottle:
        throttle = await self._reader.call(reads.account_throttle, account_id)
        if throttle is None:
            raise AccountNotFound(account_id)
        return throttle

    async def dead_letters(
        self, limit: int = 100, include_redriven: bool = False, cursor: str | None = None
    ) -> DeadLetterPage:
        """Dead letters, newest first, a page at a time."""
        if limit < 1:
            raise InputInvalid(f"limit must be at least 1, not {limit}")
        before = _time_cursor(cursor)
        return await self._lists.call(reads.dead_letters, limit, include_redriven, before)

    async def open_dead_letters(self) -> int:
        """Dead letters not re-driven: one counter row, however many there are."""
        return await self._reader.call(reads.counter, DEAD_LETTERS_OPEN)

    async def counts(self) -> dict[str, int]:
        """Jobs by status (every status present), for metrics: the open ones counted from
        their small index, the terminal ones kept as counters."""
        return await self._lists.call(reads.counts)


def _int_cursor(cursor: str | None, limit: int) -> int | None:
    if limit < 1:
        raise InputInvalid(f"limit must be at least 1, not {limit}")
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise InputInvalid(f"invalid cursor {cursor[:40]!r}")
    return int(cursor)


def _time_cursor(cursor: str | None) -> tuple[float, str] | None:
    """A ``"<created_at>/<id>"`` cursor (a float time and an id), as pages hand it out."""
    if cursor is None:
        return None
    created, _, item = cursor.partition("/")
    try:
        at = float(created)
    except ValueError:
        raise InputInvalid(f"invalid cursor {cursor[:40]!r}") from None
    if not item or math.isnan(at):  # an infinite time compares fine in SQL
        raise InputInvalid(f"invalid cursor {cursor[:40]!r}")
    return at, item
