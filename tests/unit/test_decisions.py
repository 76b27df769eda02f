"""What happens to a job after a failed attempt: ``after_failure``, row by row."""

from __future__ import annotations

import dataclasses
import random

import pytest

from runtime.policies import (
    Decision,
    ErrorClass,
    Failure,
    Next,
    RetryPolicy,
    after_failure,
    when_circuit_refuses,
)

POLICY = RetryPolicy(base=1.0, factor=2.0, cap=60.0, max_attempts=5)
NOW = 1_000.0
T, P, V = ErrorClass.TRANSIENT, ErrorClass.PERMANENT, ErrorClass.VENDOR_WIDE
PROBE = 15.0  # an open circuit's next probe, seconds from now

# (error class, Retry-After, attempts here, circuit open, next vendor, seconds to deadline)
#   -> what happens next. An open circuit probes PROBE seconds from now.
TABLE: list[tuple[ErrorClass, float | None, int, bool, bool, float, Next]] = [
    # Permanent: fail at once, whatever else holds.
    (P, None, 1, False, True, 600, Next.FAIL),
    (P, None, 5, True, False, 600, Next.FAIL),
    (P, 5.0, 1, False, False, 0.5, Next.FAIL),
    # Transient, circuit closed, attempts left: retry here while the backoff fits.
    (T, None, 1, False, True, 600, Next.RETRY),
    (T, None, 1, False, False, 600, Next.RETRY),
    (T, None, 4, False, True, 600, Next.RETRY),
    (T, 30.0, 1, False, True, 600, Next.RETRY),  # Retry-After within the cap
    (T, 60.0, 1, False, True, 600, Next.RETRY),  # exactly the cap is not "beyond"
    # ... the vendor asks for a wait beyond the cap: the next vendor is preferred ...
    (T, 61.0, 1, False, True, 600, Next.FAIL_OVER),
    (T, 61.0, 1, False, False, 600, Next.RETRY),  # ... when there is one
    # ... the backoff ends at or after the deadline.
    (T, 5.0, 1, False, True, 4.0, Next.FAIL_OVER),
    (T, 5.0, 1, False, False, 4.0, Next.EXPIRE),
    (T, 5.0, 1, False, False, 5.0, Next.EXPIRE),  # at the deadline is too late
    # Attempts spent here.
    (T, None, 5, False, True, 600, Next.FAIL_OVER),
    (T, None, 5, False, False, 600, Next.ROUTE_SPENT),
    (T, None, 9, False, False, 600, Next.ROUTE_SPENT),
    # Circuit open: no retry here; with no vendor left, wait for its probe (field case 3:
    # an outage of the only vendor failed jobs 1.5 s into a 900 s deadline) ...
    (T, None, 1, True, True, 600, Next.FAIL_OVER),
    (T, None, 1, True, False, 600, Next.WAIT),
    (T, None, 5, True, False, 600, Next.WAIT),  # attempts spent: the probe decides
    # ... unless the probe comes at or after the deadline.
    (T, 5.0, 1, True, False, 0.5, Next.EXPIRE),
    (T, None, 1, True, False, PROBE, Next.EXPIRE),
    # Vendor-wide (account locked, billing, key refused, model gone), field case 2: the
    # next vendor at once; with none, wait out the circuit the refusal opened.
    (V, None, 1, True, True, 600, Next.FAIL_OVER),
    (V, None, 1, False, True, 600, Next.FAIL_OVER),
    (V, None, 1, True, False, 600, Next.WAIT),
    (V, None, 1, True, False, 10.0, Next.EXPIRE),
]


def facts(
    error: ErrorClass,
    retry_after: float | None,
    attempts: int,
    circuit_open: bool,
    next_vendor: bool,
    to_deadline: float,
) -> Failure:
    probe = NOW + PROBE if circuit_open else None
    return Failure(
        error, retry_after, attempts, circuit_open, next_vendor, NOW, NOW + to_deadline, probe
    )


@pytest.mark.parametrize(("error", "after", "attempts", "open_", "next_", "left", "want"), TABLE)
def test_every_row(
    error: ErrorClass,
    after: float | None,
    attempts: int,
    open_: bool,
    next_: bool,
    left: float,
    want: Next,
) -> None:
    failure = facts(error, after, attempts, open_, next_, left)
    decision = after_failure(failure, POLICY, random.Random(42))
    assert decision.next is want
    if want is Next.RETRY:
        assert decision.not_before is not None
        floor = NOW + (after or 0.0)
        ceiling = NOW + max(after or 0.0, POLICY.ceiling(attempts))
        assert floor <= decision.not_before <= ceiling
        assert decision.not_before < NOW + left
    elif want is Next.WAIT:
        assert decision.not_before == NOW + PROBE  # the circuit's next probe
    else:
        assert decision.not_before is None


def test_a_vendor_wide_refusal_is_never_retried_on_the_same_vendor() -> None:
    """Even with attempts left and the circuit (somehow) closed, a refusal is not a
    backoff: the account stays locked for hours."""
    for next_vendor in (True, False):
        decision = after_failure(
            facts(V, None, 1, False, next_vendor, 600), POLICY, random.Random(1)
        )
        assert decision.next is not Next.RETRY


def test_the_backoff_is_the_policys_draw_so_a_seed_replays_it() -> None:
    failure = facts(T, 2.0, 3, False, True, 600)
    decision = after_failure(failure, POLICY, random.Random(7))
    assert decision == Decision(Next.RETRY, NOW + POLICY.next_delay(3, random.Random(7), 2.0))
    assert after_failure(failure, POLICY, random.Random(7)) == decision


def test_no_draw_is_made_when_no_retry_is_possible() -> None:
    """A decision that cannot retry here leaves the generator alone (the replay stays
    aligned however many jobs fail over)."""
    for failure in (facts(P, None, 1, False, True, 600), facts(T, None, 1, True, True, 600)):
        rng = random.Random(3)
        after_failure(failure, POLICY, rng)
        assert rng.random() == random.Random(3).random()


def test_every_outcome_of_the_table_is_reachable() -> None:
    assert {row[-1] for row in TABLE} == set(Next)


@pytest.mark.parametrize(("next_vendor", "want"), [(True, Next.FAIL_OVER), (False, Next.WAIT)])
def test_a_queued_job_refused_by_the_circuit(next_vendor: bool, want: Next) -> None:
    assert when_circuit_refuses(next_vendor) is want


def test_failure_is_a_plain_value() -> None:
    failure = facts(T, None, 1, False, True, 600)
    assert dataclasses.replace(failure) == failure
    with pytest.raises(dataclasses.FrozenInstanceError):
        failure.now = 0.0  # type: ignore[misc]
