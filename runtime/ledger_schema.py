"""The ledger's SQLite schema: the migrations, the connection settings, rows -> values.

Schema versions live in ``PRAGMA user_version``; ``MIGRATIONS`` is applied in order at
open (``migrate``), each step in its own transaction. ``runtime.ledger`` writes through
this schema and ``runtime.ledger_reads`` reads it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runtime.errors import LedgerUnavailable
from runtime.models import CreditEntry, EntryKind, Job
from runtime.states import TERMINAL, JobStatus

BUSY_TIMEOUT_S = 5.0
# Checkpoint when the WAL reaches 64 MiB (SQLite's default is 4 MiB): index pages that
# many batches touch are copied to the database once, not once per 4 MiB. (Measured: a
# PASSIVE checkpoint on a thread of its own instead was slower, on this 2-core box.)
WAL_AUTOCHECKPOINT_PAGES = 16_384


def sql_set(statuses: Iterable[JobStatus]) -> str:
    """``('a', 'b')`` for an ``IN`` clause, from enum values (never from user input)."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


# The same text in the partial indexes and in the queries that should use them: SQLite
# uses a partial index only when the query's WHERE contains its WHERE term verbatim.
OPEN_SQL = f"status IN {sql_set(set(JobStatus) - TERMINAL)}"
TERMINAL_SQL = sql_set(TERMINAL)


# --- schema ---------------------------------------------------------------------------

MIGRATIONS: list[list[str]] = [
    # 1: accounts, jobs, credit entries, idempotency keys.
    [
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            api_key_hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            balance INTEGER NOT NULL DEFAULT 0,  -- cached: grants - captures
            held INTEGER NOT NULL DEFAULT 0,     -- cached: open holds
            CHECK (held >= 0 AND balance >= held)
        ) WITHOUT ROWID""",
        """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,  -- insertion order: stable keyset pagination
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            model TEXT NOT NULL,
            input TEXT NOT NULL,  -- JSON
            status TEXT NOT NULL
                CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'canceled')),
            cost INTEGER NOT NULL CHECK (cost > 0),
            trace_id TEXT NOT NULL,
            route_position INTEGER NOT NULL,
            vendor TEXT NOT NULL,
            vendor_task_id TEXT,
            attempts INTEGER NOT NULL,
            vendor_attempts INTEGER NOT NULL,
            not_before REAL NOT NULL,
            deadline REAL NOT NULL,
            result_key TEXT,
            error TEXT,
            idempotency_key TEXT,
            redriven_from TEXT REFERENCES jobs(id),
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX jobs_account ON jobs(account_id)",  # (account_id, seq): pages
        # Only the open jobs (in flight: few, next to the terminal ones) are indexed by
        # status; the sweeper's and processors' queries read this small index. Every
        # status change rewrites an index entry, so there is exactly one such index.
        f"""CREATE INDEX jobs_open ON jobs(account_id, status, vendor, deadline)
            WHERE {OPEN_SQL}""",
        """CREATE TABLE credit_entries (
            id INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            kind TEXT NOT NULL CHECK (kind IN ('grant', 'hold', 'capture', 'release')),
            amount INTEGER NOT NULL CHECK (amount > 0),
            job_id TEXT REFERENCES jobs(id),
            ref TEXT,
            created_at REAL NOT NULL,
            CHECK ((kind = 'grant') = (job_id IS NULL))
        )""",
        "CREATE INDEX credit_entries_account ON credit_entries(account_id)",
        # (job_id, is-hold) unique: one hold per job, and ONE settlement (a capture or a
        # release, never both, never two) — stronger than unique (job_id, kind).
        """CREATE UNIQUE INDEX credit_entries_job
            ON credit_entries(job_id, kind = 'hold') WHERE job_id IS NOT NULL""",
        "CREATE UNIQUE INDEX credit_entries_ref ON credit_entries(ref) WHERE ref IS NOT NULL",
        """CREATE TABLE idempotency_keys (
            account_id TEXT NOT NULL REFERENCES accounts(id),
            key TEXT NOT NULL,
            job_id TEXT NOT NULL UNIQUE REFERENCES jobs(id),
            request_hash TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (account_id, key)
        ) WITHOUT ROWID""",
    ],
    # 2: webhook receipts, dead letters, job history (backfilled from the jobs).
    [
        """CREATE TABLE webhook_receipts (
            vendor TEXT NOT NULL,
            webhook_id TEXT NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (vendor, webhook_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE dead_letters (
            job_id TEXT PRIMARY KEY REFERENCES jobs(id),
            account_id TEXT NOT NULL,
            model TEXT NOT NULL,
            vendor TEXT NOT NULL,
            error TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            trace_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            redriven_to TEXT REFERENCES jobs(id)
        ) WITHOUT ROWID""",
        "CREATE INDEX dead_letters_created ON dead_letters(created_at)",
        """CREATE TABLE job_history (
            seq INTEGER PRIMARY KEY,  -- global order; an SSE stream resumes after a seq
            job_id TEXT NOT NULL REFERENCES jobs(id),
            status TEXT NOT NULL,
            at REAL NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX job_history_job ON job_history(job_id)",
        """INSERT INTO job_history (job_id, status, at, detail)
            SELECT id, status, updated_at, 'backfilled by schema migration 2'
            FROM jobs ORDER BY seq""",
    ],
    # 3: the cached in-flight count (the per-account cap reads it), and guards in SQL:
    # entries and history are append-only, a terminal job never changes.
    [
        "ALTER TABLE accounts ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0",
        f"""UPDATE accounts SET in_flight =
            (SELECT count(*) FROM jobs WHERE jobs.account_id = accounts.id AND {OPEN_SQL})""",
        """CREATE TRIGGER credit_entries_no_update BEFORE UPDATE ON credit_entries
            BEGIN SELECT RAISE(ABORT, 'credit_entries is append-only'); END""",
        """CREATE TRIGGER credit_entries_no_delete BEFORE DELETE ON credit_entries
            BEGIN SELECT RAISE(ABORT, 'credit_entries is append-only'); END""",
        """CREATE TRIGGER job_history_no_update BEFORE UPDATE ON job_history
            BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END""",
        """CREATE TRIGGER job_history_no_delete BEFORE DELETE ON job_history
            BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END""",
        f"""CREATE TRIGGER jobs_terminal_absorbs BEFORE UPDATE ON jobs
            WHEN OLD.status IN {TERMINAL_SQL}
            BEGIN SELECT RAISE(ABORT, 'a terminal job never changes'); END""",
    ],
    # 4: a submit in doubt. StartAttempt sets it, MarkProcessing and ScheduleRetry clear
    # it: while set, a vendor task may run whose id jobline never recorded (the
    # processor stopped between submit and MarkProcessing). A restarted processor holds
    # a slot for each (``Ledger.submits_in_doubt``). Terminal jobs keep the flag (a
    # terminal row never changes), so the partial index holds those few rows as well.
    [
        "ALTER TABLE jobs ADD COLUMN submit_in_doubt INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX jobs_in_doubt ON jobs(vendor) WHERE submit_in_doubt = 1",
    ],
    # 5: reads for the account-wide event stream and the operator's account list. The
    # history carries its job's account (NOT NULL, so the table is rebuilt, backfilled
    # from the jobs; seq values are kept, so a stream resumes across the migration):
    # ``GET /v1/events`` reads (account_id, seq) ranges. Grants get a partial index (a
    # few rows per account, next to millions of holds), accounts one by creation time.
    [
        """CREATE TABLE job_history_v5 (
            seq INTEGER PRIMARY KEY,  -- global order; an SSE stream resumes after a seq
            job_id TEXT NOT NULL REFERENCES jobs(id),
            account_id TEXT NOT NULL,
            status TEXT NOT NULL,
            at REAL NOT NULL,
            detail TEXT
        )""",
        """INSERT INTO job_history_v5 (seq, job_id, account_id, status, at, detail)
            SELECT h.seq, h.job_id, j.account_id, h.status, h.at, h.detail
            FROM job_history h JOIN jobs j ON j.id = h.job_id ORDER BY h.seq""",
        "DROP TABLE job_history",  # and its index and triggers
        "ALTER TABLE job_history_v5 RENAME TO job_history",
        "CREATE INDEX job_history_job ON job_history(job_id)",
        "CREATE INDEX job_history_account ON job_history(account_id, seq)",
        """CREATE TRIGGER job_history_no_update BEFORE UPDATE ON job_history
            BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END""",
        """CREATE TRIGGER job_history_no_delete BEFORE DELETE ON job_history
            BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END""",
        """CREATE INDEX credit_entries_grants ON credit_entries(account_id, id)
            WHERE kind = 'grant'""",
        "CREATE INDEX accounts_created ON accounts(created_at, id)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def memory_uri(path: str | Path) -> str:
    """The URI of the in-memory database named after ``path``, shared by every connection
    of this process that opens it (SQLite's shared cache): gone when the last one closes."""
    return f"file:{quote(str(Path(path).resolve()))}?mode=memory&cache=shared"


def connect(
    path: str | Path,
    *,
    busy_timeout_s: float = BUSY_TIMEOUT_S,
    durable: bool = True,
    memory: bool = False,
) -> sqlite3.Connection:
    """A connection with the ledger's pragmas; autocommit mode (transactions are explicit).

    ``durable=False``: no fsync at commit (``synchronous = OFF``); ``memory=True``: the
    database is in this process's memory (``memory_uri``), nothing reaches a disk. Both
    are for a simulation's throw-away database only. Also used by the benchmark, so that
    raw SQLite is measured with the same settings.
    """
    conn = sqlite3.connect(
        memory_uri(path) if memory else str(path),
        isolation_level=None,
        timeout=busy_timeout_s,
        cached_statements=256,
        uri=memory,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    if not memory:  # an in-memory database keeps its journal in memory; WAL needs a file
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'OFF'}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    return conn


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migration steps up to ``target``; returns the version reached.

    Each step runs in its own ``BEGIN IMMEDIATE`` transaction and re-reads the version
    under the write lock, so two processes opening one old database migrate it once.
    """
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        raise LedgerUnavailable(
            f"database schema version {version} is newer than this jobline ({SCHEMA_VERSION})"
        )
    while version < target:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _user_version(conn)
            if version < target:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


# --- rows -> values -------------------------------------------------------------------

# The jobs table's columns that make a Job, in the dataclass's field order (a unit test
# holds the two and the schema together). ``seq`` and ``submit_in_doubt`` stay in SQL.
JOB_FIELDS = (
    "id", "account_id", "model", "input", "status", "cost", "trace_id", "route_position",
    "vendor", "vendor_task_id", "attempts", "vendor_attempts", "not_before", "deadline",
    "result_key", "error", "idempotency_key", "redriven_from", "created_at", "updated_at",
)  # fmt: skip
# The columns an update can change; every other one is fixed when the job is opened.
MUTABLE_FIELDS = (
    "status", "route_position", "vendor", "vendor_task_id", "attempts", "vendor_attempts",
    "not_before", "result_key", "error", "updated_at",
)  # fmt: skip
FIXED_FIELDS = tuple(name for name in JOB_FIELDS if name not in MUTABLE_FIELDS)
JOB_COLUMNS = ", ".join(JOB_FIELDS)
MUTABLE_COLUMNS = ", ".join(MUTABLE_FIELDS)
STATUS_BY_VALUE = {s.value: s for s in JobStatus}
KIND_BY_VALUE = {k.value: k for k in EntryKind}


def job_from_row(row: Any) -> Job:
    """A Job from a row selected as ``JOB_COLUMNS``."""
    return Job(
        id=row[0],
        account_id=row[1],
        model=row[2],
        input=json.loads(row[3]),
        status=STATUS_BY_VALUE[row[4]],
        cost=row[5],
        trace_id=row[6],
        route_position=row[7],
        vendor=row[8],
        vendor_task_id=row[9],
        attempts=row[10],
        vendor_attempts=row[11],
        not_before=row[12],
        deadline=row[13],
        result_key=row[14],
        error=row[15],
        idempotency_key=row[16],
        redriven_from=row[17],
        created_at=row[18],
        updated_at=row[19],
    )


def fixed_fields(job: Job) -> dict[str, Any]:
    """The job's ``FIXED_FIELDS``, by name: what ``job_from_update`` needs besides a row."""
    return {name: getattr(job, name) for name in FIXED_FIELDS}


def job_from_update(fixed: dict[str, Any], row: Any) -> Job:
    """A Job from its ``fixed_fields`` and a row selected as ``MUTABLE_COLUMNS``."""
    return Job(
        **fixed,
        status=STATUS_BY_VALUE[row[0]],
        route_position=row[1],
        vendor=row[2],
        vendor_task_id=row[3],
        attempts=row[4],
        vendor_attempts=row[5],
        not_before=row[6],
        result_key=row[7],
        error=row[8],
        updated_at=row[9],
    )


def entry_from_row(row: Any) -> CreditEntry:
    return CreditEntry(row[0], row[1], KIND_BY_VALUE[row[2]], row[3], row[4], row[5], row[6])


SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
