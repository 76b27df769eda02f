"""The fair queue: round-robin across accounts with weights, honouring not_before (pure)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.fairness import FairQueue, Headroom


def drain(queue: FairQueue, now: float = 0.0) -> list[str]:
    order = []
    while queue.peek(now) is not None:
        order.append(queue.pop(now).job_id)
    return order


def test_field_case_1_one_job_of_b_is_next_after_a_flood_of_a() -> None:
    # Field case 1: A submits 80 jobs, B one; FIFO started B's job after all 80 of A's.
    queue = FairQueue()
    for i in range(80):
        queue.push(f"a{i}", "A", not_before=0.0)
    started = [queue.pop(0.0).job_id for _ in range(2)]  # the two slots fill with A's jobs
    queue.push("b0", "B", not_before=1.0)
    assert queue.pop(1.0).job_id == "b0"  # the next slot to free goes to B
    assert started == ["a0", "a1"]
    assert drain(queue, 1.0) == [f"a{i}" for i in range(2, 80)]


def test_accounts_take_turns_in_arrival_order() -> None:
    queue = FairQueue()
    for i in range(3):
        queue.push(f"a{i}", "A", 0.0)
    for i in range(3):
        queue.push(f"b{i}", "B", 0.0)
    queue.push("c0", "C", 0.0)
    assert drain(queue) == ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"A": 1.0, "B": 1.0}, {"A": 6, "B": 6}),
        ({"A": 2.0, "B": 1.0}, {"A": 8, "B": 4}),
        ({"A": 3.0, "B": 1.0}, {"A": 9, "B": 3}),
        ({"A": 0.5, "B": 1.0}, {"A": 4, "B": 8}),
    ],
)
def test_weights_share_the_starts(weights: dict[str, float], expected: dict[str, int]) -> None:
    queue = FairQueue()
    for account, weight in weights.items():
        for i in range(20):
            queue.push(f"{account}{i}", account, 0.0, weight=weight)
    first = Counter(queue.pop(0.0).account for _ in range(12))
    assert dict(first) == expected


def test_a_job_waiting_for_its_backoff_is_not_ready_and_holds_back_nothing() -> None:
    queue = FairQueue()
    queue.push("late", "A", not_before=10.0)
    queue.push("now", "A", not_before=0.0)
    assert queue.peek(5.0) is not None and queue.pop(5.0).job_id == "now"
    assert queue.peek(5.0) is None
    assert queue.next_ready_at() == 10.0
    assert queue.pop(10.0).job_id == "late"
    assert queue.next_ready_at() is None and len(queue) == 0


def test_an_account_cannot_bank_turns_while_its_jobs_wait() -> None:
    # B's jobs back off while A runs 50: when they are ready they share with A, they do
    # not all go first.
    queue = FairQueue()
    for i in range(100):
        queue.push(f"a{i}", "A", 0.0)
    for i in range(10):
        queue.push(f"b{i}", "B", 50.0)
    assert [queue.pop(float(t)).account for t in range(50)] == ["A"] * 50
    assert [queue.pop(50.0).account for _ in range(6)] == ["B", "A"] * 3


def test_discarded_jobs_never_come_out_and_cost_their_account_nothing() -> None:
    queue = FairQueue()
    for i in range(3):
        queue.push(f"a{i}", "A", 0.0)
        queue.push(f"b{i}", "B", 0.0)
    assert queue.discard("a0") and queue.discard("a1")
    assert not queue.discard("a0") and "a0" not in queue
    assert drain(queue) == ["a2", "b0", "b1", "b2"]


def test_a_pushed_again_job_moves_to_its_new_not_before() -> None:
    queue = FairQueue()
    queue.push("j", "A", 0.0)
    queue.push("j", "A", 5.0)  # a retry: queued again with its backoff
    assert len(queue) == 1 and queue.peek(1.0) is None
    assert queue.pop(5.0).job_id == "j"


def test_a_weight_must_be_positive_and_finite() -> None:
    queue = FairQueue()
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="weight"):
            queue.push("j", "A", 0.0, weight=bad)
    with pytest.raises(IndexError):
        queue.pop(0.0)


# --- properties -------------------------------------------------------------------------

pushes = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C", "D"]),
        st.integers(min_value=0, max_value=20),  # not_before
    ),
    max_size=60,
)


@given(pushes, st.lists(st.integers(min_value=0, max_value=59), max_size=10))
@settings(max_examples=200, deadline=None)
def test_every_job_comes_out_once_never_early_and_in_order_per_account(
    jobs: list[tuple[str, int]], discarded: list[int]
) -> None:
    queue = FairQueue()
    for i, (account, not_before) in enumerate(jobs):
        queue.push(f"j{i}", account, float(not_before))
    gone = {f"j{i}" for i in discarded if i < len(jobs)}
    for job_id in gone:
        queue.discard(job_id)
    out: list[tuple[float, str]] = []
    now = 0.0
    while len(queue):
        entry = queue.peek(now)
        if entry is None:
            at = queue.next_ready_at()
            assert at is not None and at > now
            now = at
            continue
        popped = queue.pop(now)
        assert popped == entry and popped.not_before <= now
        out.append((now, popped.job_id))
    ids = [job_id for _, job_id in out]
    assert sorted(ids) == sorted(f"j{i}" for i in range(len(jobs)) if f"j{i}" not in gone)
    for account in "ABCD":
        mine = [int(j[1:]) for j in ids if jobs[int(j[1:])][0] == account]
        keys = [(jobs[i][1], i) for i in mine]
        # an account's jobs come out by not_before, then arrival (time only moves forward,
        # so a later-ready job never overtakes one ready before it)
        assert keys == sorted(keys)


@given(
    st.dictionaries(
        st.sampled_from(["A", "B", "C", "D"]),
        st.sampled_from([0.5, 1.0, 2.0, 3.0]),
        min_size=2,
    ),
    st.integers(min_value=1, max_value=60),
)
@settings(max_examples=200, deadline=None)
def test_backlogged_accounts_share_in_proportion_to_their_weights(
    weights: dict[str, float], starts: int
) -> None:
    queue = FairQueue()
    for account, weight in weights.items():
        for i in range(200):
            queue.push(f"{account}{i}", account, 0.0, weight=weight)
    served = Counter(queue.pop(0.0).account for _ in range(starts))
    # Stride scheduling's bound: normalised service differs by at most one turn each.
    for a, wa in weights.items():
        for b, wb in weights.items():
            assert served[a] / wa - served[b] / wb <= 1 / wa + 1 / wb + 1e-9


@given(
    st.integers(min_value=1, max_value=5),  # other accounts flooding
    st.integers(min_value=0, max_value=100),  # starts before the newcomer arrives
)
@settings(max_examples=100, deadline=None)
def test_a_newcomer_waits_at_most_one_turn_of_each_ready_account(others: int, before: int) -> None:
    queue = FairQueue()
    for k in range(others):
        for i in range(200):
            queue.push(f"o{k}-{i}", f"O{k}", 0.0)
    for _ in range(before):
        queue.pop(0.0)
    queue.push("new", "N", 0.0)
    ahead = 0
    while queue.pop(0.0).job_id != "new":
        ahead += 1
    assert ahead <= others


# --- skipping an account's turn, and the headroom ------------------------------------------


def test_a_skipped_account_keeps_its_place_and_its_turn() -> None:
    queue = FairQueue()
    for i in range(3):
        queue.push(f"a{i}", "A", 0.0)
    queue.push("b0", "B", 0.0)
    assert queue.pop(0.0).job_id == "a0"
    # A's turn is passed over: B's job starts, and A has not used a turn for it.
    assert queue.peek(0.0, skip=lambda account: account == "A") == queue.pop(
        0.0, skip=lambda account: account == "A"
    )
    assert queue.peek(0.0, skip=lambda account: True) is None
    with pytest.raises(IndexError):
        queue.pop(0.0, skip=lambda account: True)
    assert drain(queue) == ["a1", "a2"]  # nothing lost while skipped


def test_the_headroom_is_kept_for_an_account_holding_no_slot_while_it_is_active() -> None:
    headroom = Headroom(slots=1, window=10.0)
    for _ in range(3):
        headroom.took("flood")
    # Alone, the flooder may take the last free slot: nobody else is around.
    assert headroom.may_take("flood", free=1, now=0.0)
    headroom.queued("quiet", now=1.0)  # a quiet tenant's job arrives
    headroom.took("quiet")
    assert headroom.may_take("flood", free=1, now=1.0)  # it holds one: nothing kept for it
    headroom.gave_back("quiet", now=2.0)  # its job ended; it holds none and was active
    assert not headroom.may_take("flood", free=1, now=2.0)  # the last slot is kept
    assert headroom.may_take("flood", free=2, now=2.0)  # beyond the headroom: taken
    assert headroom.may_take("quiet", free=1, now=2.0)  # the quiet tenant takes it at once
    assert headroom.may_take("other", free=1, now=2.0)  # as does any account holding none
    assert headroom.wake_at(2.0) == 12.0
    assert headroom.may_take("flood", free=1, now=12.5)  # the quiet tenant went quiet
    assert headroom.wake_at(12.5) is None


def test_one_slot_is_kept_for_each_quiet_account_up_to_the_headroom() -> None:
    headroom = Headroom(slots=3, window=10.0)
    for _ in range(5):
        headroom.took("flood")
    headroom.queued("q1", now=0.0)  # one quiet account active lately, holding no slot
    assert not headroom.may_take("flood", free=1, now=1.0)  # its one slot is kept
    assert headroom.may_take("flood", free=2, now=1.0)  # a second free slot is not
    for quiet in ("q2", "q3", "q4"):
        headroom.queued(quiet, now=1.0)
    # Four quiet accounts, headroom 3: three slots kept, never more.
    assert not headroom.may_take("flood", free=3, now=2.0)
    assert headroom.may_take("flood", free=4, now=2.0)
    headroom.took("q1")  # q1's job started: it holds a slot, so one fewer is kept for it
    assert headroom.may_take("flood", free=4, now=2.0)
    assert not headroom.may_take("flood", free=3, now=2.0)  # q2, q3, q4 still hold none
    for quiet in ("q2", "q3"):
        headroom.took(quiet)
    assert headroom.may_take("flood", free=2, now=2.0)  # only q4's slot is kept now
    assert not headroom.may_take("flood", free=1, now=2.0)


def test_accounts_that_all_hold_slots_keep_no_headroom_from_each_other() -> None:
    headroom = Headroom(slots=1, window=10.0)
    for account in ("A", "B"):
        headroom.queued(account, now=0.0)
        headroom.took(account)
    assert headroom.may_take("A", free=1, now=1.0) and headroom.may_take("B", free=1, now=1.0)
    assert Headroom(slots=0, window=10.0).may_take("A", free=1, now=0.0)


def test_headroom_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="slots"):
        Headroom(slots=-1, window=1.0)
    with pytest.raises(ValueError, match="window"):
        Headroom(slots=1, window=math.inf)


def test_an_account_with_a_job_queued_gets_no_headroom_the_round_robin_serves_it() -> None:
    headroom, queue = Headroom(slots=1, window=10.0), FairQueue()
    headroom.took("A")
    headroom.queued("B", now=0.0)
    queue.push("b1", "B", 0.0)
    assert headroom.may_take("A", free=1, now=1.0, queued=queue.queued)  # B is in the round
    queue.discard("b1")
    assert not queue.queued("B")
    assert not headroom.may_take("A", free=1, now=1.0, queued=queue.queued)
