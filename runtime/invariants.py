"""Check the ledger's invariants (DESIGN §4: I1, I2, I5) by reading its database.

``check_invariants(path)`` opens the SQLite file without writing to it (``mode=rw`` so
that SQLite may recover a WAL left by a killed process, with ``query_only`` on), reads
one consistent snapshot, and returns every violation it finds; an empty list means the
invariants hold. It trusts nothing the writer maintains: cached balances are checked
against the entries, and uniqueness that the schema already enforces is checked again,
so a database changed behind the ledger's back is caught too.

    python -m runtime.invariants path/to/ledger.db    # exit status 1 on any violation
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from runtime.errors import NotALedger
from runtime.ledger_schema import ledger_file_problem, memory_uri
from runtime.models import Violation
from runtime.states import TERMINAL, JobStatus

_TERMINAL = "(" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL)) + ")"
_SETTLEMENT = {
    JobStatus.COMPLETED.value: "capture",
    JobStatus.FAILED.value: "release",
    JobStatus.CANCELED.value: "release",
}


def check_invariants(db_path: str | Path, *, memory: bool = False) -> list[Violation]:
    """Every violation of I1, I2 and I5 in the ledger database at ``db_path`` (``memory``:
    the in-memory database of that name open in this process, ``LedgerMode.memory``).

    Raises ``FileNotFoundError`` when there is no file, ``NotALedger`` when the file is
    not a ledger of this jobline's schema version (``ledger_file_problem``)."""
    path = Path(db_path)
    if memory:
        uri = memory_uri(path)
    elif not path.is_file():
        raise FileNotFoundError(f"no ledger database at {path}")
    else:
        problem = ledger_file_problem(path, current=True)
        if problem is not None:
            raise problem
        uri = f"file:{quote(str(path.resolve()))}?mode=rw"
    conn = sqlite3.connect(uri, uri=True)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")  # one snapshot for every query below
        return [*_conservation(conn), *_settlement(conn), *_idempotency(conn)]
    finally:
        conn.close()


# --- I1 conservation -------------------------------------------------------------------


def _conservation(conn: sqlite3.Connection) -> Iterator[Violation]:
    rows = conn.execute(
        f"""
        WITH sums AS (
            SELECT account_id,
                   SUM(CASE WHEN kind = 'grant' THEN amount ELSE 0 END) AS grants,
                   SUM(CASE WHEN kind = 'capture' THEN amount ELSE 0 END) AS captures
            FROM credit_entries GROUP BY account_id),
        open_holds AS (
            SELECT h.account_id, SUM(h.amount) AS held, COUNT(*) AS n
            FROM credit_entries h
            WHERE h.kind = 'hold' AND NOT EXISTS (
                SELECT 1 FROM credit_entries s
                WHERE s.job_id = h.job_id AND s.kind IN ('capture', 'release'))
            GROUP BY h.account_id),
        open_jobs AS (
            SELECT account_id, COUNT(*) AS n FROM jobs
            WHERE status NOT IN {_TERMINAL} GROUP BY account_id)
        SELECT a.id, a.balance, a.held, a.in_flight,
               COALESCE(s.grants, 0), COALESCE(s.captures, 0),
               COALESCE(o.held, 0), COALESCE(o.n, 0), COALESCE(j.n, 0)
        FROM accounts a
        LEFT JOIN sums s ON s.account_id = a.id
        LEFT JOIN open_holds o ON o.account_id = a.id
        LEFT JOIN open_jobs j ON j.account_id = a.id
        """
    )
    for account, balance, held, in_flight, grants, captures, holds, n_holds, n_open in rows:
        expected_balance = grants - captures
        available = expected_balance - holds
        if available < 0:
            yield Violation(
                "I1",
                account,
                f"available is negative: balance {expected_balance} (grants {grants} - "
                f"captures {captures}) - open holds {holds} = {available}",
            )
        if balance != expected_balance:
            yield Violation(
                "I1",
                account,
                f"cached balance {balance} != grants {grants} - captures {captures} "
                f"= {expected_balance}",
            )
        if held != holds:
            yield Violation("I1", account, f"cached held {held} != open holds {holds}")
        if in_flight != n_holds or in_flight != n_open:
            yield Violation(
                "I1",
                account,
                f"cached in_flight {in_flight} != open holds {n_holds} / "
                f"non-terminal jobs {n_open}",
            )
    for entry_id, account in conn.execute(
        "SELECT id, account_id FROM credit_entries "
        "WHERE account_id NOT IN (SELECT id FROM accounts)"
    ):
        yield Violation("I1", account, f"credit entry {entry_id} for an unknown account")


# --- I2 exactly-once settlement ---------------------------------------------------------


def _settlement(conn: sqlite3.Connection) -> Iterator[Violation]:
    rows = conn.execute(
        """
        SELECT j.id, j.status, j.cost, j.account_id,
               COUNT(e.id) FILTER (WHERE e.kind = 'hold'),
               TOTAL(e.amount) FILTER (WHERE e.kind = 'hold'),
               COUNT(e.id) FILTER (WHERE e.kind = 'capture'),
               COUNT(e.id) FILTER (WHERE e.kind = 'release'),
               GROUP_CONCAT(e.kind || ':' || e.amount, ' ') FILTER (
                   WHERE e.kind IN ('capture', 'release')),
               COUNT(e.id) FILTER (WHERE e.account_id <> j.account_id)
        FROM jobs j LEFT JOIN credit_entries e ON e.job_id = j.id
        GROUP BY j.id
        """
    )
    for job, status, cost, _account, holds, held, captures, releases, settled, foreign in rows:
        if holds != 1:
            yield Violation("I2", job, f"{holds} holds (exactly one expected)")
        elif held != cost:
            yield Violation("I2", job, f"hold of {held:g} for a job that costs {cost}")
        settlements = captures + releases
        if status not in _SETTLEMENT:
            if settlements:
                yield Violation("I2", job, f"{status} job has settlements: {settled}")
        else:
            yield from _settled_once(job, status, held if holds == 1 else None, settled or "")
        if foreign:
            yield Violation("I2", job, f"{foreign} entries on another account than the job's")
    for entry_id, kind, job in conn.execute(
        "SELECT id, kind, job_id FROM credit_entries "
        "WHERE job_id IS NOT NULL AND job_id NOT IN (SELECT id FROM jobs)"
    ):
        yield Violation("I2", job, f"{kind} entry {entry_id} for an unknown job")
    # A free job (price 0) has a hold of 0 and a settlement of 0; a grant is never 0.
    for entry_id, kind, job in conn.execute(
        "SELECT id, kind, job_id FROM credit_entries "
        "WHERE (kind = 'grant') <> (job_id IS NULL) OR amount < 0 "
        "OR (kind = 'grant' AND amount = 0)"
    ):
        yield Violation("I2", str(job), f"malformed {kind} entry {entry_id}")


def _settled_once(job: str, status: str, held: float | None, settled: str) -> Iterator[Violation]:
    """A terminal job's settlement: one capture (completed) or one release (failed,
    canceled) of its hold; or, for a failed job that kept a fee, one capture of the fee
    (> 0) and one release of the rest."""
    parts = sorted(tuple(part.split(":")) for part in settled.split())  # (kind, amount)
    kinds = [kind for kind, _ in parts]
    amounts = [int(amount) for _, amount in parts]
    want = _SETTLEMENT[status]
    fee_kept = status == JobStatus.FAILED.value and kinds == ["capture", "release"]
    if kinds != [want] and not (fee_kept and amounts[0] > 0):
        has = settled or "no settlement"
        yield Violation("I2", job, f"{status} job needs exactly one {want}; has {has}")
    elif held is not None and sum(amounts) != held:
        yield Violation("I2", job, f"{settled} settles a hold of {held:g}")


# --- I5 idempotency, webhooks, history --------------------------------------------------


def _idempotency(conn: sqlite3.Connection) -> Iterator[Violation]:
    for account, key, job, found, owner, job_key in conn.execute(
        """
        SELECT k.account_id, k.key, k.job_id, j.id, j.account_id, j.idempotency_key
        FROM idempotency_keys k LEFT JOIN jobs j ON j.id = k.job_id
        WHERE j.id IS NULL OR j.account_id <> k.account_id OR j.idempotency_key IS NOT k.key
        """
    ):
        subject = f"{account}/{key}"
        if found is None:
            yield Violation("I5", subject, f"idempotency key names unknown job {job}")
        else:
            yield Violation(
                "I5",
                subject,
                f"idempotency key names job {job} of account {owner} with key {job_key!r}",
            )
    for job, account, key in conn.execute(
        """
        SELECT j.id, j.account_id, j.idempotency_key FROM jobs j
        WHERE j.idempotency_key IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM idempotency_keys k
            WHERE k.account_id = j.account_id AND k.key = j.idempotency_key AND k.job_id = j.id)
        """
    ):
        yield Violation("I5", f"{account}/{key}", f"job {job} carries a key that names another job")
    for account, key, job, holds in conn.execute(
        """
        SELECT k.account_id, k.key, k.job_id,
               (SELECT COUNT(*) FROM credit_entries e WHERE e.job_id = k.job_id AND e.kind = 'hold')
        FROM idempotency_keys k
        """
    ):
        if holds != 1:
            yield Violation("I5", f"{account}/{key}", f"the key's job {job} has {holds} holds")
    for vendor, webhook, n in conn.execute(
        "SELECT vendor, webhook_id, COUNT(*) FROM webhook_receipts "
        "GROUP BY vendor, webhook_id HAVING COUNT(*) > 1"
    ):
        yield Violation("I5", f"{vendor}/{webhook}", f"webhook recorded {n} times")
    yield from _history(conn)


def _history(conn: sqlite3.Connection) -> Iterator[Violation]:
    for job, seq, status, later_seq, later in conn.execute(
        f"""
        SELECT h.job_id, h.seq, h.status, n.seq, n.status
        FROM job_history h JOIN job_history n ON n.job_id = h.job_id AND n.seq > h.seq
        WHERE h.status IN {_TERMINAL}
        ORDER BY h.job_id, n.seq
        """
    ):
        yield Violation(
            "I5", job, f"history: terminal {status} (#{seq}) followed by {later} (#{later_seq})"
        )
    for job, status, last in conn.execute(
        """
        SELECT j.id, j.status,
               (SELECT h.status FROM job_history h WHERE h.job_id = j.id
                ORDER BY h.seq DESC LIMIT 1)
        FROM jobs j
        """
    ):
        if last != status:
            yield Violation(
                "I5", job, f"job is {status} but its history ends with {last or 'nothing'}"
            )
    for job, n in conn.execute(
        "SELECT job_id, COUNT(*) FROM job_history "
        "WHERE job_id NOT IN (SELECT id FROM jobs) GROUP BY job_id"
    ):
        yield Violation("I5", job, f"{n} history rows for an unknown job")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m runtime.invariants LEDGER_DB", file=sys.stderr)
        return 2
    try:
        violations = check_invariants(args[0])
    except (FileNotFoundError, NotALedger) as exc:
        print(exc, file=sys.stderr)
        return 2
    for violation in violations:
        print(violation)
    print(f"{len(violations)} violation(s)" if violations else "invariants hold")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
