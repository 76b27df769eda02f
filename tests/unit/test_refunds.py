"""The refund policy and the input-rejection throttle (pure), and their config."""

from __future__ import annotations

import pytest

from runtime.config import parse_config
from runtime.errors import ConfigError
from runtime.refunds import RejectionThrottle, input_rejected_fee
from tests.unit.test_config import default_raw


@pytest.mark.parametrize(
    ("price", "share", "own", "fee"),
    [
        (10, 0.0, None, 0),  # the default: refunded in full
        (10, 0.25, None, 2),  # a share, rounded down
        (3, 0.34, None, 1),
        (10, 0.25, 7, 7),  # the model's own fee wins
        (10, 1.0, None, 10),
        (5, 0.5, 9, 5),  # never more than the price
        (0, 0.5, None, 0),  # a free job keeps nothing
    ],
)
def test_the_fee_kept_on_an_input_rejection(
    price: int, share: float, own: int | None, fee: int
) -> None:
    assert input_rejected_fee(price, share, own) == fee


def test_a_fee_share_outside_0_to_1_is_refused() -> None:
    for share in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            input_rejected_fee(10, share)


def test_the_throttle_counts_rejections_in_quick_succession_and_forgets_slow_ones() -> None:
    throttle = RejectionThrottle(limit=3, window=60.0, duration=300.0)
    level, at = 0.0, None
    results = []
    for now in (0.0, 1.0, 2.0):
        level, until = throttle.after_rejection(level, at, now)
        at = now
        results.append(until)
    assert results == [None, None, 302.0]
    # One every 20 s drains exactly as fast as it fills: never throttled.
    level, at = 0.0, None
    for i in range(30):
        level, until = throttle.after_rejection(level, at, 20.0 * i)
        at = 20.0 * i
        assert until is None
    assert not RejectionThrottle(limit=0).after_rejection(50.0, 0.0, 0.0)[1]  # disabled


def test_the_config_names_a_fee_above_the_price_and_prices_each_route_step() -> None:
    raw = default_raw()
    raw["models"]["sdxl"]["input_rejected_fee"] = 6
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "models.sdxl.input_rejected_fee"
    assert "at most the model's price (5)" in info.value.reason
    raw["models"]["sdxl"]["input_rejected_fee"] = 2
    raw["models"]["sdxl"]["route"][0]["cost"] = 0.0047
    raw["refunds"] = {"input_rejected_fee_share": 0.5}
    config = parse_config(raw)
    assert config.models["sdxl"].route[0].cost_micros == 4_700
    assert config.input_rejected_fee("sdxl", 5) == 2
    assert config.input_rejected_fee("video-short", 20) == 10
