"""Retry, rate limit, error classification and the decision after a failed attempt: pure
policies (the circuit breaker is ``runtime.circuit``'s, re-exported here).

Theory of operation
-------------------
Nothing here does I/O, reads a clock or touches the global ``random`` module. Time
comes in as ``now`` (seconds on any monotonic clock the caller owns) and randomness as
a ``random.Random`` the caller seeded, so a run can be replayed exactly and unit tests
never sleep. The caller (a ``VendorProcessor``) owns the sleeping and the calling:

    policy = RetryPolicy()                          # data, built from jobline.toml
    if not breaker.allow(now):                      # circuit open: fail over
        ...
    await asyncio.sleep(bucket.reserve(now))        # rate limit
    try:
        await vendor.submit(...)
    except Exception as exc:
        breaker.record_failure(clock())
        if classify(exc) is ErrorClass.PERMANENT or policy.exhausted(attempt):
            ...                                     # fail over, or fail and refund
        not_before = clock() + policy.next_delay(attempt, rng, getattr(exc, "retry_after", None))
    else:
        breaker.record_success(clock())

What then happens to the job is one pure function of values, ``after_failure``: retry
here after a backoff, fail over to the next vendor of the route, wait for the circuit,
fail, or expire (its table is in the function's docstring and in the unit tests).

``RetryPolicy`` and ``CircuitPolicy`` are frozen values. ``CircuitBreaker`` and
``TokenBucket`` are small mutable objects, one per vendor, owned by one actor (they
are not thread-safe and need not be: an actor runs one coroutine at a time between
awaits, and none of their methods awaits).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from runtime.circuit import (
    CIRCUIT_TRANSITIONS,
    CircuitBreaker,
    CircuitEvent,
    CircuitPolicy,
    CircuitState,
    require,
)
from runtime.errors import VendorPermanentError, VendorRefused, VendorTransientError

__all__ = [
    "CIRCUIT_TRANSITIONS",
    "CircuitBreaker",
    "CircuitEvent",
    "CircuitPolicy",
    "CircuitState",
    "Decision",
    "ErrorClass",
    "Failure",
    "Next",
    "RetryPolicy",
    "TokenBucket",
    "after_failure",
    "classify",
    "classify_http_status",
    "when_circuit_refuses",
]


# --- retry / backoff ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, and a budget of attempts per vendor.

    ``attempt`` counts attempts already made on one vendor, from 1: after the first
    attempt failed, ``next_delay(1, rng)`` is the wait before the second. The ceiling
    of attempt ``n`` is ``min(cap, base * factor ** (n - 1))``; the delay is drawn
    uniformly below it ("full jitter", so retries of many jobs spread out instead of
    arriving together).
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    max_attempts: int = 5

    def __post_init__(self) -> None:
        require(
            math.isfinite(self.base) and self.base >= 0,
            f"RetryPolicy.base must be a finite number >= 0, got {self.base!r}",
        )
        require(
            math.isfinite(self.factor) and self.factor >= 1,
            f"RetryPolicy.factor must be a finite number >= 1, got {self.factor!r}",
        )
        require(
            math.isfinite(self.cap) and self.cap >= self.base,
            f"RetryPolicy.cap must be a finite number >= base ({self.base!r}), got {self.cap!r}",
        )
        require(
            self.max_attempts >= 1,
            f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts!r}",
        )

    def ceiling(self, attempt: int) -> float:
        """The largest backoff after ``attempt`` failed attempts (before Retry-After)."""
        require(attempt >= 1, f"attempt must be >= 1, got {attempt!r}")
        try:
            growth = self.factor ** (attempt - 1)
        except OverflowError:  # a float power past 1e308: far beyond any cap
            return self.cap
        return min(self.cap, self.base * growth)

    def next_delay(
        self, attempt: int, rng: random.Random, retry_after: float | None = None
    ) -> float:
        """Seconds to wait after ``attempt`` failed attempts.

        Without ``retry_after`` this is full jitter: uniform in ``[0, ceiling]``. With
        it (the vendor's ``Retry-After``, in seconds) the delay is uniform in
        ``[retry_after, max(retry_after, ceiling)]``: never sooner than the vendor
        asked, never above ``cap`` unless the vendor itself asked for longer, and
        still spread out so that every job a 429 hit does not come back at the same
        instant. One draw from ``rng`` either way, so a seeded run replays exactly.
        """
        ceiling = self.ceiling(attempt)
        floor = 0.0
        if retry_after is not None:
            require(
                math.isfinite(retry_after) and retry_after >= 0,
                f"retry_after must be a finite number of seconds >= 0, got {retry_after!r}",
            )
            floor = retry_after
        return rng.uniform(floor, max(floor, ceiling))

    def attempts_left(self, attempt: int) -> int:
        """Attempts still allowed on this vendor after ``attempt`` were made."""
        require(attempt >= 0, f"attempt must be >= 0, got {attempt!r}")
        return max(0, self.max_attempts - attempt)

    def exhausted(self, attempt: int) -> bool:
        """True when ``attempt`` attempts spent this vendor's budget: fail over."""
        return self.attempts_left(attempt) == 0


# --- rate limit -----------------------------------------------------------------------

# Float slack, in tokens, so that waiting exactly delay_until_available() always suffices.
_TOKEN_EPSILON = 1e-9


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``.

    It starts full, at the first ``now`` it is given. ``rate`` of ``None`` or
    ``<= 0`` means unlimited: every acquire succeeds at once. ``burst`` defaults to
    one second's worth of tokens, and at least 1.

    Two ways to wait: ``delay_until_available`` + ``try_acquire`` (check, sleep, try
    again: fine for one waiter), or ``reserve``, which takes the tokens now, possibly
    going into debt, and returns how long to sleep before using them; concurrent
    waiters then line up one behind the other without retrying.
    """

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        self.unlimited = rate is None or rate <= 0
        self.rate = 0.0 if rate is None or rate <= 0 else float(rate)
        require(math.isfinite(self.rate), f"TokenBucket.rate must be finite or None, got {rate!r}")
        if burst is None:
            burst = max(1.0, self.rate)
        require(
            math.isfinite(burst) and burst > 0,
            f"TokenBucket.burst must be a finite number > 0, got {burst!r}",
        )
        self.burst = float(burst)
        self._tokens = self.burst
        self._updated_at: float | None = None

    def __repr__(self) -> str:
        if self.unlimited:
            return "TokenBucket(unlimited)"
        return f"TokenBucket(rate={self.rate!r}, burst={self.burst!r})"

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (negative while ``reserve`` debt is unpaid)."""
        self._refill(now)
        return self._tokens

    def try_acquire(self, now: float, n: float = 1) -> bool:
        """Take ``n`` tokens if they are there; never blocks, never goes into debt."""
        self._check(n)
        if self.unlimited:
            return True
        self._refill(now)
        if self._tokens + _TOKEN_EPSILON < n:
            return False
        self._tokens = max(0.0, self._tokens - n)
        return True

    def delay_until_available(self, now: float, n: float = 1) -> float:
        """Seconds until ``try_acquire(now + delay, n)`` succeeds (0 if it would now)."""
        self._check(n)
        if self.unlimited:
            return 0.0
        self._refill(now)
        missing = n - self._tokens
        return 0.0 if missing <= _TOKEN_EPSILON else missing / self.rate

    def reserve(self, now: float, n: float = 1) -> float:
        """Take ``n`` tokens now, into debt if need be; returns the seconds to wait."""
        delay = self.delay_until_available(now, n)
        if not self.unlimited:
            self._tokens -= n
        return delay

    def _check(self, n: float) -> None:
        require(math.isfinite(n) and n > 0, f"n must be a finite number > 0, got {n!r}")
        require(
            self.unlimited or n <= self.burst,
            f"n={n!r} exceeds the bucket's burst of {self.burst!r}: it could never be granted",
        )

    def _refill(self, now: float) -> None:
        if self._updated_at is None:
            self._updated_at = now
            return
        elapsed = now - self._updated_at
        if elapsed > 0:  # a clock that steps back adds nothing (and takes nothing)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._updated_at = now


# --- error classification -------------------------------------------------------------


class ErrorClass(enum.StrEnum):
    TRANSIENT = "transient"  # retry with backoff on this vendor, then fail over
    VENDOR_WIDE = "vendor_wide"  # this vendor serves nobody now: fail over, open its circuit
    PERMANENT = "permanent"  # retrying cannot help: fail the job and refund


# asyncio.TimeoutError is TimeoutError since 3.11, and TimeoutError and ConnectionError
# are OSErrors; they are listed for the reader.
_TRANSIENT_LOW_LEVEL: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError, OSError)


def classify(exc: BaseException) -> ErrorClass:
    """Is ``exc`` worth retrying, and where?

    Transient: ``VendorTransientError`` and the network-shaped built-ins
    (``TimeoutError``/``asyncio.TimeoutError``, ``ConnectionError``, ``OSError``).
    Vendor-wide: ``VendorRefused`` (the account is refused, locked or out of balance, the
    model is gone): permanent for that vendor, not for the job, which another vendor may
    serve. Permanent: ``VendorPermanentError`` and **everything else**. An exception jobline
    did not anticipate is most likely a bug (a ``KeyError`` in an adapter, a
    changed response shape); retrying it would burn five attempts per vendor on
    every route and delay the refund, and it would never succeed. Failing it at once
    refunds the client and puts the error in the dead-letter queue, where it can be
    fixed and re-driven.

    An exception group is transient only if every exception in it is (and vendor-wide
    if every one is vendor-wide or transient, one at least vendor-wide). Callers must
    not classify ``asyncio.CancelledError``: cancellation is not a vendor failure
    (here it would come out permanent) and must be re-raised.
    """
    if isinstance(exc, BaseExceptionGroup):
        classes = {classify(leaf) for leaf in exc.exceptions}
        if classes == {ErrorClass.TRANSIENT}:
            return ErrorClass.TRANSIENT
        if ErrorClass.PERMANENT not in classes:
            return ErrorClass.VENDOR_WIDE
        return ErrorClass.PERMANENT
    if isinstance(exc, VendorTransientError):
        return ErrorClass.TRANSIENT
    if isinstance(exc, VendorRefused):
        return ErrorClass.VENDOR_WIDE
    if isinstance(exc, VendorPermanentError):
        return ErrorClass.PERMANENT
    if isinstance(exc, _TRANSIENT_LOW_LEVEL):
        return ErrorClass.TRANSIENT
    return ErrorClass.PERMANENT


_TRANSIENT_4XX = frozenset(
    {
        408,  # Request Timeout
        425,  # Too Early
        429,  # Too Many Requests
    }
)


def classify_http_status(status: int) -> ErrorClass:
    """The class of an HTTP error status: 408, 425, 429 and 5xx are transient.

    Every other 4xx is permanent (bad input, bad key, unknown model). A status
    below 400 is not an error and raises ``ValueError``.
    """
    require(400 <= status <= 599, f"HTTP status {status!r} is not an error status (400-599)")
    if status >= 500 or status in _TRANSIENT_4XX:
        return ErrorClass.TRANSIENT
    return ErrorClass.PERMANENT


# --- what happens to a job next -------------------------------------------------------


class Next(enum.StrEnum):
    RETRY = "retry"  # on this vendor again, not before ``Decision.not_before``
    FAIL_OVER = "fail_over"  # to the next vendor of the route, now
    WAIT = "wait"  # queued on this vendor until its circuit lets a probe through
    FAIL = "fail"  # the error is permanent for this job: refund, dead letter
    ROUTE_SPENT = "route_spent"  # no vendor of the route is left to try: refund, dead letter
    EXPIRE = "expire"  # the deadline comes before the next retry: refund, dead letter


@dataclass(frozen=True, slots=True)
class Failure:
    """What is known when an attempt failed, as plain values."""

    error_class: ErrorClass
    retry_after: float | None  # seconds the vendor asked to wait (Retry-After), if it did
    vendor_attempts: int  # attempts made on this vendor, the failed one included
    circuit_open: bool  # the vendor's circuit, after this failure was recorded
    has_next_vendor: bool  # the route has a vendor after this one
    now: float
    deadline: float  # the job's whole deadline
    # When the vendor's circuit next lets a call through (a probe), if it is not closed.
    probe_at: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    next: Next
    not_before: float | None = None  # RETRY, WAIT: the earliest time of the next attempt


def after_failure(failure: Failure, policy: RetryPolicy, rng: random.Random) -> Decision:
    """What happens to a job whose attempt failed, first matching row wins:

    ==========================================================  ===========
    the error is permanent                                      FAIL
    the error is vendor-wide and a next vendor exists           FAIL_OVER
    circuit closed, attempts left here, the backoff ends
    before the deadline, and not (Retry-After > cap and a
    next vendor exists)                                         RETRY
    a next vendor exists                                        FAIL_OVER
    circuit open (no vendor left): its probe comes before
    the deadline                                                WAIT
    circuit open (no vendor left), the probe comes too late     EXPIRE
    the backoff would end at or after the deadline              EXPIRE
    otherwise (attempts spent, circuit closed, no vendor left)  ROUTE_SPENT
    ==========================================================  ===========

    WAIT: the job stays queued on this vendor until ``not_before``, the circuit's next
    probe (a vendor-wide refusal opens the circuit first, so the job waits out the
    refusal instead of failing; an outage of the only vendor is waited out too). The
    backoff is ``policy.next_delay`` (one draw from ``rng``, made only when the circuit
    is closed and attempts are left, so a seeded run replays exactly). A vendor asking
    for a wait beyond ``policy.cap`` is down for a while: the next vendor is preferred.
    """
    if failure.error_class is ErrorClass.PERMANENT:
        return Decision(Next.FAIL)
    if failure.error_class is ErrorClass.VENDOR_WIDE and failure.has_next_vendor:
        # The vendor refuses everyone (account locked, model gone): the next vendor of
        # the route may serve the job at once.
        return Decision(Next.FAIL_OVER)
    retry_at: float | None = None
    retry_here = failure.error_class is ErrorClass.TRANSIENT and not failure.circuit_open
    if retry_here and not policy.exhausted(failure.vendor_attempts):
        delay = policy.next_delay(failure.vendor_attempts, rng, failure.retry_after)
        retry_at = failure.now + delay
        long_wait = failure.retry_after is not None and failure.retry_after > policy.cap
        if retry_at < failure.deadline and not (long_wait and failure.has_next_vendor):
            return Decision(Next.RETRY, retry_at)
    if failure.has_next_vendor:
        return Decision(Next.FAIL_OVER)
    if failure.circuit_open and failure.probe_at is not None:
        if failure.probe_at < failure.deadline:
            return Decision(Next.WAIT, max(failure.probe_at, failure.now))
        return Decision(Next.EXPIRE)
    if retry_at is not None:  # the backoff ends too late
        return Decision(Next.EXPIRE)
    return Decision(Next.ROUTE_SPENT)


def when_circuit_refuses(has_next_vendor: bool) -> Next:
    """A queued job whose vendor's circuit refuses a call: FAIL_OVER if the route has a
    next vendor, else WAIT on this one until the circuit lets a probe through."""
    return Next.FAIL_OVER if has_next_vendor else Next.WAIT
