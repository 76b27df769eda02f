"""The ledger on a real SQLite file: idempotency, money, races, group commit, reads."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import (
    AccountNotFound,
    DeadLetterNotFound,
    IdempotencyConflict,
    IllegalTransition,
    InputInvalid,
    InsufficientCredits,
    JobNotFound,
    LedgerFault,
    LedgerUnavailable,
    TooManyJobsInFlight,
)
from runtime.invariants import check_invariants
from runtime.ledger import Ledger, new_job_id
from runtime.ledger_schema import (
    JOB_COLUMNS,
    JOB_FIELDS,
    MUTABLE_COLUMNS,
    MUTABLE_FIELDS,
    SCHEMA_VERSION,
    connect,
    fixed_fields,
    job_from_row,
    job_from_update,
    migrate,
    outputs_to_json,
)
from runtime.models import (
    Cancel,
    Complete,
    CreateAccount,
    EntryKind,
    Fail,
    Grant,
    Job,
    LedgerOp,
    MarkProcessing,
    OpenJob,
    RecordWebhook,
    Redrive,
    ScheduleRetry,
    StartAttempt,
    StoredOutput,
)
from runtime.states import JobStatus
from tests.ledger_ops import Clock, apply_op

DEADLINE = 10_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ledger(tmp_path: Path, clock: Clock) -> AsyncIterator[Ledger]:
    ledger = await Ledger.open(tmp_path / "ledger.db", clock)
    await apply_op(ledger, CreateAccount("acct", "hash-acct"))
    await apply_op(ledger, Grant("acct", 100, "initial"))
    yield ledger
    await ledger.close()


def open_op(job_id: str, price: int = 10, account: str = "acct", **kw: Any) -> OpenJob:
    return OpenJob(
        job_id, account, "flux", {"prompt": job_id}, price, "trace-" + job_id, "fal", DEADLINE, **kw
    )


async def open_job(ledger: Ledger, job_id: str, price: int = 10, **kw: Any) -> None:
    (await ledger.execute(open_op(job_id, price, **kw))).unwrap()


async def to_processing(ledger: Ledger, job_id: str, price: int = 10) -> None:
    await open_job(ledger, job_id, price)
    await apply_op(ledger, StartAttempt(job_id, 1, "fal", 0))
    await apply_op(ledger, MarkProcessing(job_id, 1, "task-" + job_id))


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to compare whole database states."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


def entries(path: Path, job_id: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT kind FROM credit_entries WHERE job_id = ? ORDER BY id", (job_id,)
        ).fetchall()
        return [r[0] for r in rows]
    finally:
        conn.close()


# --- opening jobs: idempotency, credits, the in-flight cap --------------------------------


async def test_fifty_concurrent_opens_with_one_key_make_one_job_and_one_hold(
    ledger: Ledger,
) -> None:
    ops = [open_op(f"job-{i}", idempotency_key="key-1", request_hash="body-1") for i in range(50)]
    outcomes = await asyncio.gather(*[ledger.execute(op) for op in ops])
    assert {o.value.id for o in outcomes} == {"job-0"}
    assert sum(o.changed for o in outcomes) == 1
    assert entries(ledger.path, "job-0") == ["hold"]
    assert (await ledger.balance("acct")).held == 10
    assert (await ledger.counts())["queued"] == 1
    assert check_invariants(ledger.path) == []


async def test_same_key_with_another_body_is_a_conflict(ledger: Ledger) -> None:
    await open_job(ledger, "job-1", idempotency_key="key-1", request_hash="body-1")
    before = dump(ledger.path)
    outcome = await ledger.execute(open_op("job-2", idempotency_key="key-1", request_hash="body-2"))
    assert isinstance(outcome.error, IdempotencyConflict)
    assert outcome.error.job_id == "job-1"
    assert dump(ledger.path) == before
    # The same key on another account is another key.
    await apply_op(ledger, CreateAccount("other", "hash-other"))
    await apply_op(ledger, Grant("other", 10, "g-other"))
    outcome = await ledger.execute(
        OpenJob("job-3", "other", "flux", {}, 10, "t", "fal", DEADLINE, "key-1", "body-2")
    )
    assert outcome.changed and outcome.value.account_id == "other"


async def test_open_beyond_available_credits_writes_nothing(ledger: Ledger) -> None:
    await open_job(ledger, "job-1", price=60)
    before = dump(ledger.path)
    with pytest.raises(InsufficientCredits) as caught:
        await open_job(ledger, "job-2", price=41, idempotency_key="k2", request_hash="h")
    assert (caught.value.price, caught.value.available) == (41, 40)
    assert dump(ledger.path) == before
    await open_job(ledger, "job-3", price=40)  # exactly the rest is fine
    assert (await ledger.balance("acct")).available == 0


async def test_replay_of_an_opened_job_is_no_charge_even_when_credits_ran_out(
    ledger: Ledger,
) -> None:
    await open_job(ledger, "job-1", price=100)
    outcome = await ledger.execute(open_op("job-1", price=100))
    assert outcome.error is None and not outcome.changed
    assert entries(ledger.path, "job-1") == ["hold"]


async def test_in_flight_cap(ledger: Ledger) -> None:
    for i in range(3):
        await open_job(ledger, f"job-{i}", price=1, max_in_flight=3)
    with pytest.raises(TooManyJobsInFlight):
        await open_job(ledger, "job-3", price=1, max_in_flight=3)
    await apply_op(ledger, Cancel("job-0"))  # a terminal job frees its place
    await open_job(ledger, "job-3", price=1, max_in_flight=3)
    assert check_invariants(ledger.path) == []


async def test_unknown_account(ledger: Ledger) -> None:
    with pytest.raises(AccountNotFound):
        await open_job(ledger, "job-1", account="nobody")
    with pytest.raises(AccountNotFound):
        await apply_op(ledger, Grant("nobody", 5, "g"))
    with pytest.raises(AccountNotFound):
        await ledger.balance("nobody")


async def test_grants_are_idempotent_by_grant_id(ledger: Ledger) -> None:
    assert (await apply_op(ledger, Grant("acct", 50, "topup-1"))).balance == 150
    assert (await apply_op(ledger, Grant("acct", 50, "topup-1"))).balance == 150
    [match, unknown] = await ledger.keys_for_hashes(["hash-acct", "nope"])
    assert match is not None and match.account_id == "acct" and unknown is None
    assert not (await ledger.execute(CreateAccount("acct", "hash-acct"))).changed


# --- the life of a job -------------------------------------------------------------------


async def test_a_job_from_open_to_complete_captures_its_hold(ledger: Ledger, clock: Clock) -> None:
    await open_job(ledger, "job-1")
    job = await apply_op(ledger, StartAttempt("job-1", 1, "fal", 0))
    assert (job.attempts, job.vendor_attempts, job.status) == (1, 1, JobStatus.QUEUED)
    job = await apply_op(ledger, MarkProcessing("job-1", 1, "task-1"))
    assert (job.status, job.vendor_task_id) == (JobStatus.PROCESSING, "task-1")
    clock.advance()
    job = await apply_op(ledger, Complete("job-1", "results/job-1.png"))
    assert (job.status, job.result_key, job.updated_at) == (
        JobStatus.COMPLETED,
        "results/job-1.png",
        clock.now,
    )
    assert entries(ledger.path, "job-1") == ["hold", "capture"]
    balance = await ledger.balance("acct")
    assert (balance.balance, balance.held, balance.available) == (90, 0, 90)
    assert [h.status for h in await ledger.history("job-1")] == [
        JobStatus.QUEUED,
        JobStatus.PROCESSING,
        JobStatus.COMPLETED,
    ]
    assert [e.kind for e in (await ledger.statement("acct")).items] == [
        EntryKind.GRANT,
        EntryKind.HOLD,
        EntryKind.CAPTURE,
    ]
    assert await ledger.get_job("job-1") == job


async def test_start_attempt_is_a_compare_and_set(ledger: Ledger) -> None:
    await open_job(ledger, "job-1")
    assert (await ledger.execute(StartAttempt("job-1", 1, "fal", 0))).changed
    again = await ledger.execute(StartAttempt("job-1", 1, "fal", 0))
    assert not again.changed and again.value.attempts == 1
    skipped = await ledger.execute(StartAttempt("job-1", 3, "fal", 0))
    assert not skipped.changed and skipped.value.attempts == 1
    await apply_op(ledger, MarkProcessing("job-1", 1, "task-1"))
    busy = await ledger.execute(StartAttempt("job-1", 2, "fal", 0))  # not queued
    assert not busy.changed and busy.value.status is JobStatus.PROCESSING


async def test_a_submit_is_in_doubt_until_its_task_id_or_retry_is_recorded(
    ledger: Ledger, clock: Clock
) -> None:
    async def in_doubt(vendor: str = "fal", after: float = 0.0) -> list[tuple[str, int]]:
        return [(j.id, j.attempts) for j in await ledger.submits_in_doubt(vendor, after)]

    for job_id in ("marked", "retried", "canceled", "open"):
        await open_job(ledger, job_id)
        await apply_op(ledger, StartAttempt(job_id, 1, "fal", 0))
    assert await in_doubt() == [("marked", 1), ("retried", 1), ("canceled", 1), ("open", 1)]
    await apply_op(ledger, MarkProcessing("marked", 1, "task-1"))
    await apply_op(ledger, ScheduleRetry("retried", 1, clock() + 5, "vendor 503", 0, "fal"))
    await apply_op(ledger, Cancel("canceled"))  # canceled mid-submit: its task may still exist
    assert await in_doubt() == [("canceled", 1), ("open", 1)]
    assert await in_doubt("replicate") == []
    clock.advance(10)
    await apply_op(ledger, StartAttempt("retried", 2, "fal", 0))
    assert await in_doubt(after=clock() - 1) == [("retried", 2)]


async def test_retry_failover_and_vendor_attempts(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1")
    job = await apply_op(ledger, ScheduleRetry("job-1", 1, 1_005.0, "vendor 503", 0, "fal"))
    assert (job.status, job.not_before, job.error, job.vendor_task_id) == (
        JobStatus.QUEUED,
        1_005.0,
        "vendor 503",
        None,
    )
    stale = await ledger.execute(ScheduleRetry("job-1", 0, 1_009.0, "old", 0, "fal"))
    assert not stale.changed
    job = await apply_op(ledger, StartAttempt("job-1", 2, "fal", 0))
    assert (job.attempts, job.vendor_attempts) == (2, 2)
    job = await apply_op(ledger, ScheduleRetry("job-1", 2, 1_006.0, "failover", 1, "replicate"))
    assert (job.route_position, job.vendor, job.vendor_attempts) == (1, "replicate", 0)
    job = await apply_op(ledger, StartAttempt("job-1", 3, "replicate", 1))
    assert (job.attempts, job.vendor_attempts, job.vendor) == (3, 1, "replicate")
    assert await ledger.jobs_for_vendor("replicate") == [job]
    assert await ledger.jobs_for_vendor("fal") == []


async def test_failover_of_a_queued_job_moves_it(ledger: Ledger) -> None:
    """A processor fails a queued job over (circuit open) with the attempt it already had."""
    await to_processing(ledger, "job-1")
    await apply_op(ledger, ScheduleRetry("job-1", 1, 1_005.0, "503", 0, "fal"))
    job = await apply_op(ledger, ScheduleRetry("job-1", 1, 1_005.0, "circuit open", 1, "replicate"))
    assert (job.vendor, job.route_position, job.vendor_attempts) == ("replicate", 1, 0)


async def test_mark_processing_replay_and_conflict(ledger: Ledger) -> None:
    await open_job(ledger, "job-1")
    await apply_op(ledger, StartAttempt("job-1", 1, "fal", 0))
    assert (await ledger.execute(MarkProcessing("job-1", 1, "task-1"))).changed
    assert not (await ledger.execute(MarkProcessing("job-1", 1, "task-1"))).changed
    with pytest.raises(IllegalTransition):
        await apply_op(
            ledger, MarkProcessing("job-1", 1, "task-2")
        )  # a second task for one attempt


async def test_complete_of_a_queued_job_is_illegal(ledger: Ledger) -> None:
    await open_job(ledger, "job-1")
    before = dump(ledger.path)
    with pytest.raises(IllegalTransition):
        await apply_op(ledger, Complete("job-1", "r"))
    assert dump(ledger.path) == before


async def test_fail_releases_and_dead_letters(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1")
    job = await apply_op(ledger, Fail("job-1", "content rejected"))
    assert (job.status, job.error) == (JobStatus.FAILED, "content rejected")
    assert entries(ledger.path, "job-1") == ["hold", "release"]
    assert (await ledger.balance("acct")).available == 100
    [dead] = (await ledger.dead_letters()).items
    assert (dead.job_id, dead.error, dead.attempts, dead.trace_id) == (
        "job-1",
        "content rejected",
        1,
        "trace-job-1",
    )
    await open_job(ledger, "job-2")
    expired = await apply_op(ledger, Fail("job-2", "deadline passed", expired=True))
    assert expired.status is JobStatus.FAILED


async def test_cancel_is_scoped_to_the_account(ledger: Ledger) -> None:
    await open_job(ledger, "job-1")
    await apply_op(ledger, CreateAccount("other", "hash-other"))
    with pytest.raises(JobNotFound):
        await apply_op(ledger, Cancel("job-1", account_id="other"))
    with pytest.raises(JobNotFound):
        await ledger.get_job("job-1", account_id="other")
    job = await apply_op(ledger, Cancel("job-1", account_id="acct"))
    assert job.status is JobStatus.CANCELED
    assert entries(ledger.path, "job-1") == ["hold", "release"]
    with pytest.raises(JobNotFound):
        await apply_op(ledger, Cancel("nope"))


async def test_terminal_jobs_absorb_everything(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1")
    await apply_op(ledger, Complete("job-1", "r"))
    before = dump(ledger.path)
    late: list[LedgerOp] = [
        Fail("job-1", "late"),
        Cancel("job-1"),
        Complete("job-1", "other"),
        ScheduleRetry("job-1", 1, 0.0, "late", 0, "fal"),
        MarkProcessing("job-1", 1, "task-x"),
        StartAttempt("job-1", 2, "fal", 0),
    ]
    for outcome in await ledger.execute_many(late):
        assert outcome.error is None and not outcome.changed
        assert outcome.value.status is JobStatus.COMPLETED
    assert dump(ledger.path) == before


async def test_record_webhook(ledger: Ledger) -> None:
    assert await apply_op(ledger, RecordWebhook("fal", "wh-1"))
    assert not await apply_op(ledger, RecordWebhook("fal", "wh-1"))
    assert await apply_op(ledger, RecordWebhook("replicate", "wh-1"))


# --- races -----------------------------------------------------------------------------


async def test_complete_and_fail_racing_settle_once(ledger: Ledger) -> None:
    ids = [f"job-{i}" for i in range(8)]
    for job_id in ids:
        await to_processing(ledger, job_id, price=1)
    outcomes = await asyncio.gather(
        *[ledger.execute(op) for job_id in ids for op in (Complete(job_id, "r"), Fail(job_id, "x"))]
    )
    for i, job_id in enumerate(ids):
        complete, fail = outcomes[2 * i], outcomes[2 * i + 1]
        assert complete.changed + fail.changed == 1
        assert len(entries(ledger.path, job_id)) == 2
    assert check_invariants(ledger.path) == []


async def test_two_ledgers_on_one_file_settle_each_job_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    first = await Ledger.open(path)
    second = await Ledger.open(path)
    try:
        await apply_op(first, CreateAccount("acct", "h"))
        await apply_op(first, Grant("acct", 1_000, "g"))
        ids = [f"job-{i}" for i in range(40)]
        for job_id in ids:
            await to_processing(first, job_id, price=1)
        outcomes = await asyncio.gather(
            *[first.execute(Complete(job_id, "r")) for job_id in ids],
            *[second.execute(Fail(job_id, "x")) for job_id in ids],
        )
        completes, fails = outcomes[: len(ids)], outcomes[len(ids) :]
        for job_id, complete, fail in zip(ids, completes, fails, strict=True):
            assert complete.changed + fail.changed == 1, job_id
            want = "capture" if complete.changed else "release"
            assert entries(path, job_id) == ["hold", want]
        # Each writer's cached account row was re-read under the write lock.
        assert check_invariants(path) == []
    finally:
        await first.close()
        await second.close()


async def test_sql_refuses_a_second_settlement(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1")
    await apply_op(ledger, Complete("job-1", "r"))
    conn = sqlite3.connect(ledger.path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO credit_entries (account_id, kind, amount, job_id, created_at) "
                "VALUES ('acct', 'release', 10, 'job-1', 0)"
            )
        with pytest.raises(sqlite3.IntegrityError, match="terminal"):
            conn.execute("UPDATE jobs SET status = 'failed' WHERE id = 'job-1'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM credit_entries")
    finally:
        conn.close()


# --- idempotency of every operation -----------------------------------------------------


async def test_every_operation_replayed_leaves_the_state_of_once(
    ledger: Ledger, clock: Clock
) -> None:
    script: list[LedgerOp] = [
        CreateAccount("acct-2", "hash-2", "second"),
        Grant("acct-2", 30, "g-2"),
        open_op("a", idempotency_key="ka", request_hash="ha"),
        StartAttempt("a", 1, "fal", 0),
        MarkProcessing("a", 1, "task-a"),
        ScheduleRetry("a", 1, 1_050.0, "timeout", 0, "fal"),
        StartAttempt("a", 2, "fal", 0),
        ScheduleRetry("a", 2, 1_060.0, "failover", 1, "replicate"),
        StartAttempt("a", 3, "replicate", 1),
        MarkProcessing("a", 3, "task-a3"),
        Complete("a", "results/a"),
        open_op("b", account="acct-2"),
        Fail("b", "rejected"),
        Redrive("b", "b2", "trace-b2", DEADLINE),
        open_op("c"),
        Cancel("c", "acct"),
        open_op("d"),
        Fail("d", "expired", expired=True),
        RecordWebhook("fal", "wh-1"),
    ]
    for op in script:
        clock.advance()
        first = await ledger.execute(op)
        assert first.error is None, (op, first.error)
        once = dump(ledger.path)
        clock.advance()
        again = await ledger.execute(op)
        assert again.error is None, (op, again.error)
        assert not again.changed, op
        assert dump(ledger.path) == once, op
    assert check_invariants(ledger.path) == []


# --- group commit -----------------------------------------------------------------------


async def test_concurrent_operations_share_one_transaction(ledger: Ledger) -> None:
    before = ledger.stats.batches
    await asyncio.gather(*[open_job(ledger, f"job-{i}", price=1) for i in range(60)])
    assert ledger.stats.batches - before == 1
    assert ledger.stats.largest_batch >= 60


async def test_a_refused_operation_does_not_affect_its_batch(ledger: Ledger) -> None:
    outcomes = await ledger.execute_many(
        [
            open_op("job-1", price=50),
            open_op("job-2", price=51),  # more than what is left
            open_op("job-3", price=50),
            Complete("job-1", "r"),  # illegal from queued
            Cancel("job-1"),
            Redrive("nope", "x", "t", DEADLINE),
        ]
    )
    assert [type(o.error) for o in outcomes] == [
        type(None),
        InsufficientCredits,
        type(None),
        IllegalTransition,
        type(None),
        DeadLetterNotFound,
    ]
    assert entries(ledger.path, "job-2") == []
    assert entries(ledger.path, "job-1") == ["hold", "release"]
    assert entries(ledger.path, "job-3") == ["hold"]
    assert check_invariants(ledger.path) == []


async def test_an_unexpected_error_fails_only_its_own_operation(ledger: Ledger) -> None:
    """A duplicate API-key hash breaks a UNIQUE constraint no check looks for: the
    batch is rolled back and re-run one by one, and only that operation fails."""
    batches = ledger.stats.batches
    outcomes = await ledger.execute_many(
        [
            open_op("job-1"),
            CreateAccount("acct-2", "hash-acct"),  # the same key hash as "acct"
            open_op("job-2"),
        ]
    )
    assert ledger.stats.batches == batches + 1
    assert outcomes[0].changed and outcomes[2].changed
    # A broken constraint is no outage: retrying cannot help (a 500, not a 503).
    assert isinstance(outcomes[1].error, LedgerFault)
    assert "UNIQUE" in str(outcomes[1].error)
    assert entries(ledger.path, "job-1") == ["hold"]
    assert entries(ledger.path, "job-2") == ["hold"]
    assert check_invariants(ledger.path) == []


async def test_a_bug_in_an_operation_reaches_only_its_caller(ledger: Ledger) -> None:
    with pytest.raises(LedgerFault, match="ValueError"):
        await apply_op(ledger, Grant("acct", -5, "negative"))
    results = await asyncio.gather(
        ledger.execute(open_op("job-1")),
        ledger.execute(open_op("job-2", price=-1)),
    )
    assert results[0].changed
    assert isinstance(results[1].error, LedgerFault)  # an Outcome, never a raw exception


RUN_OPS = st.lists(
    st.tuples(
        st.sampled_from(["start", "start", "failover-start", "mark", "mark", "complete", "fail"]),
        st.sampled_from(["j0", "j1", "j2", "j3", "j4"]),
        st.integers(min_value=1, max_value=2),
        st.sampled_from(["task", "task\x00nul", "tâche ☃ \U0001f600", 'quo"te\\']),
    ),
    max_size=40,
)


def _run_op(kind: str, job_id: str, attempt: int, text: str) -> LedgerOp:
    return {
        "start": lambda: StartAttempt(job_id, attempt, "fal", 0),
        "failover-start": lambda: StartAttempt(job_id, attempt, "replicate", 1),
        "mark": lambda: MarkProcessing(job_id, attempt, text),
        "complete": lambda: Complete(job_id, text),
        "fail": lambda: Fail(job_id, "x"),
    }[kind]()


@settings(max_examples=60, deadline=None, database=None)
@given(RUN_OPS)
def test_a_batch_has_the_effect_of_its_operations_one_by_one(
    script: list[tuple[str, str, int, str]],
) -> None:
    """Runs of one kind share one UPDATE (``_Batch.apply_run``): every outcome and
    every row must be what the same operations give one transaction at a time."""

    async def run(path: Path, together: bool) -> list[tuple[Any, ...]]:
        ledger = await Ledger.open(path, Clock())
        try:
            await apply_op(ledger, CreateAccount("acct", "h"))
            await apply_op(ledger, Grant("acct", 1_000, "g"))
            for i in range(5):
                await open_job(ledger, f"j{i}", price=7)
            ops = [_run_op(*step) for step in script]
            if together:
                outcomes = await ledger.execute_many(ops)
            else:
                outcomes = [await ledger.execute(op) for op in ops]
        finally:
            await ledger.close()
        return [(o.value, o.changed, type(o.error)) for o in outcomes]

    with tempfile.TemporaryDirectory() as tmp:
        together = asyncio.run(run(Path(tmp) / "together.db", True))
        alone = asyncio.run(run(Path(tmp) / "alone.db", False))
        assert together == alone
        assert dump(Path(tmp) / "together.db") == dump(Path(tmp) / "alone.db")
        assert check_invariants(Path(tmp) / "together.db") == []


async def test_a_closed_ledger_is_unavailable(tmp_path: Path) -> None:
    ledger = await Ledger.open(tmp_path / "l.db")
    await ledger.close()
    with pytest.raises(LedgerUnavailable):
        await apply_op(ledger, CreateAccount("a", "h"))
    with pytest.raises(LedgerUnavailable):
        await ledger.balance("a")


async def test_close_finishes_what_was_submitted(tmp_path: Path) -> None:
    ledger = await Ledger.open(tmp_path / "l.db")
    pending = asyncio.ensure_future(ledger.execute(CreateAccount("a", "h")))
    await asyncio.sleep(0)
    await ledger.close()
    assert (await pending).changed


async def test_a_job_opened_further_down_its_route_starts_there(ledger: Ledger) -> None:
    op = OpenJob("job-1", "acct", "flux", {}, 10, "t", "replicate", DEADLINE, route_position=1)
    job = await apply_op(ledger, op)
    assert (job.vendor, job.route_position) == ("replicate", 1)
    assert await ledger.get_job("job-1") == job
    started = await apply_op(ledger, StartAttempt("job-1", 1, "replicate", 1))
    assert (started.attempts, started.vendor_attempts) == (1, 1)


# --- redrive ----------------------------------------------------------------------------


async def test_redrive_opens_a_new_job_once(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1", price=30)
    await apply_op(ledger, Fail("job-1", "vendor down"))
    with pytest.raises(DeadLetterNotFound):
        await apply_op(ledger, Redrive("job-404", "x", "t", DEADLINE))
    new = await apply_op(ledger, Redrive("job-1", "job-1b", "trace-b", DEADLINE))
    assert (new.status, new.cost, new.redriven_from, new.input, new.attempts) == (
        JobStatus.QUEUED,
        30,
        "job-1",
        {"prompt": "job-1"},
        0,
    )
    assert await apply_op(ledger, Redrive("job-1", "job-1c", "trace-c", DEADLINE)) == new
    assert (await ledger.get_job("job-1")).status is JobStatus.FAILED  # never moved again
    assert entries(ledger.path, "job-1b") == ["hold"]
    assert (await ledger.dead_letters()).items == []
    [dead] = (await ledger.dead_letters(include_redriven=True)).items
    assert dead.redriven_to == "job-1b"
    assert check_invariants(ledger.path) == []


async def test_redrive_can_start_the_route_over(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1", price=30)
    await apply_op(ledger, ScheduleRetry("job-1", 1, 0.0, "down", 1, "backup"))
    await apply_op(ledger, Fail("job-1", "route spent"))
    outcome = await ledger.execute(Redrive("job-1", "job-1b", "trace-b", DEADLINE, vendor="first"))
    new = outcome.unwrap()
    assert (new.route_position, new.vendor) == (0, "first")
    assert check_invariants(ledger.path) == []


async def test_redrive_needs_credits(ledger: Ledger) -> None:
    await open_job(ledger, "job-1", price=60)
    await apply_op(ledger, Fail("job-1", "x"))
    await open_job(ledger, "job-2", price=50)
    before = dump(ledger.path)
    with pytest.raises(InsufficientCredits):
        await apply_op(ledger, Redrive("job-1", "job-1b", "t", DEADLINE))
    assert dump(ledger.path) == before


# --- reads ------------------------------------------------------------------------------


async def test_pages_are_stable_and_newest_first(ledger: Ledger, clock: Clock) -> None:
    await apply_op(ledger, Grant("acct", 1_000, "more"))
    for i in range(25):
        await open_job(ledger, f"job-{i:02d}", price=1)
    await apply_op(ledger, Cancel("job-03"))
    seen: list[str] = []
    page = await ledger.list_jobs("acct", limit=10)
    await open_job(ledger, "job-late", price=1)  # arrives between pages: not in this walk
    while True:
        seen += [j.id for j in page.items]
        if page.next_cursor is None:
            break
        page = await ledger.list_jobs("acct", limit=10, cursor=page.next_cursor)
    assert seen == [f"job-{i:02d}" for i in reversed(range(25))]
    queued = await ledger.list_jobs("acct", status=JobStatus.QUEUED, limit=100)
    assert len(queued.items) == 25 and queued.next_cursor is None
    canceled = await ledger.list_jobs("acct", status=JobStatus.CANCELED)
    assert [j.id for j in canceled.items] == ["job-03"]
    assert (await ledger.list_jobs("other-account")).items == []
    with pytest.raises(InputInvalid):
        await ledger.list_jobs("acct", cursor="not-a-cursor")


async def test_operational_reads(ledger: Ledger, clock: Clock) -> None:
    await open_job(ledger, "queued-1", price=1)
    await to_processing(ledger, "busy-1", price=1)
    await to_processing(ledger, "done-1", price=1)
    await apply_op(ledger, Complete("done-1", "r"))
    assert [j.id if j else None for j in await ledger.get_jobs(["busy-1", "nope", "queued-1"])] == [
        "busy-1",
        None,
        "queued-1",
    ]
    assert await ledger.counts() == {
        "queued": 1,
        "processing": 1,
        "completed": 1,
        "failed": 0,
        "canceled": 0,
    }
    assert [j.id for j in await ledger.jobs_by_status(JobStatus.PROCESSING)] == ["busy-1"]
    assert await ledger.jobs_by_status(JobStatus.PROCESSING, updated_before=0.0) == []
    assert [j.id for j in await ledger.jobs_by_status(JobStatus.COMPLETED)] == ["done-1"]
    assert [j.id for j in await ledger.jobs_for_vendor("fal", [JobStatus.QUEUED])] == ["queued-1"]
    assert await ledger.expired_jobs(DEADLINE - 1) == []
    expired = await ledger.expired_jobs(DEADLINE + 1)
    assert {j.id for j in expired} == {"queued-1", "busy-1"}
    history = await ledger.history("busy-1")
    assert [h.status for h in await ledger.history("busy-1", after_seq=history[0].seq)] == [
        JobStatus.PROCESSING
    ]


# --- schema -----------------------------------------------------------------------------


def test_ids_are_time_ordered_uuids() -> None:
    rng = random.Random(3)
    ids = [new_job_id(1_700_000_000 + i / 100, rng) for i in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 36 and i[14] == "7" for i in ids)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)


def test_a_seeded_rng_names_jobs_the_same_way_every_time() -> None:
    first = [new_job_id(1_700_000_000.0, random.Random(9)) for _ in range(2)]
    assert first == [new_job_id(1_700_000_000.0, random.Random(9)) for _ in range(2)]
    assert new_job_id(1_700_000_000.0, random.Random(10)) != first[0]


def test_a_job_is_read_from_exactly_the_columns_of_the_jobs_table(tmp_path: Path) -> None:
    """Job's fields, JOB_COLUMNS and the schema name the same columns in the same order,
    so building a Job from a row cannot silently shift a value into the wrong field."""
    assert tuple(field.name for field in dataclasses.fields(Job)) == JOB_FIELDS
    conn = connect(tmp_path / "schema.db")
    try:
        migrate(conn)
        table = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    finally:
        conn.close()
    assert [c for c in table if c in JOB_FIELDS] == list(JOB_FIELDS)
    assert set(table) - set(JOB_FIELDS) == {"seq", "submit_in_doubt"}  # kept in SQL only
    # Each column lands in the field of its name.
    output = {"key": "k.png", "content_type": "image/png", "size": 3, "name": None, "source": None}
    row = {name: f"<{name}>" for name in JOB_FIELDS} | {
        "input": '{"k": 1}',
        "status": "queued",
        "outputs": json.dumps([output]),
    }
    job = job_from_row(tuple(row[name] for name in JOB_FIELDS))
    stored = (StoredOutput("k.png", "image/png", 3),)
    expected = row | {"input": {"k": 1}, "status": JobStatus.QUEUED, "outputs": stored}
    assert {name: getattr(job, name) for name in JOB_FIELDS} == expected


async def test_a_job_from_a_full_row_equals_one_from_an_update_row(ledger: Ledger) -> None:
    await to_processing(ledger, "job-1")
    conn = sqlite3.connect(ledger.path)
    try:
        full = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = 'job-1'").fetchone()
        short = conn.execute(f"SELECT {MUTABLE_COLUMNS} FROM jobs WHERE id = 'job-1'").fetchone()
    finally:
        conn.close()
    job = job_from_row(full)
    assert job.vendor_task_id == "task-job-1" and job.status is JobStatus.PROCESSING
    assert job_from_update(fixed_fields(job), short) == job


def test_a_job_from_an_update_row_puts_every_field_in_its_place() -> None:
    # Every field distinct (no two Nones to swap unseen): job_from_update builds the Job
    # positionally, so a column out of order must show here.
    outputs = (StoredOutput("k.png", "image/png", 3, "a.png", "images[0]"),)
    job = Job(
        id="j", account_id="a", model="m", input={"k": 1}, status=JobStatus.COMPLETED,
        cost=7, trace_id="t", route_position=2, vendor="v", vendor_task_id="task",
        attempts=3, vendor_attempts=1, not_before=10.5, deadline=99.5, result_key="k.png",
        error="e", idempotency_key="idem", redriven_from="old", created_at=1.5,
        updated_at=2.5, outputs=outputs,
    )  # fmt: skip
    columns = {"status": "completed", "outputs": outputs_to_json(outputs)}
    row = tuple(columns.get(name, getattr(job, name)) for name in MUTABLE_FIELDS)
    assert job_from_update(fixed_fields(job), row) == job


async def test_opening_an_old_database_upgrades_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=1) == 1
    conn.executescript(
        """
        INSERT INTO accounts (id, api_key_hash, created_at, balance, held)
            VALUES ('acct', 'h', 0, 100, 10);
        INSERT INTO credit_entries (account_id, kind, amount, ref, created_at)
            VALUES ('acct', 'grant', 100, 'g', 0);
        INSERT INTO jobs (id, account_id, model, input, status, cost, trace_id, route_position,
            vendor, attempts, vendor_attempts, not_before, deadline, created_at, updated_at)
            VALUES ('job-1', 'acct', 'flux', '{}', 'processing', 10, 't', 0, 'fal', 1, 1, 0,
                    99999, 0, 5);
        INSERT INTO credit_entries (account_id, kind, amount, job_id, created_at)
            VALUES ('acct', 'hold', 10, 'job-1', 0);
        """
    )
    conn.close()
    ledger = await Ledger.open(path)
    try:
        assert [h.status for h in await ledger.history("job-1")] == [JobStatus.PROCESSING]
        job = await apply_op(ledger, Complete("job-1", "r"))  # in_flight was backfilled: 1 -> 0
        assert job.status is JobStatus.COMPLETED
    finally:
        await ledger.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert check_invariants(path) == []


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerUnavailable, match="newer"):
        await Ledger.open(path)


# --- every returned job is what the database holds ------------------------------------

OPS_ON_ONE_OF_THREE_JOBS = st.lists(
    st.tuples(
        st.sampled_from(
            ["open", "start", "mark", "retry", "failover", "complete", "fail", "cancel"]
        ),
        st.sampled_from(["j0", "j1", "j2"]),
        st.integers(min_value=1, max_value=3),
    ),
    max_size=30,
)


def _op(kind: str, job_id: str, attempt: int) -> LedgerOp:
    return {
        "open": lambda: open_op(job_id, price=7),
        "start": lambda: StartAttempt(job_id, attempt, "fal", 0),
        "mark": lambda: MarkProcessing(job_id, attempt, f"task-{attempt}"),
        "retry": lambda: ScheduleRetry(job_id, attempt, 5.0, "503", 0, "fal"),
        "failover": lambda: ScheduleRetry(job_id, attempt, 6.0, "down", 1, "replicate"),
        "complete": lambda: Complete(job_id, "r"),
        "fail": lambda: Fail(job_id, "x"),
        "cancel": lambda: Cancel(job_id),
    }[kind]()


@settings(max_examples=80, deadline=None, database=None)
@given(OPS_ON_ONE_OF_THREE_JOBS)
def test_returned_jobs_match_the_database(script: list[tuple[str, str, int]]) -> None:
    async def run(path: Path) -> None:
        ledger = await Ledger.open(path, Clock())
        try:
            await apply_op(ledger, CreateAccount("acct", "h"))
            await apply_op(ledger, Grant("acct", 1_000, "g"))
            # Half the operations go in one batch, to mix jobs within a transaction.
            half = len(script) // 2
            outcomes = await ledger.execute_many([_op(*step) for step in script[:half]])
            for step in script[half:]:
                outcomes.append(await ledger.execute(_op(*step)))
            last: dict[str, Job] = {}  # the job as the last operation on it returned it
            for outcome in outcomes:
                if outcome.error is None:
                    last[outcome.value.id] = outcome.value
                else:
                    assert isinstance(outcome.error, JobNotFound | IllegalTransition)
            for job_id, job in last.items():
                assert await ledger.get_job(job_id) == job
        finally:
            await ledger.close()
        assert check_invariants(path) == []

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp) / "ledger.db"))
