"""Unit tests for runtime.policies: seeded random, explicit `now`, no sleeping."""

from __future__ import annotations

import asyncio
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import (
    JoblineError,
    LedgerUnavailable,
    VendorAuthError,
    VendorBillingError,
    VendorError,
    VendorInputRejected,
    VendorModelGone,
    VendorPermanentError,
    VendorRateLimited,
    VendorRefused,
    VendorTaskFailed,
    VendorTimeout,
    VendorTransientError,
    VendorUnavailable,
)
from runtime.policies import (
    CIRCUIT_TRANSITIONS,
    CircuitBreaker,
    CircuitPolicy,
    CircuitState,
    ErrorClass,
    RetryPolicy,
    TokenBucket,
    classify,
    classify_http_status,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


# --- RetryPolicy ----------------------------------------------------------------------


def test_defaults_match_the_design() -> None:
    assert RetryPolicy() == RetryPolicy(base=1.0, factor=2.0, cap=60.0, max_attempts=5)


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (50, 60.0)],
)
def test_ceiling_grows_exponentially_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert RetryPolicy().ceiling(attempt) == ceiling


def test_ceiling_survives_huge_attempt_numbers() -> None:
    assert RetryPolicy().ceiling(100_000) == 60.0


@pytest.mark.parametrize("attempt", range(1, 12))
def test_every_delay_is_within_zero_and_the_ceiling(attempt: int) -> None:
    policy = RetryPolicy()
    rng = random.Random(attempt)
    delays = [policy.next_delay(attempt, rng) for _ in range(500)]
    assert all(0.0 <= d <= policy.ceiling(attempt) for d in delays)
    assert max(delays) <= policy.cap


@pytest.mark.parametrize("attempt", [1, 3, 5, 8])
def test_full_jitter_is_uniform_below_the_ceiling(attempt: int) -> None:
    policy = RetryPolicy()
    rng = random.Random(1234)
    delays = [policy.next_delay(attempt, rng) for _ in range(20_000)]
    ceiling = policy.ceiling(attempt)
    assert statistics.fmean(delays) == pytest.approx(ceiling / 2, rel=0.02)
    # spread over the whole range, not clustered at one end
    assert min(delays) < 0.01 * ceiling
    assert max(delays) > 0.99 * ceiling
    below_quarter = sum(d < ceiling / 4 for d in delays) / len(delays)
    assert below_quarter == pytest.approx(0.25, abs=0.02)


def test_same_seed_same_sequence() -> None:
    policy = RetryPolicy()

    def run(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [policy.next_delay(a, rng, 3.0 if a % 2 else None) for a in range(1, 10)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy()
    rng = random.Random(0)
    delays = [policy.next_delay(6, rng, retry_after=10.0) for _ in range(2_000)]
    assert min(delays) >= 10.0
    assert max(delays) <= policy.ceiling(6) == 32.0
    # still jittered above the floor, so jobs hit by one 429 do not return together
    assert len(set(delays)) == len(delays)


def test_retry_after_above_the_cap_is_honoured_exactly() -> None:
    policy = RetryPolicy(cap=60.0)
    rng = random.Random(0)
    assert policy.next_delay(1, rng, retry_after=120.0) == 120.0
    assert policy.next_delay(10, rng, retry_after=120.0) == 120.0


def test_retry_after_consumes_one_draw_like_plain_jitter() -> None:
    policy = RetryPolicy()
    a, b = random.Random(5), random.Random(5)
    policy.next_delay(1, a, retry_after=500.0)
    policy.next_delay(1, b)
    assert a.random() == b.random()


def test_zero_retry_after_is_plain_full_jitter() -> None:
    policy = RetryPolicy()
    assert policy.next_delay(3, random.Random(9), 0.0) == policy.next_delay(3, random.Random(9))


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
    retry_after=st.none() | st.floats(min_value=0, max_value=1e6),
    base=st.floats(min_value=0, max_value=10),
    factor=st.floats(min_value=1, max_value=10),
    extra_cap=st.floats(min_value=0, max_value=1_000),
)
def test_delay_is_always_between_retry_after_and_the_cap(
    attempt: int,
    seed: int,
    retry_after: float | None,
    base: float,
    factor: float,
    extra_cap: float,
) -> None:
    policy = RetryPolicy(base=base, factor=factor, cap=base + extra_cap)
    delay = policy.next_delay(attempt, random.Random(seed), retry_after)
    floor = retry_after or 0.0
    assert floor <= delay <= max(policy.cap, floor)


def test_attempt_budget() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.attempts_left(a) for a in range(5)] == [3, 2, 1, 0, 0]
    assert [policy.exhausted(a) for a in range(5)] == [False, False, False, True, True]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": -1.0}, "base"),
        ({"base": float("nan")}, "base"),
        ({"factor": 0.5}, "factor"),
        ({"cap": float("inf")}, "cap"),
        ({"base": 10.0, "cap": 5.0}, "cap"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_retry_policy_is_refused(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"RetryPolicy.{field}"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_bad_retry_arguments_are_refused() -> None:
    policy, rng = RetryPolicy(), random.Random(0)
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        policy.next_delay(0, rng)
    with pytest.raises(ValueError, match="retry_after"):
        policy.next_delay(1, rng, retry_after=-1.0)
    with pytest.raises(ValueError, match="retry_after"):
        policy.next_delay(1, rng, retry_after=float("nan"))
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        policy.attempts_left(-1)


def test_retry_policy_is_a_frozen_value() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.base = 2.0  # type: ignore[misc]
    assert hash(policy) == hash(RetryPolicy())


# --- CircuitBreaker -------------------------------------------------------------------


def breaker(**kwargs: float) -> CircuitBreaker:
    """A breaker whose failure-rate trigger is off unless a test turns it on."""
    defaults: dict[str, float] = {
        "failure_threshold": 3,
        "min_calls": 1_000,
        "window": 60.0,
        "cooldown": 30.0,
    }
    return CircuitBreaker(CircuitPolicy(**(defaults | kwargs)))  # type: ignore[arg-type]


def trip(cb: CircuitBreaker, now: float) -> None:
    for _ in range(cb.policy.failure_threshold):
        cb.record_failure(now)
    assert cb.state(now) is OPEN


def test_transition_table_is_the_documented_machine() -> None:
    moves = {
        (before.value, event.value, after.value)
        for before, table in CIRCUIT_TRANSITIONS.items()
        for event, after in table.items()
    }
    assert moves == {
        ("closed", "tripped", "open"),
        ("open", "cooldown_elapsed", "half_open"),
        ("half_open", "probe_succeeded", "closed"),
        ("half_open", "probe_failed", "open"),
        ("closed", "refused", "open"),
        ("open", "refused", "open"),
        ("half_open", "refused", "open"),
    }


def test_a_refusal_opens_the_circuit_at_once_for_its_own_cooldown() -> None:
    """Field case 2: a locked account left the circuit closed while every job failed."""
    cb = breaker()  # cooldown 30
    cb.trip(100.0, 300.0)
    assert cb.state(100.0) is OPEN
    assert cb.probe_at(100.0) == 400.0
    assert cb.state(399.0) is OPEN and not cb.allow(399.0)
    assert cb.state(400.0) is HALF_OPEN and cb.allow(400.0)


def test_a_failed_probe_after_a_refusal_uses_the_usual_cooldown_unless_refused_again() -> None:
    cb = breaker()
    cb.trip(0.0, 300.0)
    assert cb.allow(300.0)  # the probe
    cb.record_failure(300.0)  # a transient failure: the usual 30 s
    assert cb.probe_at(300.0) == 330.0
    assert cb.allow(330.0)
    cb.trip(330.0, 300.0)  # refused again
    assert cb.probe_at(330.0) == 630.0


def test_a_refusal_never_shortens_an_open_period() -> None:
    cb = breaker()
    cb.trip(0.0, 300.0)
    cb.trip(10.0, 30.0)
    assert cb.probe_at(10.0) == 300.0


def test_a_closed_circuit_has_no_probe_time() -> None:
    assert breaker().probe_at(5.0) is None


def test_starts_closed_and_allows() -> None:
    cb = CircuitBreaker()
    assert cb.state(0.0) is CLOSED
    assert all(cb.allow(float(t)) for t in range(100))


def test_opens_after_n_consecutive_failures() -> None:
    cb = breaker(failure_threshold=3)
    cb.record_failure(1.0)
    cb.record_failure(2.0)
    assert cb.state(2.0) is CLOSED
    assert cb.allow(2.0)
    cb.record_failure(3.0)
    assert cb.state(3.0) is OPEN
    assert not cb.allow(3.0)


def test_failed_reads_count_against_a_closed_circuit_and_never_reopen_a_half_open_one() -> None:
    cb = breaker(failure_threshold=3, cooldown=10.0)
    cb.record_read_failure(1.0)
    cb.record_failure(2.0)
    assert cb.state(2.0) is CLOSED
    cb.record_read_failure(3.0)  # the third failure in a row, a read
    assert cb.state(3.0) is OPEN
    cb.record_read_failure(5.0)  # open: left to the cooldown
    assert cb.state(13.0) is HALF_OPEN
    cb.record_read_failure(13.5)  # half-open: only a probe decides
    assert cb.state(13.5) is HALF_OPEN
    assert cb.allow(13.5)
    cb.record_success(14.0)
    assert cb.state(14.0) is CLOSED


def test_a_success_resets_the_consecutive_count() -> None:
    cb = breaker(failure_threshold=3)
    for t in range(10):
        cb.record_failure(t)
        cb.record_failure(t + 0.5)
        cb.record_success(t + 0.9)
    assert cb.state(10.0) is CLOSED


def test_opens_on_failure_rate_once_min_calls_are_in_the_window() -> None:
    cb = breaker(failure_threshold=100, failure_rate=0.5, min_calls=6)
    # fail, ok, fail, ok, fail: 3/5 failed, but only 5 calls
    for t in range(5):
        (cb.record_failure if t % 2 == 0 else cb.record_success)(float(t))
    assert cb.state(4.0) is CLOSED
    cb.record_failure(5.0)  # 4/6 with 6 calls in the window
    assert cb.state(5.0) is OPEN


def test_failure_rate_at_the_threshold_opens() -> None:
    cb = breaker(failure_threshold=100, failure_rate=0.5, min_calls=4)
    cb.record_success(0.0)
    cb.record_failure(1.0)
    cb.record_success(2.0)
    assert cb.state(2.0) is CLOSED
    cb.record_failure(3.0)  # 2/4 = 0.5
    assert cb.state(3.0) is OPEN


def test_a_success_never_opens_the_circuit() -> None:
    cb = breaker(failure_threshold=100, failure_rate=0.5, min_calls=4)
    for t in range(3):
        cb.record_failure(float(t))
    cb.record_success(3.0)  # 3/4 failed, but the rate is judged when a failure arrives
    assert cb.state(3.0) is CLOSED


def test_failure_rate_below_threshold_stays_closed() -> None:
    cb = breaker(failure_threshold=100, failure_rate=0.5, min_calls=4)
    for t in range(100):
        (cb.record_failure if t % 4 == 0 else cb.record_success)(float(t) / 10)
    assert cb.state(10.0) is CLOSED


def test_old_failures_age_out_of_the_window() -> None:
    calls = [(0.0, True), (1.0, True), (30.0, False), (31.0, False), (32.0, False), (65.0, True)]

    def run(window: float) -> CircuitState:
        cb = breaker(failure_threshold=100, failure_rate=0.5, min_calls=4, window=window)
        for t, failed in calls:
            (cb.record_failure if failed else cb.record_success)(t)
        return cb.state(65.0)

    # at 65 s a 60 s window holds 3 successes and 1 failure (25 %) ...
    assert run(window=60.0) is CLOSED
    # ... where a longer window still holds the first two failures: 3/6 = 50 %
    assert run(window=100.0) is OPEN


def test_a_call_exactly_window_seconds_old_is_out() -> None:
    cb = breaker(failure_threshold=100, failure_rate=1.0, min_calls=2, window=10.0)
    cb.record_failure(0.0)
    cb.record_failure(10.0)  # the first one just left the window: 1 call
    assert cb.state(10.0) is CLOSED
    cb.record_failure(19.9)
    assert cb.state(19.9) is OPEN


def test_half_open_after_cooldown() -> None:
    cb = breaker(cooldown=30.0)
    trip(cb, 100.0)
    assert cb.delay_until_allowed(100.0) == 30.0
    assert cb.state(129.9) is OPEN
    assert not cb.allow(129.9)
    assert cb.delay_until_allowed(129.9) == pytest.approx(0.1)
    assert cb.state(130.0) is HALF_OPEN
    assert cb.delay_until_allowed(130.0) == 0.0


def test_probe_success_closes() -> None:
    cb = breaker()
    trip(cb, 0.0)
    assert cb.allow(30.0)
    cb.record_success(31.0)
    assert cb.state(31.0) is CLOSED
    assert cb.allow(31.0)


def test_closing_starts_with_a_clean_count() -> None:
    cb = breaker(failure_threshold=3)
    trip(cb, 0.0)
    assert cb.allow(30.0)
    cb.record_success(30.0)
    cb.record_failure(31.0)
    cb.record_failure(32.0)
    assert cb.state(32.0) is CLOSED


def test_probe_failure_reopens_with_a_new_cooldown() -> None:
    cb = breaker(cooldown=30.0)
    trip(cb, 0.0)
    assert cb.allow(40.0)
    cb.record_failure(45.0)
    assert cb.state(45.0) is OPEN
    assert not cb.allow(74.9)
    assert cb.state(75.0) is HALF_OPEN


@pytest.mark.parametrize("probes", [1, 2, 5])
def test_only_half_open_probes_are_allowed(probes: int) -> None:
    cb = breaker(half_open_probes=probes)
    trip(cb, 0.0)
    granted = [cb.allow(30.0 + i) for i in range(probes + 3)]
    assert granted == [True] * probes + [False] * 3
    assert cb.state(35.0) is HALF_OPEN


def test_lost_probes_are_replaced_after_a_cooldown() -> None:
    cb = breaker(cooldown=30.0)
    trip(cb, 0.0)
    assert cb.allow(30.0)  # this probe never reports back
    assert not cb.allow(59.9)
    assert cb.delay_until_allowed(59.9) == pytest.approx(0.1)
    assert cb.allow(60.0)
    assert not cb.allow(60.0)


def test_results_while_open_are_ignored() -> None:
    cb = breaker(cooldown=30.0)
    trip(cb, 0.0)
    cb.record_success(5.0)  # a call from before the circuit opened
    cb.record_failure(6.0)
    assert cb.state(6.0) is OPEN
    assert cb.state(30.0) is HALF_OPEN  # cooldown counted from the trip, not from 6.0


def test_open_turns_half_open_by_time_alone() -> None:
    cb = breaker(cooldown=30.0)
    trip(cb, 0.0)
    assert cb.state(1_000.0) is HALF_OPEN
    assert cb.allow(1_000.0)


def test_zero_cooldown_is_half_open_at_once() -> None:
    cb = breaker(cooldown=0.0)
    for _ in range(3):
        cb.record_failure(0.0)
    assert cb.state(0.0) is HALF_OPEN


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"failure_rate": 0.0}, "failure_rate"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"window": 0.0}, "window"),
        ({"min_calls": 0}, "min_calls"),
        ({"cooldown": -1.0}, "cooldown"),
        ({"half_open_probes": 0}, "half_open_probes"),
    ],
)
def test_bad_circuit_policy_is_refused(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"CircuitPolicy.{field}"):
        CircuitPolicy(**kwargs)  # type: ignore[arg-type]


@given(
    events=st.lists(
        st.tuples(st.floats(min_value=0, max_value=50), st.sampled_from(["allow", "ok", "fail"])),
        max_size=200,
    ),
    probes=st.integers(min_value=1, max_value=3),
)
def test_never_more_probes_out_than_allowed(events: list[tuple[float, str]], probes: int) -> None:
    """Whatever happens, between two results in half-open at most `probes` calls pass
    unless a cooldown has gone by (the lost-probe rule)."""
    cb = CircuitBreaker(
        CircuitPolicy(
            failure_threshold=2, min_calls=3, window=20, cooldown=10, half_open_probes=probes
        )
    )
    now = 0.0
    granted: list[float] = []
    for step, kind in events:
        now += step
        if kind == "allow":
            was_half_open = cb.state(now) is HALF_OPEN
            if cb.allow(now) and was_half_open:
                granted.append(now)
        else:
            (cb.record_success if kind == "ok" else cb.record_failure)(now)
            granted.clear()
        if cb.state(now) is OPEN:
            assert not cb.allow(now)
        recent = [t for t in granted if now - t < 10]
        assert len(recent) <= probes


# --- TokenBucket ----------------------------------------------------------------------


def test_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=5)
    assert [bucket.try_acquire(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.try_acquire(0.49)
    assert bucket.try_acquire(0.5)  # one token per 0.5 s
    assert not bucket.try_acquire(0.5)
    assert bucket.try_acquire(1.0)


def test_delay_until_available_is_exact() -> None:
    bucket = TokenBucket(rate=3.0, burst=2)
    assert bucket.delay_until_available(0.0) == 0.0
    assert bucket.try_acquire(0.0, 2)
    assert bucket.delay_until_available(0.0) == pytest.approx(1 / 3)
    assert bucket.delay_until_available(0.0, 2) == pytest.approx(2 / 3)
    assert bucket.delay_until_available(0.1) == pytest.approx(1 / 3 - 0.1)
    delay = bucket.delay_until_available(0.1)
    assert not bucket.try_acquire(0.1 + delay * 0.99)
    assert bucket.try_acquire(0.1 + delay)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3)
    assert bucket.try_acquire(0.0, 3)
    assert bucket.available(3_600.0) == 3.0
    assert [bucket.try_acquire(3_600.0) for _ in range(4)] == [True, True, True, False]


def test_default_burst_is_one_second_of_tokens() -> None:
    assert TokenBucket(rate=5.0).burst == 5.0
    assert TokenBucket(rate=0.2).burst == 1.0


@pytest.mark.parametrize("rate", [None, 0, -1.0])
def test_no_rate_means_unlimited(rate: float | None) -> None:
    bucket = TokenBucket(rate=rate)
    assert bucket.unlimited
    assert all(bucket.try_acquire(0.0) for _ in range(10_000))
    assert bucket.delay_until_available(0.0, 1_000) == 0.0
    assert bucket.reserve(0.0) == 0.0


def test_reserve_lines_waiters_up() -> None:
    bucket = TokenBucket(rate=2.0, burst=1)
    waits = [bucket.reserve(0.0) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert not bucket.try_acquire(1.0)  # still in debt
    assert bucket.delay_until_available(1.0) == pytest.approx(1.0)


def test_a_clock_stepping_back_adds_no_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.try_acquire(10.0)
    assert not bucket.try_acquire(5.0)
    assert not bucket.try_acquire(10.5)
    assert bucket.try_acquire(11.0)


def test_bad_bucket_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate=1.0, burst=0)
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=float("inf"))
    bucket = TokenBucket(rate=1.0, burst=2)
    with pytest.raises(ValueError, match="could never be granted"):
        bucket.try_acquire(0.0, 3)
    with pytest.raises(ValueError, match="n must be"):
        bucket.delay_until_available(0.0, 0)


@given(
    rate=st.floats(min_value=0.01, max_value=1_000),
    burst=st.floats(min_value=1, max_value=100),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=5), st.floats(min_value=0.01, max_value=1)),
        max_size=50,
    ),
)
def test_waiting_the_announced_delay_always_suffices(
    rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst)
    now = 0.0
    for step, fraction in steps:
        now += step
        n = fraction * burst
        delay = bucket.delay_until_available(now, n)
        assert delay >= 0.0
        if delay == 0.0:
            assert bucket.try_acquire(now, n)
        else:
            assert not bucket.try_acquire(now, n)
            now += delay
            assert bucket.try_acquire(now, n)
        assert bucket.available(now) <= burst


@given(
    rate=st.floats(min_value=0.1, max_value=100),
    burst=st.integers(min_value=1, max_value=20),
    duration=st.floats(min_value=0, max_value=100),
    ticks=st.integers(min_value=1, max_value=500),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, duration: float, ticks: int
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst)
    granted = 0
    for i in range(ticks + 1):
        now = duration * i / ticks
        while bucket.try_acquire(now):
            granted += 1
    assert granted <= burst + rate * duration + 1e-6


# --- classification -------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        VendorTransientError("v", "flaky"),
        VendorTimeout("v", "slow"),
        VendorRateLimited("v", "429", retry_after=3.0),
        VendorUnavailable("v", "503"),
        VendorTaskFailed("v", "gpu fell over"),
        TimeoutError(),
        asyncio.TimeoutError(),  # noqa: UP041  (the same class since 3.11; kept for the reader)
        ConnectionError(),
        ConnectionResetError(),
        ConnectionRefusedError(),
        BrokenPipeError(),
        OSError("network unreachable"),
        ExceptionGroup("all network", [TimeoutError(), VendorUnavailable("v", "502")]),
    ],
    ids=repr,
)
def test_transient_errors(exc: BaseException) -> None:
    assert classify(exc) is ErrorClass.TRANSIENT


@pytest.mark.parametrize(
    "exc",
    [
        VendorPermanentError("v", "no"),
        VendorInputRejected("v", "nsfw"),
        VendorError("v", "unspecified vendor trouble"),
        JoblineError("ours"),
        LedgerUnavailable("down"),
        KeyError("status"),
        ValueError("bad json"),
        TypeError(),
        RuntimeError(),
        asyncio.CancelledError(),
        ExceptionGroup("mixed", [TimeoutError(), KeyError("x")]),
    ],
    ids=repr,
)
def test_permanent_errors(exc: BaseException) -> None:
    assert classify(exc) is ErrorClass.PERMANENT


@pytest.mark.parametrize(
    "exc",
    [
        VendorRefused("v", "refused"),
        VendorAuthError("v", "401"),
        VendorBillingError("v", "403: User is locked. Reason: Exhausted balance"),
        VendorModelGone("v", "404"),
        ExceptionGroup("locked and slow", [VendorBillingError("v", "402"), TimeoutError()]),
    ],
    ids=repr,
)
def test_vendor_wide_errors(exc: BaseException) -> None:
    """Account-level refusals are the vendor's, not the job's (DESIGN §3.5): fail over."""
    assert classify(exc) is ErrorClass.VENDOR_WIDE


@pytest.mark.parametrize("status", [408, 425, 429, 500, 501, 502, 503, 504, 520, 599])
def test_transient_http_statuses(status: int) -> None:
    assert classify_http_status(status) is ErrorClass.TRANSIENT


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 405, 409, 410, 413, 415, 422, 451])
def test_permanent_http_statuses(status: int) -> None:
    assert classify_http_status(status) is ErrorClass.PERMANENT


@pytest.mark.parametrize("status", [100, 200, 204, 302, 399, 600, -1])
def test_non_error_statuses_are_refused(status: int) -> None:
    with pytest.raises(ValueError, match="not an error status"):
        classify_http_status(status)


def test_every_4xx_and_5xx_has_a_class() -> None:
    transient = {s for s in range(400, 600) if classify_http_status(s) is ErrorClass.TRANSIENT}
    assert transient == {408, 425, 429} | set(range(500, 600))
