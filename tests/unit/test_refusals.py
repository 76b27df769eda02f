"""A refusal the gateway answers from memory says the wait that remains (issue 13 review:
it repeated the ledger's first ``Retry-After`` and message unchanged)."""

from __future__ import annotations

import pytest

from runtime.api.refusals import RecentRefusals
from runtime.errors import AccountThrottled, SubmitRateLimited, TooManyJobsInFlight


def test_a_remembered_throttle_counts_its_wait_down() -> None:
    refusals = RecentRefusals(memory=1.0)
    refusals.remember("acct_a", AccountThrottled("acct_a", 100.0), now=50.0)
    with pytest.raises(AccountThrottled) as info:
        refusals.check("acct_a", now=50.6)
    assert info.value.retry_after == pytest.approx(99.4)
    assert "retry after 99s" in str(info.value)
    refusals.check("acct_a", now=51.0)  # the memory is over: the ledger is asked again


def test_a_remembered_rate_refusal_counts_its_wait_down_to_zero_at_most() -> None:
    refusals = RecentRefusals(memory=1.0)
    refusals.remember("acct_a", SubmitRateLimited("acct_a", 2.0, 0.5), now=10.0)
    with pytest.raises(SubmitRateLimited) as info:
        refusals.check("acct_a", now=10.3)
    assert info.value.retry_after == pytest.approx(0.2)
    assert info.value.rate == 2.0


def test_a_remembered_in_flight_cap_is_answered_as_it_was() -> None:
    refusals = RecentRefusals(memory=1.0)
    refusals.remember("acct_a", TooManyJobsInFlight("acct_a", 3), now=0.0)
    with pytest.raises(TooManyJobsInFlight) as info:
        refusals.check("acct_a", now=0.5)
    assert info.value.limit == 3
    refusals.check("acct_b", now=0.5)  # another account: nothing remembered
