"""The ledger's read side: plain functions of the reader thread's ``query_only``
connection, which ``Ledger`` runs there (WAL lets them run while a batch is written)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from runtime.ledger_schema import (
    JOB_COLUMNS,
    OPEN_SQL,
    SELECT_JOB,
    STATUS_BY_VALUE,
    entry_from_row,
    job_from_row,
)
from runtime.models import (
    AccountPage,
    AccountSummary,
    Balance,
    CreditEntry,
    DeadLetter,
    Job,
    JobHistoryEntry,
    Orphan,
    Page,
)
from runtime.states import TERMINAL, JobStatus


def job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(SELECT_JOB, (job_id,)).fetchone()
    return None if row is None else job_from_row(row)


def jobs(conn: sqlite3.Connection, job_ids: list[str]) -> list[Job | None]:
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(job_ids),),
    ).fetchall()
    found = {row[0]: job_from_row(row) for row in rows}
    return [found.get(job_id) for job_id in job_ids]


def page(
    conn: sqlite3.Connection,
    account_id: str,
    status: JobStatus | None,
    limit: int,
    before: int | None,
) -> Page:
    where = ["account_id = ?"]
    params: list[Any] = [account_id]
    if status is not None:
        where.append("status = ?" if status.terminal else f"status = ? AND {OPEN_SQL}")
        params.append(status.value)
    if before is not None:
        where.append("seq < ?")
        params.append(before)
    rows = conn.execute(
        f"SELECT seq, {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "
        "ORDER BY seq DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        [job_from_row(row[1:]) for row in rows], str(rows[-1][0]) if more and rows else None
    )


def jobs_for_vendor(conn: sqlite3.Connection, vendor: str, statuses: list[JobStatus]) -> list[Job]:
    if not statuses:
        return []
    marks = ", ".join("?" for _ in statuses)
    # When every status asked for is open, the partial index holds all the candidates.
    open_only = f" AND {OPEN_SQL}" if not TERMINAL.intersection(statuses) else ""
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE vendor = ? AND status IN ({marks}){open_only} "
        "ORDER BY seq",
        (vendor, *[s.value for s in statuses]),
    ).fetchall()
    return [job_from_row(row) for row in rows]


def in_doubt(conn: sqlite3.Connection, vendor: str, updated_after: float) -> list[Job]:
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_in_doubt "
        "WHERE vendor = ? AND submit_in_doubt = 1 AND updated_at > ? ORDER BY seq",
        (vendor, updated_after),
    ).fetchall()
    return [job_from_row(row) for row in rows]


def orphans(conn: sqlite3.Connection, vendor: str, now: float) -> list[Orphan]:
    rows = conn.execute(
        "SELECT job_id, attempt, vendor, model, since, until FROM orphans INDEXED BY orphans_open "
        "WHERE vendor = ? AND ended_at IS NULL AND until > ? ORDER BY until",
        (vendor, now),
    ).fetchall()
    return [Orphan(*row) for row in rows]


def jobs_by_status(
    conn: sqlite3.Connection, status: JobStatus, updated_before: float | None, limit: int
) -> list[Job]:
    open_only = "" if status.terminal else f" AND {OPEN_SQL}"
    before = "" if updated_before is None else " AND updated_at < ?"
    params: list[Any] = [status.value]
    if updated_before is not None:
        params.append(updated_before)
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = ?{open_only}{before} "
        "ORDER BY updated_at LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [job_from_row(row) for row in rows]


def expired(conn: sqlite3.Connection, now: float, limit: int) -> list[Job]:
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE {OPEN_SQL} AND deadline < ? "
        "ORDER BY deadline LIMIT ?",
        (now, limit),
    ).fetchall()
    return [job_from_row(row) for row in rows]


def history(conn: sqlite3.Connection, job_id: str, after_seq: int) -> list[JobHistoryEntry]:
    rows = conn.execute(
        "SELECT job_id, seq, status, at, detail FROM job_history "
        "WHERE job_id = ? AND seq > ? ORDER BY seq",
        (job_id, after_seq),
    ).fetchall()
    return [JobHistoryEntry(r[0], r[1], STATUS_BY_VALUE[r[2]], r[3], r[4]) for r in rows]


def account_history(
    conn: sqlite3.Connection, account_id: str, after_seq: int, limit: int
) -> list[JobHistoryEntry]:
    """The account's status changes after ``after_seq``, oldest first, at most ``limit``."""
    rows = conn.execute(
        "SELECT job_id, seq, status, at, detail FROM job_history INDEXED BY job_history_account "
        "WHERE account_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        (account_id, after_seq, limit),
    ).fetchall()
    return [JobHistoryEntry(r[0], r[1], STATUS_BY_VALUE[r[2]], r[3], r[4]) for r in rows]


def accounts_changed(
    conn: sqlite3.Connection, after_seq: int | None, limit: int
) -> tuple[int, list[str]]:
    """The history's last seq read, and the accounts with changes after ``after_seq``.

    ``after_seq`` None: where the history ends now, and no accounts. At most ``limit``
    rows are read (a range of the primary key); the seq returned is the last one read,
    so a caller that got a full page asks again from there.
    """
    if after_seq is None:
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM job_history").fetchone()
        return int(row[0]), []
    rows = conn.execute(
        "SELECT seq, account_id FROM job_history WHERE seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    if not rows:
        return after_seq, []
    return int(rows[-1][0]), sorted({str(r[1]) for r in rows})


def accounts(conn: sqlite3.Connection, limit: int, before: tuple[float, str] | None) -> AccountPage:
    """Accounts newest first, with their grants; ``before`` is the last (created_at, id) seen."""
    where, params = ("", ()) if before is None else ("WHERE (created_at, id) < (?, ?) ", before)
    rows = conn.execute(
        "SELECT id, name, created_at, balance, held, in_flight FROM accounts "
        f"INDEXED BY accounts_created {where}ORDER BY created_at DESC, id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    grants: dict[str, tuple[int, int, float | None]] = {}
    if rows:
        for account_id, count, total, last in conn.execute(
            "SELECT account_id, count(*), sum(amount), max(created_at) "
            "FROM credit_entries INDEXED BY credit_entries_grants "
            "WHERE kind = 'grant' AND account_id IN (SELECT value FROM json_each(?)) "
            "GROUP BY account_id",
            (json.dumps([row[0] for row in rows]),),
        ):
            grants[account_id] = (count, total, last)
    items = [
        AccountSummary(
            row[0], row[1], row[2], row[3], row[4], row[5], *grants.get(row[0], (0, 0, None))
        )
        for row in rows
    ]
    cursor = f"{rows[-1][2]!r}/{rows[-1][0]}" if more and rows else None
    return AccountPage(items, cursor)


def statement(conn: sqlite3.Connection, account_id: str) -> list[CreditEntry]:
    rows = conn.execute(
        "SELECT id, account_id, kind, amount, job_id, created_at, ref FROM credit_entries "
        "WHERE account_id = ? ORDER BY id",
        (account_id,),
    ).fetchall()
    return [entry_from_row(row) for row in rows]


def balance(conn: sqlite3.Connection, account_id: str) -> Balance | None:
    row = conn.execute("SELECT balance, held FROM accounts WHERE id = ?", (account_id,)).fetchone()
    return None if row is None else Balance(account_id, row[0], row[1], row[0] - row[1])


def account_for_key(conn: sqlite3.Connection, api_key_hash: str) -> str | None:
    row = conn.execute("SELECT id FROM accounts WHERE api_key_hash = ?", (api_key_hash,)).fetchone()
    return None if row is None else str(row[0])


def dead_letters(conn: sqlite3.Connection, limit: int, include_redriven: bool) -> list[DeadLetter]:
    where = "" if include_redriven else "WHERE redriven_to IS NULL "
    rows = conn.execute(
        "SELECT job_id, account_id, model, vendor, error, attempts, trace_id, created_at, "
        f"redriven_to FROM dead_letters {where}ORDER BY created_at DESC, job_id LIMIT ?",
        (limit,),
    ).fetchall()
    return [DeadLetter(*row) for row in rows]


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    counts = {s.value: 0 for s in JobStatus}
    for status, n in conn.execute("SELECT status, count(*) FROM jobs GROUP BY status"):
        counts[status] = n
    return counts
