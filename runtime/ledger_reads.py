"""The ledger's read side: plain functions of a reader thread's ``query_only``
connection, which ``Ledger`` runs there (WAL lets them run while a batch is written):
point reads on one reader, pages and scans on the other."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from runtime.ledger_migrations import COUNTED_STATUSES, OPEN_SQL
from runtime.ledger_schema import (
    ENTRY_COLUMNS,
    JOB_COLUMNS,
    SELECT_JOB,
    STATUS_BY_VALUE,
    entry_from_row,
    job_from_row,
)
from runtime.models import (
    AccountLimits,
    AccountPage,
    AccountSummary,
    AccountThrottle,
    ApiKey,
    ApiKeyPage,
    Balance,
    DeadLetter,
    DeadLetterPage,
    EntryPage,
    Job,
    JobHistoryEntry,
    KeyMatch,
    KeyRevocation,
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
        "SELECT job_id, attempt, vendor, model, since, until, "
        "COALESCE((SELECT trace_id FROM jobs WHERE jobs.id = orphans.job_id), ''), task_id "
        "FROM orphans INDEXED BY orphans_open "
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


def statement(
    conn: sqlite3.Connection, account_id: str, limit: int, after: int | None, newest_first: bool
) -> EntryPage:
    """A page of the account's entries by id (index ``(account_id, id)``); ``after`` is the
    last id of the previous page, in the page's own direction."""
    where = "account_id = ?"
    params: list[Any] = [account_id]
    if after is not None:
        where += " AND id < ?" if newest_first else " AND id > ?"
        params.append(after)
    order = "DESC" if newest_first else "ASC"
    rows = conn.execute(
        f"SELECT {ENTRY_COLUMNS} FROM credit_entries "
        f"INDEXED BY credit_entries_account WHERE {where} ORDER BY id {order} LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return EntryPage(
        [entry_from_row(row) for row in rows], str(rows[-1][0]) if more and rows else None
    )


def balance(conn: sqlite3.Connection, account_id: str) -> Balance | None:
    row = conn.execute("SELECT balance, held FROM accounts WHERE id = ?", (account_id,)).fetchone()
    return None if row is None else Balance(account_id, row[0], row[1], row[0] - row[1])


def keys_for_hashes(conn: sqlite3.Connection, hashes: list[str]) -> list[KeyMatch | None]:
    rows = conn.execute(
        "SELECT hash, account_id, id, expires_at FROM api_keys "
        "WHERE hash IN (SELECT value FROM json_each(?))",
        (json.dumps(hashes),),
    ).fetchall()
    found = {row[0]: KeyMatch(row[1], row[2], row[3]) for row in rows}
    return [found.get(h) for h in hashes]


def revocations(
    conn: sqlite3.Connection, after_seq: int | None, limit: int
) -> tuple[int, list[KeyRevocation]]:
    if after_seq is None:
        row = conn.execute("SELECT coalesce(max(revoked_seq), 0) FROM api_keys").fetchone()
        return int(row[0]), []
    rows = conn.execute(
        "SELECT revoked_seq, id, expires_at FROM api_keys WHERE revoked_seq > ? "
        "ORDER BY revoked_seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    if not rows:
        return after_seq, []
    return int(rows[-1][0]), [KeyRevocation(row[0], row[1], row[2]) for row in rows]


API_KEY_COLUMNS = "id, account_id, prefix, name, created_at, revoked_at, expires_at, last_used_at"


def api_key_from_row(row: Any) -> ApiKey:
    return ApiKey(*row)


def api_keys(
    conn: sqlite3.Connection, account_id: str, limit: int, before: int | None
) -> ApiKeyPage:
    where = "account_id = ?"
    params: list[Any] = [account_id]
    if before is not None:
        where += " AND seq < ?"
        params.append(before)
    rows = conn.execute(
        f"SELECT seq, {API_KEY_COLUMNS} FROM api_keys WHERE {where} ORDER BY seq DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return ApiKeyPage(
        [api_key_from_row(row[1:]) for row in rows], str(rows[-1][0]) if more and rows else None
    )


def account_limits(conn: sqlite3.Connection, account_id: str) -> AccountLimits | None:
    row = conn.execute(
        "SELECT max_jobs_in_flight, submits_per_second, submit_burst, slot_weight "
        "FROM accounts WHERE id = ?",
        (account_id,),
    ).fetchone()
    return None if row is None else AccountLimits(account_id, *row)


def slot_weights(conn: sqlite3.Connection, account_ids: list[str]) -> dict[str, float]:
    """The weights of those accounts that have their own (the others weigh 1)."""
    rows = conn.execute(
        "SELECT id, slot_weight FROM accounts "
        "WHERE id IN (SELECT value FROM json_each(?)) AND slot_weight IS NOT NULL",
        (json.dumps(account_ids),),
    ).fetchall()
    return {account_id: float(weight) for account_id, weight in rows}


def account_throttle(conn: sqlite3.Connection, account_id: str) -> AccountThrottle | None:
    row = conn.execute(
        "SELECT input_rejections, input_rejections_at, throttled_until FROM accounts WHERE id = ?",
        (account_id,),
    ).fetchone()
    return None if row is None else AccountThrottle(account_id, *row)


def dead_letters(
    conn: sqlite3.Connection,
    limit: int,
    include_redriven: bool,
    before: tuple[float, str] | None,
) -> DeadLetterPage:
    """Newest first by (created_at, job_id); the open ones from their partial index."""
    where: list[str] = []
    params: list[Any] = []
    if not include_redriven:
        where.append("redriven_to IS NULL")
    if before is not None:
        where.append("(created_at, job_id) < (?, ?)")
        params.extend(before)
    index = "dead_letters_created" if include_redriven else "dead_letters_open"
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = conn.execute(
        "SELECT job_id, account_id, model, vendor, error, attempts, trace_id, created_at, "
        f"redriven_to FROM dead_letters INDEXED BY {index} {clause}"
        "ORDER BY created_at DESC, job_id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = f"{rows[-1][7]!r}/{rows[-1][0]}" if more and rows else None
    return DeadLetterPage([DeadLetter(*row) for row in rows], cursor)


def counter(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT n FROM ledger_counters WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    counts = {s.value: 0 for s in JobStatus}
    for status, n in conn.execute(
        f"SELECT status, count(*) FROM jobs INDEXED BY jobs_open WHERE {OPEN_SQL} GROUP BY status"
    ):
        counts[status] = n
    names = [f"jobs_{status}" for status in COUNTED_STATUSES]
    for name, n in conn.execute(
        "SELECT name, n FROM ledger_counters WHERE name IN (SELECT value FROM json_each(?))",
        (json.dumps(names),),
    ):
        counts[name.removeprefix("jobs_")] = n
    return counts
