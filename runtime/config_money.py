"""The money sections of jobline.toml: ``[refunds]`` and ``[throttle]`` (``runtime.config``
reads them; ``runtime.refunds`` holds the rules they configure).

What each vendor charges is a route step's ``cost`` (``models.X.route``), and a model's
own fee for a job rejected for its input is ``models.X.input_rejected_fee``: both live
with their model in ``runtime.config``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from runtime.refunds import RejectionThrottle


class RefundsConfig(BaseModel):
    """``[refunds]``: a job that fails is refunded in full, except a job the vendor
    rejected for its own input (content policy, invalid input), which keeps this share of
    its price (rounded down; a model's ``input_rejected_fee`` overrides it): one capture
    of the fee and one release of the rest, in one transaction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_rejected_fee_share: float = Field(default=0.0, ge=0, le=1)


class ThrottleConfig(BaseModel):
    """``[throttle]``: an account whose jobs vendors keep rejecting for their own input.
    About ``input_rejections`` of them within ``window`` seconds refuse its submits with
    ``429`` + ``Retry-After`` for ``duration`` seconds (a leaky bucket per account, kept by
    the ledger). 0: never throttled. The admin sees and clears it at
    ``/v1/accounts/{id}/throttle``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_rejections: int = Field(default=20, ge=0)
    window: float = Field(default=600.0, gt=0)
    duration: float = Field(default=300.0, gt=0)

    def policy(self) -> RejectionThrottle:
        return RejectionThrottle(self.input_rejections, self.window, self.duration)
