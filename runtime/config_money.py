"""The money and tenant sections of jobline.toml: ``[refunds]``, ``[throttle]`` and
``[fairness]`` (``runtime.config`` reads them; ``runtime.refunds`` and
``runtime.fairness`` hold the rules they configure).

What each vendor charges is a route step's ``cost`` (``models.X.route``), and a model's
own fee for a job rejected for its input is ``models.X.input_rejected_fee``: both live
with their model in ``runtime.config``.
"""

from __future__ import annotations

from pydantic import Field

from runtime.config_base import Section
from runtime.refunds import RejectionThrottle


class RefundsConfig(Section):
    """``[refunds]``: a job that fails is refunded in full, except a job the vendor
    rejected for its own input (content policy, invalid input), which keeps this share of
    its price (rounded down; a model's ``input_rejected_fee`` overrides it): one capture
    of the fee and one release of the rest, in one transaction."""

    input_rejected_fee_share: float = Field(default=0.0, ge=0, le=1)


class ThrottleConfig(Section):
    """``[throttle]``: an account whose jobs vendors keep rejecting for their own input.
    About ``input_rejections`` of them within ``window`` seconds refuse its submits with
    ``429`` + ``Retry-After`` for ``duration`` seconds (a leaky bucket per account, kept by
    the ledger). 0: never throttled. The admin sees and clears it at
    ``/v1/accounts/{id}/throttle``."""

    input_rejections: int = Field(default=20, ge=0)
    window: float = Field(default=600.0, gt=0)
    duration: float = Field(default=300.0, gt=0)

    def policy(self) -> RejectionThrottle:
        return RejectionThrottle(self.input_rejections, self.window, self.duration)


class FairnessConfig(Section):
    """``[fairness]``: how accounts share a vendor's slots beyond the round-robin. A free
    slot of a vendor is kept for each account holding none of its slots that queued a job
    or finished one there within ``window`` seconds, at most ``headroom`` of them, so a
    quiet account's job next to a flooding one starts at once (``runtime.fairness.
    Headroom``). Alone, an account uses every slot. 0: no headroom."""

    headroom: int = Field(default=1, ge=0)
    window: float = Field(default=10.0, ge=0)
