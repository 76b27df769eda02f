"""The ledger's side of many customers (issue 13): grants replayed or refused by grant id,
API keys (several, revoked, rotated, a revocation feed, last use), per-account limits and
submit rates, free jobs, counters instead of counts, keyset pages, and schema migration 7."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import (
    ApiKeyNotFound,
    GrantConflict,
    InputInvalid,
    SubmitRateLimited,
    TooManyApiKeys,
    TooManyJobsInFlight,
)
from runtime.invariants import check_invariants
from runtime.ledger import Ledger
from runtime.ledger_migrations import SCHEMA_VERSION
from runtime.ledger_schema import migrate
from runtime.models import (
    AccountLimits,
    Cancel,
    Complete,
    CreateAccount,
    CreateApiKey,
    Fail,
    Grant,
    MarkProcessing,
    OpenJob,
    RecordKeyUse,
    Redrive,
    RevokeApiKey,
    SetAccountLimits,
    StartAttempt,
)
from runtime.states import JobStatus
from tests.ledger_ops import Clock, apply_op, funded_ledger

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


# --- grants (cases 3 and 13) ------------------------------------------------------------


async def test_a_reused_grant_id_replays_the_same_amount_and_refuses_another(
    ledger: Ledger,
) -> None:
    first = await ledger.execute(Grant("acct", 50, "invoice-7"))
    assert first.changed and first.value.balance == 150
    await apply_op(ledger, Grant("acct", 5, "other"))
    again = await ledger.execute(Grant("acct", 50, "invoice-7"))
    assert not again.changed
    assert again.value == first.value  # the first answer, not today's balance
    with pytest.raises(GrantConflict, match=r"'invoice-7'.* 50 credits.* asks for 70"):
        await apply_op(ledger, Grant("acct", 70, "invoice-7"))
    assert (await ledger.balance("acct")).balance == 155
    assert check_invariants(ledger.path) == []


async def test_grant_ids_are_scoped_to_their_account(ledger: Ledger) -> None:
    await apply_op(ledger, CreateAccount("other", "hash-other", key_id="key-o"))
    await apply_op(ledger, Grant("acct", 5, "g"))
    assert (await ledger.execute(Grant("other", 7, "g"))).changed
    assert (await ledger.balance("other")).balance == 7


async def test_the_creation_grant_never_collides_with_a_grant_named_initial(
    ledger: Ledger,
) -> None:
    """Case 13: an account created with credits, then ``grant_id: "initial"``."""
    outcome = await ledger.execute(Grant("acct", 25, "initial"))
    assert outcome.changed and outcome.value.balance == 125
    kinds = [(e.kind.value, e.amount) for e in (await ledger.statement("acct")).items]
    assert kinds == [("grant", 100), ("grant", 25)]


# --- API keys ---------------------------------------------------------------------------


def new_key(key_id: str, **kw: Any) -> CreateApiKey:
    return CreateApiKey("acct", key_id, f"hash-{key_id}", f"jl_{key_id}", **kw)


async def test_an_account_has_several_keys_each_revocable(ledger: Ledger, clock: Clock) -> None:
    await apply_op(ledger, new_key("key-2", name="ci"))
    assert [m and m.account_id for m in await ledger.keys_for_hashes(["hash-key-2"])] == ["acct"]
    page = await ledger.api_keys("acct")
    assert [(k.id, k.name, k.active(clock.now)) for k in page.items] == [
        ("key-2", "ci", True),
        ("key-1", "", True),
    ]
    revoked = await apply_op(ledger, RevokeApiKey("acct", "key-1"))
    assert revoked.expires_at == clock.now and not revoked.active(clock.now)
    [match] = await ledger.keys_for_hashes(["hash-acct"])
    assert match is not None and match.expires_at == clock.now  # the gateway refuses it
    with pytest.raises(ApiKeyNotFound):
        await apply_op(ledger, RevokeApiKey("acct", "key-nope"))


async def test_another_accounts_key_cannot_be_revoked_or_replaced(ledger: Ledger) -> None:
    await apply_op(ledger, CreateAccount("other", "hash-other", key_id="key-o"))
    with pytest.raises(ApiKeyNotFound):
        await apply_op(ledger, RevokeApiKey("acct", "key-o"))
    with pytest.raises(ApiKeyNotFound):
        await apply_op(ledger, new_key("key-3", replaces="key-o"))
    assert (await ledger.keys_for_hashes(["hash-key-3"])) == [None]  # nothing was written


async def test_a_rotation_keeps_the_old_key_for_its_grace_period(
    ledger: Ledger, clock: Clock
) -> None:
    await apply_op(ledger, new_key("key-2", replaces="key-1", grace=60.0))
    old = {k.id: k for k in (await ledger.api_keys("acct")).items}["key-1"]
    assert (old.revoked_at, old.expires_at) == (clock.now, clock.now + 60.0)
    # A later revoke may bring the end closer, never push it away.
    assert not (await ledger.execute(RevokeApiKey("acct", "key-1", grace=600.0))).changed
    cut = await apply_op(ledger, RevokeApiKey("acct", "key-1"))
    assert cut.expires_at == clock.now


async def test_a_rotated_key_keeps_its_name_unless_given_another(ledger: Ledger) -> None:
    # Field case: a rotated key lost its name.
    await apply_op(ledger, new_key("key-2", name="ci"))
    kept = await apply_op(ledger, new_key("key-3", replaces="key-2"))
    renamed = await apply_op(ledger, new_key("key-4", replaces="key-3", name="ci-2026"))
    assert (kept.name, renamed.name) == ("ci", "ci-2026")


async def test_the_revocation_feed_names_each_revoke_once_in_order(ledger: Ledger) -> None:
    start, nothing = await ledger.revocations(None)
    assert nothing == []
    await apply_op(ledger, new_key("key-2"))
    await apply_op(ledger, RevokeApiKey("acct", "key-1"))
    await apply_op(ledger, RevokeApiKey("acct", "key-2", grace=30.0))
    last, feed = await ledger.revocations(start)
    assert [r.key_id for r in feed] == ["key-1", "key-2"]
    assert await ledger.revocations(last) == (last, [])


async def test_keys_in_use_are_capped_and_a_rotation_frees_its_place(ledger: Ledger) -> None:
    await apply_op(ledger, new_key("key-2", max_keys=2))
    with pytest.raises(TooManyApiKeys):
        await apply_op(ledger, new_key("key-3", max_keys=2))
    await apply_op(ledger, new_key("key-3", max_keys=2, replaces="key-2", grace=60.0))


async def test_last_use_is_recorded_in_batches_and_never_goes_back(
    ledger: Ledger, clock: Clock
) -> None:
    await apply_op(ledger, RecordKeyUse((("key-1", 1_500.0), ("key-gone", 1_500.0))))
    await apply_op(ledger, RecordKeyUse((("key-1", 1_200.0),)))  # an older report
    [key] = (await ledger.api_keys("acct")).items
    assert key.last_used_at == 1_500.0


# --- limits and the submit rate ----------------------------------------------------------


async def test_an_accounts_own_cap_overrides_the_default(ledger: Ledger) -> None:
    await apply_op(ledger, SetAccountLimits(AccountLimits("acct", max_jobs_in_flight=1)))
    await apply_op(ledger, open_op("job-1", max_in_flight=1000))
    with pytest.raises(TooManyJobsInFlight):
        await apply_op(ledger, open_op("job-2", max_in_flight=1000))
    assert (await ledger.account_limits("acct")).max_jobs_in_flight == 1


async def test_the_submit_rate_is_a_bucket_per_account(ledger: Ledger, clock: Clock) -> None:
    limits = AccountLimits("acct", submits_per_second=2.0, submit_burst=2)
    await apply_op(ledger, SetAccountLimits(limits))
    await apply_op(ledger, open_op("job-1"))
    await apply_op(ledger, open_op("job-2"))
    with pytest.raises(SubmitRateLimited) as refused:
        await apply_op(ledger, open_op("job-3"))
    assert refused.value.retry_after == pytest.approx(0.5)
    # A replay of an opened job is no new submit; a refused one took no token.
    assert not (await ledger.execute(open_op("job-1"))).changed
    clock.now += 0.5
    await apply_op(ledger, open_op("job-3"))
    # The default applies where the account has none of its own.
    await apply_op(ledger, SetAccountLimits(AccountLimits("acct")))
    for i in range(4, 10):
        await apply_op(ledger, open_op(f"job-{i}", price=1, submits_per_second=0.0))
    assert check_invariants(ledger.path) == []


async def test_idempotency_conflicts_and_replays_come_before_the_rate(ledger: Ledger) -> None:
    await apply_op(ledger, SetAccountLimits(AccountLimits("acct", submits_per_second=0.01)))
    await apply_op(ledger, open_op("job-1", idempotency_key="k", request_hash="a"))
    replay = await ledger.execute(open_op("job-2", idempotency_key="k", request_hash="a"))
    assert replay.value.id == "job-1"
    other = await ledger.execute(open_op("job-3", idempotency_key="k", request_hash="b"))
    assert type(other.error).__name__ == "IdempotencyConflict"


# --- free jobs (case 7) -------------------------------------------------------------------


async def test_a_free_job_holds_and_settles_zero_and_the_checker_agrees(ledger: Ledger) -> None:
    await apply_op(ledger, Grant("acct", 1, "g"))
    for job_id in ("free-1", "free-2", "free-3"):
        await apply_op(ledger, open_op(job_id, price=0))
    await apply_op(ledger, StartAttempt("free-1", 1, "fal", 0))
    await apply_op(ledger, MarkProcessing("free-1", 1, "task"))
    await apply_op(ledger, Complete("free-1", "r"))
    await apply_op(ledger, Fail("free-2", "content rejected"))
    await apply_op(ledger, Cancel("free-3"))
    conn = sqlite3.connect(ledger.path)
    rows = conn.execute(
        "SELECT job_id, kind, amount FROM credit_entries WHERE job_id IS NOT NULL ORDER BY id"
    ).fetchall()
    conn.close()
    assert sorted(rows) == sorted(
        [
            ("free-1", "hold", 0),
            ("free-2", "hold", 0),
            ("free-3", "hold", 0),
            ("free-1", "capture", 0),
            ("free-2", "release", 0),
            ("free-3", "release", 0),
        ]
    )
    assert (await ledger.balance("acct")).available == 101
    assert check_invariants(ledger.path) == []


async def test_a_free_job_opens_on_an_account_with_no_credits(ledger: Ledger) -> None:
    await apply_op(ledger, CreateAccount("broke", "hash-broke", key_id="key-b"))
    op = OpenJob("free", "broke", "flux", {}, 0, "t", "fal", DEADLINE)
    assert (await apply_op(ledger, op)).cost == 0


async def test_the_schema_still_refuses_a_grant_of_zero(ledger: Ledger) -> None:
    conn = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO credit_entries (account_id, kind, amount, created_at) "
            "VALUES ('acct', 'grant', 0, 0)"
        )
    conn.close()


# --- counters, not counts -----------------------------------------------------------------


async def test_counters_match_what_they_count(ledger: Ledger) -> None:
    await apply_op(ledger, Grant("acct", 1_000, "more"))
    for i in range(6):
        await apply_op(ledger, open_op(f"job-{i}"))
    await apply_op(ledger, StartAttempt("job-0", 1, "fal", 0))
    await apply_op(ledger, MarkProcessing("job-0", 1, "task"))
    await apply_op(ledger, Complete("job-0", "r"))
    for job_id in ("job-1", "job-2", "job-3"):
        await apply_op(ledger, Fail(job_id, "boom"))
    await apply_op(ledger, Cancel("job-4"))
    await apply_op(ledger, Redrive("job-1", "job-1b", "t", DEADLINE))
    await apply_op(ledger, Fail("job-1", "a replay changes nothing"))
    counts = await ledger.counts()
    conn = sqlite3.connect(ledger.path)
    real = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    open_letters = conn.execute(
        "SELECT count(*) FROM dead_letters WHERE redriven_to IS NULL"
    ).fetchone()[0]
    conn.close()
    assert counts == {s.value: real.get(s.value, 0) for s in JobStatus}
    assert counts["failed"] == 3 and counts["queued"] == 2
    assert await ledger.open_dead_letters() == open_letters == 2


# --- pages --------------------------------------------------------------------------------


async def test_the_statement_comes_a_page_at_a_time_both_ways(ledger: Ledger) -> None:
    for i in range(7):
        await apply_op(ledger, Grant("acct", 1, f"g{i}"))
    ids: list[int] = []
    cursor = None
    while True:
        page = await ledger.statement("acct", limit=3, cursor=cursor)
        ids += [e.id for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert ids == sorted(ids) and len(ids) == 8
    newest = await ledger.statement("acct", limit=3, newest_first=True)
    assert [e.id for e in newest.items] == ids[::-1][:3]
    rest = await ledger.statement("acct", limit=10, cursor=newest.next_cursor, newest_first=True)
    assert [e.id for e in rest.items] == ids[::-1][3:]
    with pytest.raises(InputInvalid):
        await ledger.statement("acct", cursor="-1")


async def test_dead_letters_come_a_page_at_a_time(ledger: Ledger, clock: Clock) -> None:
    await apply_op(ledger, Grant("acct", 1_000, "more"))
    for i in range(5):
        await apply_op(ledger, open_op(f"job-{i}"))
        await apply_op(ledger, Fail(f"job-{i}", "boom"))
        clock.now += 1
    await apply_op(ledger, Redrive("job-2", "job-2b", "t", DEADLINE))
    seen: list[str] = []
    cursor = None
    while True:
        page = await ledger.dead_letters(limit=2, cursor=cursor)
        seen += [d.job_id for d in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert seen == ["job-4", "job-3", "job-1", "job-0"]
    every = await ledger.dead_letters(limit=10, include_redriven=True)
    assert [d.job_id for d in every.items] == ["job-4", "job-3", "job-2", "job-1", "job-0"]
    # A cursor of an infinite time (the fuzzer's "82e780/x") reads from the newest: no error.
    assert len((await ledger.dead_letters(cursor="82e780/x")).items) == 4
    with pytest.raises(InputInvalid):
        await ledger.dead_letters(cursor="nan/x")


# --- migration 7 --------------------------------------------------------------------------


async def test_migration_7_moves_keys_grants_and_counts_and_allows_free_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, target=5) == 5
    conn.executescript(
        """
        INSERT INTO accounts (id, api_key_hash, created_at, balance, held, in_flight)
            VALUES ('acct', 'hash-acct', 0, 90, 0, 0);
        INSERT INTO credit_entries (account_id, kind, amount, ref, created_at)
            VALUES ('acct', 'grant', 100, 'acct:initial', 0);
        INSERT INTO jobs (id, account_id, model, input, status, cost, trace_id, route_position,
            vendor, attempts, vendor_attempts, not_before, deadline, created_at, updated_at)
            VALUES ('job-1', 'acct', 'flux', '{}', 'completed', 10, 't', 0, 'fal', 1, 1, 0,
                    99999, 0, 5),
                   ('job-2', 'acct', 'flux', '{}', 'failed', 10, 't', 0, 'fal', 1, 1, 0,
                    99999, 0, 5);
        INSERT INTO credit_entries (account_id, kind, amount, job_id, created_at)
            VALUES ('acct', 'hold', 10, 'job-1', 0), ('acct', 'capture', 10, 'job-1', 1),
                   ('acct', 'hold', 10, 'job-2', 0), ('acct', 'release', 10, 'job-2', 1);
        INSERT INTO job_history (job_id, account_id, status, at)
            VALUES ('job-1', 'acct', 'completed', 1), ('job-2', 'acct', 'failed', 1);
        INSERT INTO dead_letters (job_id, account_id, model, vendor, error, attempts,
            trace_id, created_at) VALUES ('job-2', 'acct', 'flux', 'fal', 'boom', 1, 't', 1);
        """
    )
    conn.close()
    ledger = await Ledger.open(path)
    try:
        [match] = await ledger.keys_for_hashes(["hash-acct"])  # the old key still works
        assert match is not None and match.account_id == "acct" and match.expires_at is None
        [key] = (await ledger.api_keys("acct")).items
        assert (key.id, key.prefix) == (match.key_id, "")
        # The old creation grant kept its id: answered, never applied twice, never silent.
        assert not (await ledger.execute(Grant("acct", 100, "initial"))).changed
        assert isinstance((await ledger.execute(Grant("acct", 5, "initial"))).error, GrantConflict)
        counts = await ledger.counts()
        assert (counts["completed"], counts["failed"]) == (1, 1)
        assert await ledger.open_dead_letters() == 1
        free = OpenJob("job-3", "acct", "flux", {}, 0, "t", "fal", DEADLINE)
        assert (await apply_op(ledger, free)).cost == 0
    finally:
        await ledger.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(accounts)")]
    assert "api_key_hash" not in columns
    conn.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(sqlite3.IntegrityError):  # the rebuilt table is still referenced
        conn.execute("DELETE FROM accounts WHERE id = 'acct'")
    conn.close()
    assert check_invariants(path) == []
