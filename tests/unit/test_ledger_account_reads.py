"""The ledger reads behind the account-wide event stream and the operator's account list."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.errors import InputInvalid
from runtime.invariants import check_invariants
from runtime.ledger import Ledger
from runtime.ledger_migrations import SCHEMA_VERSION
from runtime.ledger_schema import migrate
from runtime.models import Cancel, Complete, CreateAccount, Grant, OpenJob
from runtime.states import JobStatus
from tests.ledger_ops import apply_op

DEADLINE = 10**9


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 1.0  # every read of the clock is a second later: distinct times
        return self.now


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    ledger = await Ledger.open(tmp_path / "ledger.db", Clock())
    for account in ("a", "b"):
        await apply_op(ledger, CreateAccount(account, f"hash-{account}", name=f"account {account}"))
        await apply_op(ledger, Grant(account, 100, f"{account}:initial"))
    yield ledger
    await ledger.close()


async def open_job(ledger: Ledger, job_id: str, account: str) -> None:
    op = OpenJob(job_id, account, "flux", {}, 10, "t-" + job_id, "fal", DEADLINE)
    (await ledger.execute(op)).unwrap()


async def test_an_accounts_history_holds_only_its_own_jobs_in_seq_order(ledger: Ledger) -> None:
    await open_job(ledger, "a1", "a")
    await open_job(ledger, "b1", "b")
    await open_job(ledger, "a2", "a")
    (await ledger.execute(Cancel("a1"))).unwrap()

    history = await ledger.account_history("a", 0)
    assert [(h.job_id, h.status) for h in history] == [
        ("a1", JobStatus.QUEUED),
        ("a2", JobStatus.QUEUED),
        ("a1", JobStatus.CANCELED),
    ]
    assert [h.seq for h in history] == sorted(h.seq for h in history)
    assert [h.job_id for h in await ledger.account_history("b", 0)] == ["b1"]
    # Pages: resume after the last seq read.
    first = await ledger.account_history("a", 0, limit=2)
    rest = await ledger.account_history("a", first[-1].seq, limit=2)
    assert first + rest == history


async def test_accounts_changed_reads_from_where_it_stopped(ledger: Ledger) -> None:
    head, none = await ledger.accounts_changed(None)
    assert none == []
    await open_job(ledger, "a1", "a")
    await open_job(ledger, "b1", "b")
    await open_job(ledger, "a2", "a")

    seq, changed = await ledger.accounts_changed(head)
    assert changed == ["a", "b"] and seq == head + 3
    assert await ledger.accounts_changed(seq) == (seq, [])
    # A full page stops at its last row; the next read goes on from there.
    seq1, changed1 = await ledger.accounts_changed(head, limit=1)
    assert (seq1, changed1) == (head + 1, ["a"])
    assert await ledger.accounts_changed(seq1, limit=1) == (head + 2, ["b"])


async def test_accounts_are_listed_newest_first_with_their_grants(ledger: Ledger) -> None:
    await apply_op(ledger, Grant("a", 50, "a:more"))
    await open_job(ledger, "a1", "a")

    page = await ledger.accounts(limit=1)
    assert [s.account_id for s in page.items] == ["b"]
    assert page.next_cursor is not None
    rest = await ledger.accounts(limit=1, cursor=page.next_cursor)
    assert rest.next_cursor is None
    (a,) = rest.items
    assert (a.name, a.balance, a.held, a.in_flight) == ("account a", 150, 10, 1)
    assert (a.grants, a.granted) == (2, 150)
    assert a.to_api()["available"] == 140
    assert a.to_api()["grants"]["total"] == 150


@pytest.mark.parametrize("cursor", ["nope", "1.5/", "nan/a", "/a"])
async def test_a_malformed_account_cursor_is_refused(ledger: Ledger, cursor: str) -> None:
    with pytest.raises(InputInvalid):
        await ledger.accounts(cursor=cursor)


async def test_migration_5_backfills_the_history_with_its_accounts(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=4) == 4
    conn.executescript(
        """
        INSERT INTO accounts (id, api_key_hash, created_at, balance, held, in_flight)
            VALUES ('acct', 'h', 0, 100, 10, 1), ('other', 'h2', 0, 0, 0, 0);
        INSERT INTO credit_entries (account_id, kind, amount, ref, created_at)
            VALUES ('acct', 'grant', 100, 'g', 0);
        INSERT INTO jobs (id, account_id, model, input, status, cost, trace_id, route_position,
            vendor, attempts, vendor_attempts, not_before, deadline, created_at, updated_at)
            VALUES ('job-1', 'acct', 'flux', '{}', 'processing', 10, 't', 0, 'fal', 1, 1, 0,
                    99999, 0, 5);
        INSERT INTO credit_entries (account_id, kind, amount, job_id, created_at)
            VALUES ('acct', 'hold', 10, 'job-1', 0);
        INSERT INTO job_history (seq, job_id, status, at, detail)
            VALUES (7, 'job-1', 'queued', 0, NULL), (9, 'job-1', 'processing', 5, NULL);
        """
    )
    conn.close()
    ledger = await Ledger.open(path)
    try:
        history = await ledger.account_history("acct", 0)
        assert [(h.seq, h.status) for h in history] == [
            (7, JobStatus.QUEUED),
            (9, JobStatus.PROCESSING),
        ]  # seqs kept: a stream resumes across the upgrade
        assert await ledger.account_history("other", 0) == []
        await apply_op(ledger, Complete("job-1", "r"))
        assert [h.seq for h in await ledger.account_history("acct", 9)] == [10]
    finally:
        await ledger.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM job_history")  # the guards came back with the table
    conn.close()
    assert check_invariants(path) == []
