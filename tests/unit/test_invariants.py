"""The invariant checker names every way a real ledger database can be corrupted."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from runtime.errors import LedgerUnavailable
from runtime.invariants import check_invariants, main
from runtime.ledger import Ledger
from runtime.models import (
    Cancel,
    Complete,
    CreateAccount,
    Fail,
    Grant,
    MarkProcessing,
    OpenJob,
    RecordWebhook,
    Redrive,
    StartAttempt,
    Violation,
)
from tests.ledger_ops import apply_op

DEADLINE = 10_000.0


async def _build(path: Path) -> None:
    """A healthy ledger with a job in every state, keys, webhooks and a redrive."""
    ledger = await Ledger.open(path, lambda: 1_000.0)
    try:
        await apply_op(ledger, CreateAccount("acct", "hash-acct"))
        await apply_op(ledger, Grant("acct", 100, "initial"))
        await apply_op(ledger, CreateAccount("poor", "hash-poor"))
        await apply_op(ledger, Grant("poor", 10, "initial-poor"))

        async def open_job(job_id: str, account: str = "acct", key: str | None = None) -> None:
            await apply_op(
                ledger,
                OpenJob(
                    job_id,
                    account,
                    "flux",
                    {"p": job_id},
                    5,
                    "t-" + job_id,
                    "fal",
                    DEADLINE,
                    key,
                    "h",
                ),
            )

        for job_id in ("done", "failed", "canceled", "busy", "waiting"):
            await open_job(job_id, key="key-" + job_id)
        for job_id in ("done", "failed", "busy"):
            await apply_op(ledger, StartAttempt(job_id, 1, "fal", 0))
            await apply_op(ledger, MarkProcessing(job_id, 1, "task-" + job_id))
        await apply_op(ledger, Complete("done", "results/done"))
        await apply_op(ledger, Fail("failed", "rejected"))
        await apply_op(ledger, Cancel("canceled"))
        await open_job("poor-done", account="poor")
        await apply_op(ledger, StartAttempt("poor-done", 1, "fal", 0))
        await apply_op(ledger, MarkProcessing("poor-done", 1, "task-poor"))
        await apply_op(ledger, Complete("poor-done", "results/poor"))
        await apply_op(ledger, Redrive("failed", "failed-again", "t-again", DEADLINE))
        await apply_op(ledger, RecordWebhook("fal", "wh-1"))
    finally:
        await ledger.close()


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("healthy") / "ledger.db"
    asyncio.run(_build(path))
    return path


@pytest.fixture
def db(healthy: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ledger.db"
    shutil.copy(healthy, copy)
    return copy


def corrupt(path: Path, *statements: str) -> None:
    """Change the database behind the ledger's back: no triggers, no constraints."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA ignore_check_constraints = ON")
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("DROP INDEX credit_entries_job")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def test_a_healthy_ledger_has_no_violations(healthy: Path) -> None:
    assert check_invariants(healthy) == []


def test_the_checker_writes_nothing(db: Path) -> None:
    before = db.read_bytes()
    check_invariants(db)
    assert db.read_bytes() == before
    with pytest.raises(FileNotFoundError):
        check_invariants(db.parent / "missing.db")


HOLD = "INSERT INTO credit_entries (account_id, kind, amount, job_id, created_at) VALUES "

CORRUPTIONS: dict[str, tuple[list[str], str, str, str]] = {
    # name: (statements, invariant, subject, words in the detail)
    "hold deleted": (
        ["DELETE FROM credit_entries WHERE job_id = 'done' AND kind = 'hold'"],
        "I2",
        "done",
        "0 holds",
    ),
    "second hold": (
        [HOLD + "('acct', 'hold', 5, 'busy', 0)"],
        "I2",
        "busy",
        "2 holds",
    ),
    "second capture": (
        [HOLD + "('acct', 'capture', 5, 'done', 0)"],
        "I2",
        "done",
        "exactly one capture",
    ),
    "queued job settled": (
        [HOLD + "('acct', 'release', 5, 'waiting', 0)"],
        "I2",
        "waiting",
        "queued job has settlements",
    ),
    "capture for a failed job": (
        [
            "DELETE FROM credit_entries WHERE job_id = 'failed' AND kind = 'release'",
            HOLD + "('acct', 'capture', 5, 'failed', 0)",
        ],
        "I2",
        "failed",
        "needs exactly one release",
    ),
    "completed job never settled": (
        ["DELETE FROM credit_entries WHERE job_id = 'done' AND kind = 'capture'"],
        "I2",
        "done",
        "no settlement",
    ),
    "settlement of the wrong amount": (
        ["UPDATE credit_entries SET amount = 4 WHERE job_id = 'done' AND kind = 'capture'"],
        "I2",
        "done",
        "settles a hold of 5",
    ),
    "hold not the job's cost": (
        ["UPDATE jobs SET cost = 6 WHERE id = 'busy'"],
        "I2",
        "busy",
        "costs 6",
    ),
    "entry for a missing job": (
        [HOLD + "('acct', 'hold', 5, 'ghost', 0)"],
        "I2",
        "ghost",
        "unknown job",
    ),
    "entry on another account": (
        ["UPDATE credit_entries SET account_id = 'poor' WHERE job_id = 'busy'"],
        "I2",
        "busy",
        "another account",
    ),
    "cached balance changed": (
        ["UPDATE accounts SET balance = balance + 50 WHERE id = 'acct'"],
        "I1",
        "acct",
        "cached balance",
    ),
    "cached held changed": (
        ["UPDATE accounts SET held = 0 WHERE id = 'acct'"],
        "I1",
        "acct",
        "cached held",
    ),
    "cached in-flight count changed": (
        ["UPDATE accounts SET in_flight = 7 WHERE id = 'acct'"],
        "I1",
        "acct",
        "cached in_flight",
    ),
    "available negative": (
        [
            "DELETE FROM credit_entries WHERE kind = 'grant' AND account_id = 'poor'",
            "UPDATE accounts SET balance = -5 WHERE id = 'poor'",
        ],
        "I1",
        "poor",
        "available is negative",
    ),
    "terminal job moved": (
        ["UPDATE jobs SET status = 'processing' WHERE id = 'done'"],
        "I5",
        "done",
        "history ends with completed",
    ),
    "history changed after terminal": (
        [
            "INSERT INTO job_history (job_id, account_id, status, at, detail) "
            "SELECT id, account_id, 'processing', 2000, 'late' FROM jobs WHERE id = 'canceled'"
        ],
        "I5",
        "canceled",
        "terminal canceled",
    ),
    "key names a missing job": (
        ["UPDATE idempotency_keys SET job_id = 'ghost' WHERE key = 'key-busy'"],
        "I5",
        "acct/key-busy",
        "unknown job ghost",
    ),
    "one key, two jobs": (
        ["UPDATE jobs SET idempotency_key = 'key-busy' WHERE id = 'waiting'"],
        "I5",
        "acct/key-busy",
        "job waiting carries a key",
    ),
    "keyed job lost its hold": (
        ["DELETE FROM credit_entries WHERE job_id = 'waiting'"],
        "I5",
        "acct/key-waiting",
        "0 holds",
    ),
    "webhook recorded twice": (
        [
            "ALTER TABLE webhook_receipts RENAME TO receipts_old",
            "CREATE TABLE webhook_receipts (vendor TEXT, webhook_id TEXT, received_at REAL)",
            "INSERT INTO webhook_receipts SELECT * FROM receipts_old",
            "INSERT INTO webhook_receipts VALUES ('fal', 'wh-1', 2000)",
        ],
        "I5",
        "fal/wh-1",
        "recorded 2 times",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_named(db: Path, name: str) -> None:
    statements, invariant, subject, words = CORRUPTIONS[name]
    corrupt(db, *statements)
    violations = check_invariants(db)
    assert any(
        v.invariant == invariant and v.subject == subject and words in v.detail for v in violations
    ), "\n".join(map(str, violations)) or "no violations"


def test_command_line(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(db)]) == 0
    assert "invariants hold" in capsys.readouterr().out
    corrupt(db, "UPDATE accounts SET held = 0 WHERE id = 'acct'")
    assert main([str(db)]) == 1
    assert "I1 acct: cached held" in capsys.readouterr().out


def test_violations_read_well() -> None:
    violation = Violation("I2", "job-1", "2 holds (exactly one expected)")
    assert str(violation) == "I2 job-1: 2 holds (exactly one expected)"


def foreign_files(tmp_path: Path) -> dict[str, Path]:
    """Files that are not a ledger this jobline opens, by what is wrong with them."""
    garbage = tmp_path / "garbage.db"
    garbage.write_text("garbage\n")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("CREATE TABLE accounts (id TEXT)")
        conn.execute("PRAGMA user_version = 999")
    return {"not a database": garbage, "other tables": other, "newer schema": newer}


def test_a_file_that_is_not_a_current_ledger_is_one_line_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from actors.cli import main as jobline

    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE accounts (id TEXT)")
        conn.execute("PRAGMA user_version = 1")
    for what, path in {**foreign_files(tmp_path), "older schema": old}.items():
        assert main([str(path)]) == 2, what
        assert jobline(["check", "--database", str(path)]) != 0, what
        out, err = capsys.readouterr()
        first, second = err.strip().splitlines()
        assert first.startswith(f"{path}: ") and second == f"jobline: {first}", what
        assert "Traceback" not in out + err


def test_init_refuses_a_file_that_is_not_a_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from actors.cli import main as jobline

    for what, path in foreign_files(tmp_path).items():
        before = path.read_bytes()
        assert jobline(["init", "--database", str(path)]) != 0, what
        assert "exists already" not in capsys.readouterr().err
        assert path.read_bytes() == before


def test_the_ledger_refuses_to_migrate_an_sqlite_database_of_another_program(
    tmp_path: Path,
) -> None:
    with pytest.raises(LedgerUnavailable, match="not a jobline ledger"):
        asyncio.run(Ledger.open(foreign_files(tmp_path)["other tables"]))
