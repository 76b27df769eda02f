"""Cost control at the API (issue 13): a throttled account's submits are 429 with
Retry-After, the admin reads and clears the throttle, a kept fee shows on the statement,
and an account's slot weight is one of its limits."""

from __future__ import annotations

from typing import Any

from runtime.models import FEE_NOTE, REFUND_LESS_FEE_NOTE, Fail
from runtime.refunds import RejectionThrottle
from tests.integration.api_fixtures import (  # noqa: F401
    ApiHarness,
    api_fixture,
    make_api_fixture,
)


async def error_of(response: Any) -> tuple[int, str, str]:
    body = await response.json()
    return response.status, body["error"]["code"], body["error"]["message"]


async def test_an_account_rejected_too_often_is_throttled_until_the_admin_clears_it(
    api: ApiHarness,
) -> None:
    account = await api.account(credits=1_000)
    throttle = RejectionThrottle(limit=2, window=600.0, duration=300.0)
    for prompt in ("bad one", "bad two"):
        job = await api.submitted(account, prompt=prompt)
        fail = Fail(job["id"], "content policy", input_rejected=True, fee=1, throttle=throttle)
        [outcome] = await api.ledger.execute_many([fail])
        outcome.unwrap()
    refused = await api.submit(account, prompt="three")
    status, code, message = await error_of(refused)
    assert (status, code) == (429, "account_throttled")
    assert "rejected too many of its jobs" in message
    assert 295 <= int(refused.headers["Retry-After"]) <= 300
    url = f"/v1/accounts/{account.id}/throttle"
    seen = await (await api.client.get(url, headers=api.admin)).json()
    assert seen["throttled_until"] is not None and seen["input_rejections"] > 1.9
    assert (
        await api.client.get(url, headers=account.auth)
    ).status == 403  # admin only: an account key is authenticated, not allowed
    cleared = await api.client.delete(url, headers=api.admin)
    assert (await cleared.json())["throttled_until"] is None
    await api.submitted(account, prompt="four")
    missing = await api.client.get("/v1/accounts/acct_nope/throttle", headers=api.admin)
    assert (await error_of(missing))[:2] == (404, "account_not_found")


async def test_a_kept_fee_reads_on_the_statement_as_a_capture_and_a_release(
    api: ApiHarness,
) -> None:
    account = await api.account(credits=100)
    job = await api.submitted(account)
    [outcome] = await api.ledger.execute_many([Fail(job["id"], "nsfw", input_rejected=True, fee=1)])
    outcome.unwrap()
    statement = await (await api.client.get("/v1/credits/entries", headers=account.auth)).json()
    settled = [(e["kind"], e["note"]) for e in statement["entries"] if e["job_id"] == job["id"]][1:]
    assert settled == [("capture", FEE_NOTE), ("release", REFUND_LESS_FEE_NOTE)]
    assert (await api.balance(account))["available"] == 100 - 1


async def test_an_accounts_slot_weight_is_one_of_its_limits(api: ApiHarness) -> None:
    account = await api.account()
    url = f"/v1/accounts/{account.id}/limits"
    answer = await api.client.put(url, json={"slot_weight": 2.5}, headers=api.admin)
    limits = await answer.json()
    assert (limits["limits"]["slot_weight"], limits["effective"]["slot_weight"]) == (2.5, 2.5)
    assert await api.ledger.slot_weights([account.id]) == {account.id: 2.5}
    for wrong in (0, -1, "heavy", 1e9, 1e-300, 0.001, 101):  # review: 1e-300 was taken
        refused = await api.client.put(url, json={"slot_weight": wrong}, headers=api.admin)
        status, code, message = await error_of(refused)
        assert (status, code) == (400, "bad_request"), wrong
        assert "slot_weight" in message, message
    for edge in (0.01, 100):
        taken = await api.client.put(url, json={"slot_weight": edge}, headers=api.admin)
        assert taken.status == 200, edge
    default = await (await api.client.put(url, json={}, headers=api.admin)).json()
    assert (default["limits"]["slot_weight"], default["effective"]["slot_weight"]) == (None, 1.0)
