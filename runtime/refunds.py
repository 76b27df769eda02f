"""What a failed job costs its account, and when an account is throttled for it: pure.

Theory of operation
-------------------
A job that does not succeed is refunded: the ledger releases its hold (DESIGN §3.5).
The failure's class decides whether all of it comes back:

==============================================================  ===========================
the vendor failed (transient errors spent, outage, refusal,     released in full
a timeout, an output jobline could not keep), the deadline
passed, the client canceled
the vendor rejected the job for its own input (content          ``input_rejected_fee``
policy, invalid input: ``VendorInputRejected``, a task failed    kept, the rest released
``permanent``)
==============================================================  ===========================

A fee kept is one capture of the fee and one release of the rest, in the same ledger
transaction as the job's move to ``failed`` (I2). The fee is a model's own
(``models.X.input_rejected_fee``, credits) or a share of its price
(``[refunds] input_rejected_fee_share``), rounded down, and never more than the price.

An account whose jobs keep failing on their own input is throttled
(``RejectionThrottle``): a leaky bucket per account, to which each input rejection adds
one and which drains ``limit`` per ``window`` seconds; when it passes ``limit - 1`` (the
``limit``-th of rejections in quick succession; at a steady pace, about twice ``limit``
within ``window``), the account's submits are refused with ``429``
and ``Retry-After`` for ``duration`` seconds. The ledger keeps the bucket with the
account, so the throttle holds across gateway replicas and restarts.

Every function takes its values (``now`` included) and returns one: no clock, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RejectionThrottle", "input_rejected_fee"]


def input_rejected_fee(price: int, share: float, model_fee: int | None = None) -> int:
    """Credits kept of a job of ``price`` the vendor rejected for its input: the model's
    own ``model_fee`` if it has one, else ``share`` of the price rounded down; never more
    than the price, never below 0."""
    if not (math.isfinite(share) and 0 <= share <= 1):
        raise ValueError(f"a fee share must be between 0 and 1, not {share!r}")
    fee = model_fee if model_fee is not None else math.floor(price * share)
    return max(0, min(fee, price))


@dataclass(frozen=True, slots=True)
class RejectionThrottle:
    """About ``limit`` input rejections within ``window`` seconds throttle an account's
    submits for ``duration`` seconds (see the module docstring). ``limit`` 0: never."""

    limit: int = 20
    window: float = 600.0
    duration: float = 300.0

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0, not {self.limit!r}")
        for name in ("window", "duration"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def level_at(self, level: float, updated_at: float | None, now: float) -> float:
        """The bucket's level at ``now``, ``level`` having been measured at ``updated_at``."""
        if not self.enabled:
            return 0.0
        if updated_at is None:
            return level
        drained = max(0.0, now - updated_at) * self.limit / self.window
        return max(0.0, level - drained)

    def after_rejection(
        self, level: float, updated_at: float | None, now: float
    ) -> tuple[float, float | None]:
        """(the level after one more rejection at ``now``, the time the account's submits
        are refused until, or None when it is not throttled by this rejection)."""
        if not self.enabled:
            return level, None
        new = self.level_at(level, updated_at, now) + 1.0
        # The limit-th rejection in quick succession throttles: the bucket has drained a
        # little since the first one, so "reaching the limit" is passing limit - 1.
        return new, (now + self.duration if new > self.limit - 1 else None)
