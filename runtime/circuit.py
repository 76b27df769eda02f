"""A vendor's circuit breaker: a state machine in a table, on the caller's clock (pure).

``CircuitPolicy`` is a frozen value (built from ``[circuit]`` in jobline.toml);
``CircuitBreaker`` is a small mutable object, one per vendor, owned by one actor (not
thread-safe and need not be: an actor runs one coroutine at a time between awaits, and
none of its methods awaits). Time comes in as ``now``; nothing here reads a clock.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

__all__ = [
    "CIRCUIT_TRANSITIONS",
    "CircuitBreaker",
    "CircuitEvent",
    "CircuitPolicy",
    "CircuitState",
]


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``: a policy's constructor checks."""
    if not ok:
        raise ValueError(message)


class CircuitState(enum.StrEnum):
    CLOSED = "closed"  # calls flow; failures are counted
    OPEN = "open"  # calls are refused until the cooldown ends
    HALF_OPEN = "half_open"  # a few probe calls decide: close or open again


class CircuitEvent(enum.StrEnum):
    TRIPPED = "tripped"  # too many consecutive failures, or too high a failure rate
    COOLDOWN_ELAPSED = "cooldown_elapsed"  # open for `cooldown` seconds
    PROBE_SUCCEEDED = "probe_succeeded"
    PROBE_FAILED = "probe_failed"
    # The vendor refused the operator's account or the model (401, 402, 403 locked, 404):
    # open at once, for the longer cooldown the caller names (``trip``).
    REFUSED = "refused"


CIRCUIT_TRANSITIONS: dict[CircuitState, dict[CircuitEvent, CircuitState]] = {
    CircuitState.CLOSED: {
        CircuitEvent.TRIPPED: CircuitState.OPEN,
        CircuitEvent.REFUSED: CircuitState.OPEN,
    },
    CircuitState.OPEN: {
        CircuitEvent.COOLDOWN_ELAPSED: CircuitState.HALF_OPEN,
        CircuitEvent.REFUSED: CircuitState.OPEN,  # open again from now, for longer
    },
    CircuitState.HALF_OPEN: {
        CircuitEvent.PROBE_SUCCEEDED: CircuitState.CLOSED,
        CircuitEvent.PROBE_FAILED: CircuitState.OPEN,
        CircuitEvent.REFUSED: CircuitState.OPEN,
    },
}


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """When a vendor's circuit opens, and how it recovers.

    It opens after ``failure_threshold`` consecutive failures, or when the failures
    among the calls recorded in the last ``window`` seconds reach ``failure_rate``
    (a fraction in ``(0, 1]``; checked only once ``min_calls`` calls are in the
    window, so two failures out of three calls do not open it). Both are judged when
    a failure is recorded: a success never opens the circuit. After ``cooldown``
    seconds it lets ``half_open_probes`` probe calls through.
    """

    failure_threshold: int = 5
    failure_rate: float = 0.5
    window: float = 60.0
    min_calls: int = 10
    cooldown: float = 30.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        require(
            self.failure_threshold >= 1,
            f"CircuitPolicy.failure_threshold must be >= 1, got {self.failure_threshold!r}",
        )
        require(
            math.isfinite(self.failure_rate) and 0 < self.failure_rate <= 1,
            f"CircuitPolicy.failure_rate must be in (0, 1], got {self.failure_rate!r}",
        )
        require(
            math.isfinite(self.window) and self.window > 0,
            f"CircuitPolicy.window must be a finite number of seconds > 0, got {self.window!r}",
        )
        require(
            self.min_calls >= 1,
            f"CircuitPolicy.min_calls must be >= 1, got {self.min_calls!r}",
        )
        require(
            math.isfinite(self.cooldown) and self.cooldown >= 0,
            f"CircuitPolicy.cooldown must be a finite number of seconds >= 0, "
            f"got {self.cooldown!r}",
        )
        require(
            self.half_open_probes >= 1,
            f"CircuitPolicy.half_open_probes must be >= 1, got {self.half_open_probes!r}",
        )


class CircuitBreaker:
    """One vendor's circuit: the state machine in ``CIRCUIT_TRANSITIONS``.

    ::

        closed ──tripped──▶ open ──cooldown_elapsed──▶ half_open ──probe_succeeded──▶ closed
                             ▲                             │
                             └────────probe_failed─────────┘
        (refused: from any state to open, for the caller's longer cooldown)

    Every method takes ``now``; ``open`` becomes ``half_open`` by time alone, when
    the breaker is next asked. Entering any state starts it clean: no counted
    failures, no probes out, an empty window.

    Results that arrive while ``open`` are ignored: they belong to calls made
    before the circuit opened. In ``half_open`` the first result decides, whether or
    not it came from a probe. If every probe was handed out and none reported back
    within ``cooldown`` seconds (the caller was canceled, say), the probes count as
    lost and new ones are handed out, so a lost probe cannot shut a vendor out for
    good.
    """

    def __init__(self, policy: CircuitPolicy | None = None) -> None:
        self.policy = policy if policy is not None else CircuitPolicy()
        self._state = CircuitState.CLOSED
        self._entered_at = 0.0  # when the current state began (open: the cooldown start)
        self._consecutive_failures = 0
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed), closed only
        self._failures_in_window = 0
        self._probes_out = 0
        self._last_probe_at = 0.0
        self._open_for = self.policy.cooldown  # the cooldown of the current open period

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self._state.value}, policy={self.policy!r})"

    def state(self, now: float) -> CircuitState:
        """The state at ``now`` (an elapsed cooldown turns ``open`` into ``half_open``)."""
        if self._state is CircuitState.OPEN and now - self._entered_at >= self._open_for:
            self._move(CircuitEvent.COOLDOWN_ELAPSED, self._entered_at + self._open_for)
        return self._state

    def allow(self, now: float) -> bool:
        """May a call go to the vendor now? In ``half_open`` this hands out a probe."""
        state = self.state(now)
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        if self._probes_lost(now):
            self._probes_out = 0
        if self._probes_out < self.policy.half_open_probes:
            self._probes_out += 1
            self._last_probe_at = now
            return True
        return False

    def delay_until_allowed(self, now: float) -> float:
        """Seconds until ``allow`` can next return True (0 if it can now)."""
        state = self.state(now)
        if state is CircuitState.OPEN:
            return self._entered_at + self._open_for - now
        if state is CircuitState.HALF_OPEN and self._probes_out >= self.policy.half_open_probes:
            return max(0.0, self._last_probe_at + self.policy.cooldown - now)
        return 0.0

    def record_success(self, now: float) -> None:
        state = self.state(now)
        if state is CircuitState.CLOSED:
            self._consecutive_failures = 0
            self._remember(now, failed=False)
        elif state is CircuitState.HALF_OPEN:
            self._move(CircuitEvent.PROBE_SUCCEEDED, now)

    def record_failure(self, now: float) -> None:
        state = self.state(now)
        if state is CircuitState.CLOSED:
            self._consecutive_failures += 1
            self._remember(now, failed=True)
            if self._should_trip():
                self._move(CircuitEvent.TRIPPED, now)
        elif state is CircuitState.HALF_OPEN:
            self._move(CircuitEvent.PROBE_FAILED, now)

    def record_read_failure(self, now: float) -> None:
        """A read of a task's state failed (the vendor answered 5xx, or nothing in time):
        it counts against a closed circuit as a failed call does, so an outage is seen
        while every slot holds a running task and nothing is submitted. An open or
        half-open circuit is left to its probes (a failed read never reopens it)."""
        if self.state(now) is CircuitState.CLOSED:
            self.record_failure(now)

    def trip(self, now: float, cooldown: float) -> None:
        """The vendor refused the account or the model: open now for ``cooldown`` seconds
        (an open circuit stays open, from now, for the longer of what it had left and
        ``cooldown``), then probe as usual."""
        require(
            math.isfinite(cooldown) and cooldown >= 0, f"cooldown must be >= 0, got {cooldown!r}"
        )
        state = self.state(now)
        left = self._entered_at + self._open_for - now if state is CircuitState.OPEN else 0.0
        self._move(CircuitEvent.REFUSED, now, max(cooldown, left))

    def probe_at(self, now: float) -> float | None:
        """When a call may next go through (None: the circuit is closed, calls flow)."""
        if self.state(now) is CircuitState.CLOSED:
            return None
        return now + self.delay_until_allowed(now)

    # -- internals ---------------------------------------------------------------------

    def _move(self, event: CircuitEvent, at: float, open_for: float | None = None) -> None:
        self._state = CIRCUIT_TRANSITIONS[self._state][event]
        self._open_for = self.policy.cooldown if open_for is None else open_for
        self._entered_at = at
        self._consecutive_failures = 0
        self._calls.clear()
        self._failures_in_window = 0
        self._probes_out = 0

    def _remember(self, now: float, *, failed: bool) -> None:
        """Add a call to the sliding window and drop the ones older than ``window``."""
        self._calls.append((now, failed))
        self._failures_in_window += failed
        horizon = now - self.policy.window
        while self._calls and self._calls[0][0] <= horizon:
            _, old_failed = self._calls.popleft()
            self._failures_in_window -= old_failed

    def _should_trip(self) -> bool:
        if self._consecutive_failures >= self.policy.failure_threshold:
            return True
        calls = len(self._calls)
        return (
            calls >= self.policy.min_calls
            and self._failures_in_window >= self.policy.failure_rate * calls
        )

    def _probes_lost(self, now: float) -> bool:
        return (
            self._probes_out >= self.policy.half_open_probes
            and now - self._last_probe_at >= self.policy.cooldown
        )
