"""The ledger's SQLite file: the connection settings, applying the migrations, rows -> values.

Schema versions live in ``PRAGMA user_version``; ``runtime.ledger_migrations.MIGRATIONS``
is applied in order at open (``migrate``), each step in its own transaction.
``runtime.ledger`` writes through this schema and ``runtime.ledger_reads`` reads it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runtime.errors import LedgerUnavailable, NotALedger
from runtime.ledger_migrations import MIGRATIONS, SCHEMA_VERSION, Step
from runtime.models import CreditEntry, EntryKind, Job, StoredOutput
from runtime.states import JobStatus

BUSY_TIMEOUT_S = 5.0
# Checkpoint when the WAL reaches 64 MiB (SQLite's default is 4 MiB): index pages that
# many batches touch are copied to the database once, not once per 4 MiB. (Measured: a
# PASSIVE checkpoint on a thread of its own instead was slower, on this 2-core box.)
WAL_AUTOCHECKPOINT_PAGES = 16_384


def memory_uri(path: str | Path) -> str:
    """The URI of the in-memory database named after ``path``, shared by every connection
    of this process that opens it (SQLite's memdb VFS: a name starting with ``/``): gone
    when the last one closes. Not ``mode=memory&cache=shared``: there a commit costs more
    the larger the database (measured: 5 µs at 4k pages, 18 µs at 27k), so a simulation
    slowed down as its ledger grew (100k jobs: about half the CPU near the end)."""
    return f"file:{quote(str(Path(path).resolve()))}?vfs=memdb"


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


def ledger_file_problem(path: str | Path, *, current: bool = False) -> NotALedger | None:
    """Why the existing file at ``path`` is not a ledger this jobline can open, or None.

    Reads it without writing (``mode=ro``): not an SQLite database, an SQLite database
    holding other tables but not jobline's schema (``user_version`` 0), or a schema
    version newer than ``SCHEMA_VERSION``. ``current`` also refuses an older version
    (a reader such as the invariant checker expects the current schema; the ledger
    migrates an older one when it opens it). An empty file is a ledger not yet created.
    """
    name = str(path)
    try:
        conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)
        try:
            version = _user_version(conn)
            tables = int(conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "disk I/O error"
        return NotALedger(name, f"not a jobline ledger (SQLite cannot read it: {exc})")
    if version == 0 and tables:
        return NotALedger(name, "not a jobline ledger (an SQLite database without its schema)")
    if version > SCHEMA_VERSION:
        return NotALedger(
            name,
            f"ledger schema version {version} is unknown to this jobline (it reads up to "
            f"{SCHEMA_VERSION}); it was written by a newer jobline",
        )
    if current and version < SCHEMA_VERSION:
        why = (
            "an empty file, not a jobline ledger yet"
            if version == 0
            else f"ledger schema version {version} is older than this jobline's "
            f"{SCHEMA_VERSION}; start jobline on it once to migrate it"
        )
        return NotALedger(name, why)
    return None


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migration steps up to ``target``; returns the version reached.

    Each step runs in its own ``BEGIN IMMEDIATE`` transaction and re-reads the version
    under the write lock, so two processes opening one old database migrate it once.
    Foreign keys are off while a step runs, so a step may rebuild a table others refer
    to (SQLite's procedure: it cannot switch them off inside a transaction); before it
    commits, ``PRAGMA foreign_key_check`` must find nothing.
    """
    version = _user_version(conn)
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
        raise LedgerUnavailable("not a jobline ledger (an SQLite database without its schema)")
    if version > SCHEMA_VERSION:
        raise LedgerUnavailable(
            f"database schema version {version} is newer than this jobline ({SCHEMA_VERSION})"
        )
    if version >= target:
        return version
    foreign_keys = int(conn.execute("PRAGMA foreign_keys").fetchone()[0])
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        while version < target:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = _user_version(conn)
                if version < target:
                    _apply(conn, MIGRATIONS[version], version + 1)
                    version += 1
                    conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    finally:
        conn.execute(f"PRAGMA foreign_keys = {foreign_keys}")
    return version


def _apply(conn: sqlite3.Connection, steps: list[Step], version: int) -> None:
    for step in steps:
        if isinstance(step, str):
            conn.execute(step)
        else:
            step(conn)
    broken = conn.execute("PRAGMA foreign_key_check").fetchmany(5)
    if broken:
        raise LedgerUnavailable(f"schema migration {version} breaks foreign keys: {broken}")


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


# --- rows -> values -------------------------------------------------------------------

# The jobs table's columns that make a Job, in the dataclass's field order (a unit test
# holds the two and the schema together). ``seq`` and ``submit_in_doubt`` stay in SQL.
# ``outputs`` came with schema 6, so it is last in both.
JOB_FIELDS = (
    "id", "account_id", "model", "input", "status", "cost", "trace_id", "route_position",
    "vendor", "vendor_task_id", "attempts", "vendor_attempts", "not_before", "deadline",
    "result_key", "error", "idempotency_key", "redriven_from", "created_at", "updated_at",
    "outputs",
)  # fmt: skip
# The columns an update can change; every other one is fixed when the job is opened.
MUTABLE_FIELDS = (
    "status", "route_position", "vendor", "vendor_task_id", "attempts", "vendor_attempts",
    "not_before", "result_key", "error", "updated_at", "outputs",
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
        outputs=outputs_from_json(row[20]),
    )


def fixed_fields(job: Job) -> tuple[Any, ...]:
    """The job's ``FIXED_FIELDS``, in order: what ``job_from_update`` needs besides a row."""
    return (
        job.id,
        job.account_id,
        job.model,
        job.input,
        job.cost,
        job.trace_id,
        job.deadline,
        job.idempotency_key,
        job.redriven_from,
        job.created_at,
    )


def job_from_update(fixed: tuple[Any, ...], row: Any) -> Job:
    """A Job from its ``fixed_fields`` and a row selected as ``MUTABLE_COLUMNS``.

    Positional, in ``JOB_FIELDS`` order (the writer builds one per write it answers; a
    unit test holds the order against the names)."""
    return Job(
        fixed[0],  # id
        fixed[1],  # account_id
        fixed[2],  # model
        fixed[3],  # input
        STATUS_BY_VALUE[row[0]],  # status
        fixed[4],  # cost
        fixed[5],  # trace_id
        row[1],  # route_position
        row[2],  # vendor
        row[3],  # vendor_task_id
        row[4],  # attempts
        row[5],  # vendor_attempts
        row[6],  # not_before
        fixed[6],  # deadline
        row[7],  # result_key
        row[8],  # error
        fixed[7],  # idempotency_key
        fixed[8],  # redriven_from
        fixed[9],  # created_at
        row[9],  # updated_at
        outputs_from_json(row[10]),  # outputs
    )


def outputs_from_json(text: str | None) -> tuple[StoredOutput, ...]:
    """A job's ``outputs`` column (NULL before completion and before schema 6)."""
    if not text:
        return ()
    return tuple(StoredOutput.from_json(item) for item in json.loads(text))


_outputs_json = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds one a call


def outputs_to_json(outputs: Iterable[StoredOutput]) -> str | None:
    items = [output.to_json() for output in outputs]
    return _outputs_json(items) if items else None


ENTRY_COLUMNS = "id, account_id, kind, amount, job_id, created_at, ref, note"


def entry_from_row(row: Any) -> CreditEntry:
    """A CreditEntry from a row selected as ``ENTRY_COLUMNS``."""
    return CreditEntry(
        row[0], row[1], KIND_BY_VALUE[row[2]], row[3], row[4], row[5], row[6], row[7]
    )


SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
