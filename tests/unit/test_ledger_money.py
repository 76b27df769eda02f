"""The ledger's side of cost control (issue 13): a fee kept on a job rejected for its
input (one capture of the fee, one release of the rest: I1 and I2 exactly), what each
vendor attempt cost the operator, the input-rejection throttle, slot weights, and schema
migration 8."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import AccountThrottled
from runtime.invariants import check_invariants
from runtime.ledger import Ledger
from runtime.ledger_schema import migrate
from runtime.models import (
    FEE_NOTE,
    REFUND_LESS_FEE_NOTE,
    AccountLimits,
    ClearThrottle,
    Complete,
    CreateAccount,
    Fail,
    MarkProcessing,
    OpenJob,
    RecordCharge,
    SetAccountLimits,
    StartAttempt,
    VendorCharge,
)
from runtime.refunds import RejectionThrottle
from tests.ledger_ops import Clock, apply_op, funded_ledger
from tests.unit.test_invariants import corrupt

DEADLINE = 10_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ledger(tmp_path: Path, clock: Clock) -> AsyncIterator[Ledger]:
    ledger = await funded_ledger(tmp_path / "ledger.db", clock)
    yield ledger
    await ledger.close()


def open_op(job_id: str, price: int = 10, **kw: Any) -> OpenJob:
    return OpenJob(job_id, "acct", "flux", {}, price, "t-" + job_id, "fal", DEADLINE, **kw)


def entries(ledger: Ledger, job_id: str) -> list[tuple[str, int, str | None]]:
    with sqlite3.connect(ledger.path) as conn:
        return conn.execute(
            "SELECT kind, amount, note FROM credit_entries WHERE job_id = ? ORDER BY id",
            (job_id,),
        ).fetchall()


def charge(job_id: str, attempt: int = 1, outcome: str = "failed") -> VendorCharge:
    return VendorCharge(job_id, attempt, "acct", "fal", "flux", 3_000, outcome)


# --- the fee kept on an input rejection -------------------------------------------------


async def test_a_fee_kept_is_a_capture_of_the_fee_and_a_release_of_the_rest(
    ledger: Ledger,
) -> None:
    await apply_op(ledger, open_op("job-1"))
    await apply_op(ledger, Fail("job-1", "content policy", input_rejected=True, fee=3))
    assert entries(ledger, "job-1") == [
        ("hold", 10, None),
        ("capture", 3, FEE_NOTE),
        ("release", 7, REFUND_LESS_FEE_NOTE),
    ]
    balance = await ledger.balance("acct")
    assert (balance.balance, balance.held, balance.available) == (97, 0, 97)
    statement = (await ledger.statement("acct", limit=10)).items
    assert [entry.note for entry in statement if entry.job_id == "job-1"][-2:] == [
        FEE_NOTE,
        REFUND_LESS_FEE_NOTE,
    ]
    assert check_invariants(ledger.path) == []


async def test_a_fee_is_capped_at_the_price_and_kept_only_for_an_input_rejection(
    ledger: Ledger,
) -> None:
    for job_id in ("over", "vendor", "expired"):
        await apply_op(ledger, open_op(job_id))
    await apply_op(ledger, Fail("over", "nsfw", input_rejected=True, fee=50))
    await apply_op(ledger, Fail("vendor", "vendor down", fee=5))  # the vendor's fault
    await apply_op(ledger, Fail("expired", "late", expired=True, input_rejected=True, fee=5))
    assert entries(ledger, "over") == [
        ("hold", 10, None),
        ("capture", 10, FEE_NOTE),
        ("release", 0, REFUND_LESS_FEE_NOTE),  # the pair's shape, whatever the fee
    ]
    assert entries(ledger, "vendor")[1:] == [("release", 10, None)]
    assert entries(ledger, "expired")[1:] == [("release", 10, None)]
    assert (await ledger.balance("acct")).balance == 90
    assert check_invariants(ledger.path) == []


async def test_the_schema_allows_a_second_settlement_only_as_a_fee_pair(ledger: Ledger) -> None:
    await apply_op(ledger, open_op("done"))
    await apply_op(ledger, StartAttempt("done", 1, "fal", 0))
    await apply_op(ledger, MarkProcessing("done", 1, "task"))
    await apply_op(ledger, Complete("done", "r"))
    await apply_op(ledger, open_op("kept"))
    await apply_op(ledger, Fail("kept", "nsfw", input_rejected=True, fee=4))
    conn = sqlite3.connect(ledger.path)
    try:
        for job_id, kind, amount in [
            ("done", "release", 0),  # a completed job: one capture, nothing more
            ("kept", "release", 1),  # a third settlement of a failed job
        ]:
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(
                    "INSERT INTO credit_entries (account_id, kind, amount, job_id, created_at)"
                    " VALUES ('acct', ?, ?, ?, 0)",
                    (kind, amount, job_id),
                )
    finally:
        conn.close()


async def test_the_checker_refuses_a_fee_pair_that_does_not_sum_to_the_hold(
    ledger: Ledger,
) -> None:
    await apply_op(ledger, open_op("job-1"))
    await apply_op(ledger, Fail("job-1", "nsfw", input_rejected=True, fee=3))
    corrupt(
        ledger.path,
        "UPDATE credit_entries SET amount = 6 WHERE job_id = 'job-1' AND kind = 'release'",
    )
    [violation] = [v for v in check_invariants(ledger.path) if v.invariant == "I2"]
    assert "settles a hold of 10" in violation.detail


# --- the throttle -----------------------------------------------------------------------


async def test_an_account_whose_jobs_keep_failing_on_their_input_is_throttled(
    ledger: Ledger, clock: Clock
) -> None:
    throttle = RejectionThrottle(limit=3, window=60.0, duration=120.0)
    for i in range(3):
        await apply_op(ledger, open_op(f"bad-{i}", price=1))
        fail = Fail(f"bad-{i}", "nsfw", input_rejected=True, throttle=throttle)
        await apply_op(ledger, fail)
    with pytest.raises(AccountThrottled) as refused:
        await apply_op(ledger, open_op("next", price=1))
    assert refused.value.retry_after == pytest.approx(120.0)
    clock.now += 119.0
    with pytest.raises(AccountThrottled):
        await apply_op(ledger, open_op("next", price=1))
    clock.now += 1.5
    await apply_op(ledger, open_op("next", price=1))
    assert (await ledger.account_throttle("acct")).throttled_until == pytest.approx(1_120.0)


async def test_vendor_failures_and_slow_rejections_do_not_throttle(
    ledger: Ledger, clock: Clock
) -> None:
    throttle = RejectionThrottle(limit=3, window=60.0, duration=120.0)
    for i in range(6):  # the vendor's own failures: never counted
        await apply_op(ledger, open_op(f"down-{i}", price=1))
        await apply_op(ledger, Fail(f"down-{i}", "vendor down", throttle=throttle))
    for i in range(6):  # one rejection every 30 s drains as fast as it fills (3 per 60 s)
        await apply_op(ledger, open_op(f"bad-{i}", price=1))
        await apply_op(ledger, Fail(f"bad-{i}", "nsfw", input_rejected=True, throttle=throttle))
        clock.now += 30.0
    await apply_op(ledger, open_op("next", price=1))


async def test_the_admin_clears_a_throttle(ledger: Ledger) -> None:
    throttle = RejectionThrottle(limit=1, window=60.0, duration=600.0)
    await apply_op(ledger, open_op("bad", price=1))
    await apply_op(ledger, Fail("bad", "nsfw", input_rejected=True, throttle=throttle))
    with pytest.raises(AccountThrottled):
        await apply_op(ledger, open_op("next", price=1))
    cleared = await ledger.execute(ClearThrottle("acct"))
    assert cleared.changed
    await apply_op(ledger, open_op("next", price=1))
    assert (await ledger.account_throttle("acct")).input_rejections == 0


# --- what vendor attempts cost ------------------------------------------------------------


async def test_each_billed_attempt_is_recorded_once_whatever_became_of_its_job(
    ledger: Ledger,
) -> None:
    await apply_op(ledger, open_op("job-1"))
    await apply_op(ledger, StartAttempt("job-1", 1, "fal", 0))
    await apply_op(ledger, MarkProcessing("job-1", 1, "task-1"))
    assert (await ledger.execute(RecordCharge(charge("job-1", 1)))).changed
    assert not (await ledger.execute(RecordCharge(charge("job-1", 1)))).changed  # a replay
    await apply_op(ledger, StartAttempt("job-1", 2, "fal", 0))
    await apply_op(ledger, MarkProcessing("job-1", 2, "task-2"))
    await apply_op(ledger, Complete("job-1", "r", charge=charge("job-1", 2, "succeeded")))
    # A late success of an ended job: paid for and thrown away.
    await apply_op(ledger, open_op("job-2"))
    await apply_op(ledger, Fail("job-2", "deadline", expired=True))
    await apply_op(ledger, Complete("job-2", "r", charge=charge("job-2", 1, "succeeded")))
    with sqlite3.connect(ledger.path) as conn:
        rows = conn.execute(
            "SELECT job_id, attempt, outcome, cost_micros FROM vendor_charges ORDER BY job_id"
        ).fetchall()
    assert rows == [
        ("job-1", 1, "failed", 3000),
        ("job-1", 2, "succeeded", 3000),
        ("job-2", 1, "wasted", 3000),
    ]
    assert check_invariants(ledger.path) == []


async def test_an_accounts_slot_weight_is_set_with_its_limits(ledger: Ledger) -> None:
    await apply_op(ledger, CreateAccount("other", "hash-other", key_id="key-2"))
    await apply_op(ledger, SetAccountLimits(AccountLimits("acct", slot_weight=3.0)))
    assert await ledger.slot_weights(["acct", "other", "nobody"]) == {"acct": 3.0}
    assert (await ledger.account_limits("acct")).slot_weight == 3.0


# --- migration 8 --------------------------------------------------------------------------


async def test_migration_8_keeps_a_settled_ledger_and_its_checker_happy(tmp_path: Path) -> None:
    path = tmp_path / "v7.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=7) == 7
    conn.close()
    ledger = await Ledger.open(path)
    try:  # a ledger at 7 opened by this code: migrated to 8, and money works on it
        await apply_op(ledger, CreateAccount("acct", "hash-acct", credits=100, key_id="k"))
        await apply_op(ledger, open_op("job-1"))
        await apply_op(ledger, Fail("job-1", "nsfw", input_rejected=True, fee=2))
    finally:
        await ledger.close()
    assert check_invariants(path) == []
