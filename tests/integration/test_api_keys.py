"""Accounts as tenants (issue 13): API keys, grants by grant id, per-account limits and the
paginated statement, over the HTTP API on a real ledger (fake processors, no Ray). Two
gateways share one ledger where a replica matters."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from runtime.api import GATEWAY_API, build_app
from runtime.api.refusals import MEMORY
from runtime.models import OpenJob
from tests.integration.api_fixtures import (  # noqa: F401
    Account,
    ApiHarness,
    MakeApi,
    api_fixture,
    make_api_fixture,
)

FAST_FEED = {"key_revocation_poll": 0.05}


async def error_of(response: Any) -> tuple[int, str, str]:
    body = await response.json()
    return response.status, body["error"]["code"], body["error"]["message"]


@pytest.fixture
async def second_gateway(api: ApiHarness) -> AsyncIterator[Any]:
    """Another replica of the same gateway: its own caches, the same ledger."""
    clients: list[TestClient[Any, Any]] = []

    async def make(harness: ApiHarness) -> TestClient[Any, Any]:
        assert harness.client.app is not None
        ctx = harness.client.app[GATEWAY_API].ctx
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(dataclasses.replace(ctx))))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- API keys (case 2) ------------------------------------------------------------------


async def test_an_account_creates_lists_rotates_and_revokes_its_own_keys(
    api: ApiHarness,
) -> None:
    account = await api.account()
    created = await api.client.post("/v1/keys", json={"name": "ci"}, headers=account.auth)
    assert created.status == 201
    second = await created.json()
    assert second["api_key"].startswith(second["prefix"]) and second["active"]
    ci = Account(account.id, second["api_key"])
    assert (await api.client.get("/v1/credits", headers=ci.auth)).status == 200

    listed = await (await api.client.get("/v1/keys", headers=ci.auth)).json()
    assert [k["name"] for k in listed["keys"]] == ["ci", ""]
    text = str(listed)
    assert account.key not in text and ci.key not in text  # never a key ...
    db = sqlite3.connect(api.ledger.path)
    hashes = [h for (h,) in db.execute("SELECT hash FROM api_keys")]
    db.close()
    assert len(hashes) == 2 and not any(h in text for h in hashes)  # ... nor its hash

    first_id = listed["keys"][1]["id"]
    rotated = await api.client.post(
        "/v1/keys", json={"replaces": first_id, "grace_period": 3600}, headers=ci.auth
    )
    assert rotated.status == 201
    third = Account(account.id, (await rotated.json())["api_key"])
    # In its grace period the old key still works, and says until when.
    assert (await api.client.get("/v1/credits", headers=account.auth)).status == 200
    keys = {
        k["id"]: k
        for k in (await (await api.client.get("/v1/keys", headers=third.auth)).json())["keys"]
    }
    assert keys[first_id]["expires_at"] is not None and keys[first_id]["active"]

    revoked = await api.client.post(f"/v1/keys/{first_id}/revoke", headers=third.auth)
    assert revoked.status == 200 and not (await revoked.json())["active"]
    refused = await api.client.get("/v1/credits", headers=account.auth)
    assert await error_of(refused) == (401, "unauthorized", "this API key was revoked")
    assert (await api.client.get("/v1/credits", headers=third.auth)).status == 200
    # Review of issue 13: rotating a revoked key answered 201 (a second successor).
    again = await api.client.post("/v1/keys", json={"replaces": first_id}, headers=third.auth)
    status, code, message = await error_of(again)
    assert (status, code) == (409, "api_key_revoked") and "revoked already" in message


async def test_the_admin_manages_any_accounts_keys_and_no_account_touches_anothers(
    api: ApiHarness,
) -> None:
    mine, theirs = await api.account(), await api.account(name="other")
    made = await api.client.post(
        f"/v1/accounts/{mine.id}/keys", json={"name": "ops"}, headers=api.admin
    )
    assert made.status == 201
    key_id = (await made.json())["id"]
    page = await (await api.client.get(f"/v1/accounts/{mine.id}/keys", headers=api.admin)).json()
    assert {k["id"] for k in page["keys"]} >= {key_id}
    # Another account's key is 404, to revoke and to replace.
    for path, body in ((f"/v1/keys/{key_id}/revoke", None), ("/v1/keys", {"replaces": key_id})):
        answer = await api.client.post(path, json=body or {}, headers=theirs.auth)
        assert (await error_of(answer))[:2] == (404, "api_key_not_found")
    admin_revoke = f"/v1/accounts/{mine.id}/keys/{key_id}/revoke"
    assert (await api.client.post(admin_revoke, headers=api.admin)).status == 200
    unknown = await api.client.get("/v1/accounts/acct_nope/keys", headers=api.admin)
    assert (await error_of(unknown))[:2] == (404, "account_not_found")


async def test_a_revoked_key_is_refused_by_every_gateway_within_a_poll(
    make_api: MakeApi, second_gateway: Any
) -> None:
    api = await make_api(**FAST_FEED)
    other = await second_gateway(api)
    account = await api.account()
    # Both replicas have the key cached.
    assert (await api.client.get("/v1/credits", headers=account.auth)).status == 200
    assert (await other.get("/v1/credits", headers=account.auth)).status == 200
    [key] = (await (await api.client.get("/v1/keys", headers=account.auth)).json())["keys"]
    new = await api.client.post("/v1/keys", json={}, headers=account.auth)
    fresh = Account(account.id, (await new.json())["api_key"])
    revoked = await api.client.post(f"/v1/keys/{key['id']}/revoke", headers=fresh.auth)
    assert revoked.status == 200
    started = time.monotonic()

    async def refused_there() -> bool:
        return (await other.get("/v1/credits", headers=account.auth)).status == 401

    await eventually(refused_there)
    assert time.monotonic() - started < 2.0  # a few polls, not a cache lifetime


async def test_last_use_is_written_in_batches_not_per_request(make_api: MakeApi) -> None:
    api = await make_api(key_use_flush_interval=3600.0)
    account = await api.account()
    ops = api.ledger.stats.ops
    for _ in range(30):
        assert (await api.client.get("/v1/credits", headers=account.auth)).status == 200
    assert api.ledger.stats.ops == ops  # thirty reads, no write
    assert api.client.app is not None
    await api.client.app[GATEWAY_API].auth.flush_uses()
    assert api.ledger.stats.ops == ops + 1  # one RecordKeyUse for them all
    [key] = (await (await api.client.get("/v1/keys", headers=account.auth)).json())["keys"]
    assert key["last_used_at"] is not None


# --- grants (cases 3 and 13) --------------------------------------------------------------


async def test_a_reused_grant_id_with_another_amount_is_a_409_naming_it(api: ApiHarness) -> None:
    account = await api.account(credits=10)
    url = f"/v1/accounts/{account.id}/credits"
    first = await api.client.post(url, json={"amount": 5, "grant_id": "inv-1"}, headers=api.admin)
    assert first.status == 200
    again = await api.client.post(url, json={"amount": 5, "grant_id": "inv-1"}, headers=api.admin)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    other = await api.client.post(url, json={"amount": 7, "grant_id": "inv-1"}, headers=api.admin)
    status, code, message = await error_of(other)
    assert (status, code) == (409, "grant_conflict")
    assert "'inv-1'" in message and "5 credits" in message and "asks for 7" in message
    assert (await api.balance(account))["balance"] == 15


async def test_a_grant_named_initial_on_an_account_created_with_credits_is_applied(
    api: ApiHarness,
) -> None:
    account = await api.account(credits=100)
    answer = await api.client.post(
        f"/v1/accounts/{account.id}/credits",
        json={"amount": 5, "grant_id": "initial"},
        headers=api.admin,
    )
    assert answer.status == 200 and "Idempotent-Replayed" not in answer.headers
    assert (await api.balance(account))["balance"] == 105


# --- the statement, a page at a time (case 4) ----------------------------------------------


async def test_the_statement_is_paginated_and_its_page_is_capped(api: ApiHarness) -> None:
    account = await api.account(credits=100)
    for i in range(6):
        await api.client.post(
            f"/v1/accounts/{account.id}/credits",
            json={"amount": 1, "grant_id": f"g{i}"},
            headers=api.admin,
        )
    seen: list[int] = []
    cursor = ""
    while True:
        answer = await api.client.get(
            f"/v1/credits/entries?limit=3&order=desc{cursor}", headers=account.auth
        )
        page = await answer.json()
        seen += [entry["id"] for entry in page["entries"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert len(seen) == 7 and seen == sorted(seen, reverse=True)
    default = await (await api.client.get("/v1/credits/entries", headers=account.auth)).json()
    assert [e["id"] for e in default["entries"]] == sorted(seen)  # oldest first by default
    too_many = await api.client.get("/v1/credits/entries?limit=5000", headers=account.auth)
    assert (await error_of(too_many))[:2] == (400, "bad_request")


# --- per-account limits ------------------------------------------------------------------


async def test_the_admin_sets_an_accounts_in_flight_cap_and_submit_rate(
    api: ApiHarness,
) -> None:
    account = await api.account(credits=1_000)
    url = f"/v1/accounts/{account.id}/limits"
    answer = await api.client.put(url, json={"max_jobs_in_flight": 1}, headers=api.admin)
    assert answer.status == 200
    limits = await answer.json()
    assert limits["limits"]["max_jobs_in_flight"] == 1
    assert limits["effective"]["max_jobs_in_flight"] == 1
    await api.submitted(account, prompt="one")
    capped = await api.submit(account, prompt="two")
    assert (await error_of(capped))[:2] == (429, "too_many_jobs_in_flight")

    body = {"submits_per_second": 0.5, "submit_burst": 1}
    await api.client.put(url, json=body, headers=api.admin)
    await api.submitted(account, prompt="three")
    limited = await api.submit(account, prompt="four")
    assert (await error_of(limited))[:2] == (429, "too_many_submits")
    assert limited.headers["Retry-After"] == "2"
    got = await (await api.client.get(url, headers=api.admin)).json()
    assert got["limits"] == {"max_jobs_in_flight": None, "slot_weight": None, **body}
    unknown = await api.client.put("/v1/accounts/acct_nope/limits", json={}, headers=api.admin)
    assert (await error_of(unknown))[:2] == (404, "account_not_found")
    for rate in (-1, 5e-324, 1e-300, 0.0009):  # slower than one submit per ~17 minutes:
        wrong = await api.client.put(url, json={"submits_per_second": rate}, headers=api.admin)
        assert (await error_of(wrong))[:2] == (400, "bad_request"), rate  # Retry-After was inf


async def test_a_client_ignoring_retry_after_costs_the_ledger_one_call_a_second(
    api: ApiHarness,
) -> None:
    # issue 13: each refused submit was a ledger operation, so a client hammering past its
    # in-flight cap spent the ledger time every other account's submits and reads share.
    account = await api.account(credits=1_000)
    url = f"/v1/accounts/{account.id}/limits"
    await api.client.put(url, json={"max_jobs_in_flight": 1}, headers=api.admin)
    await api.submitted(account, prompt="one")
    ledger, opened = api.ledger, 0
    original = ledger.execute_many

    async def counted(ops: list[Any]) -> list[Any]:
        nonlocal opened
        opened += sum(isinstance(op, OpenJob) for op in ops)
        return await original(ops)

    ledger.execute_many = counted  # type: ignore[method-assign]
    started = time.monotonic()
    answers = [await api.submit(account, prompt=f"again {i}") for i in range(20)]
    elapsed = time.monotonic() - started
    for answer in answers:
        assert (await error_of(answer))[:2] == (429, "too_many_jobs_in_flight")
        assert int(answer.headers["Retry-After"]) >= 1
    assert 1 <= opened <= 1 + int(elapsed / MEMORY), (opened, elapsed)
    # The admin raising the cap through this gateway takes effect at once.
    await api.client.put(url, json={"max_jobs_in_flight": 5}, headers=api.admin)
    await api.submitted(account, prompt="two")


async def test_a_retry_with_an_accepted_idempotency_key_replays_its_job_despite_a_refusal(
    api: ApiHarness,
) -> None:
    """Review of issue 13: while the gateway remembered a refusal of the account, a retry
    with the Idempotency-Key of an already accepted submit got 429 instead of its job."""
    account = await api.account(credits=1_000)
    url = f"/v1/accounts/{account.id}/limits"
    await api.client.put(url, json={"max_jobs_in_flight": 1}, headers=api.admin)
    accepted = await api.submit(account, key="retry-me")
    assert accepted.status == 202
    job = await accepted.json()
    refused = await api.submit(account, prompt="another")  # remembered for a moment
    assert (await error_of(refused))[:2] == (429, "too_many_jobs_in_flight")
    retry = await api.submit(account, key="retry-me")
    assert retry.status == 202, await retry.text()
    assert (await retry.json())["id"] == job["id"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    fresh = await api.submit(account, prompt="keyed, new", key="another-key")
    assert (await error_of(fresh))[:2] == (429, "too_many_jobs_in_flight")  # the ledger's


async def test_the_submit_rate_holds_across_gateway_replicas(
    api: ApiHarness, second_gateway: Any
) -> None:
    other = await second_gateway(api)
    account = await api.account(credits=1_000)
    await api.client.put(
        f"/v1/accounts/{account.id}/limits",
        json={"submits_per_second": 0.1, "submit_burst": 2},
        headers=api.admin,
    )
    body = {"model": "flux-schnell", "input": {"prompt": "x"}}
    answers = [
        await client.post("/v1/jobs", json=body, headers=account.auth)
        for client in (api.client, other, api.client, other)
    ]
    assert [a.status for a in answers] == [202, 202, 429, 429]


# --- the document (case 13) ----------------------------------------------------------------


async def test_the_document_is_valid_openapi_and_describes_its_event_streams(
    api: ApiHarness,
) -> None:
    document = await (await api.client.get("/openapi.json")).json()
    validate(document)  # OpenAPI 3.1, by the openapi-spec-validator package
    schemas = document["components"]["schemas"]
    for path, events in (
        ("/v1/jobs/{id}/events", {"status": "JobEvent"}),
        ("/v1/events", {"ready": None, "status": "AccountEvent"}),
    ):
        content = document["paths"][path]["get"]["responses"]["200"]["content"]
        assert set(content) == {"text/event-stream"}
        stream = content["text/event-stream"]["schema"]
        items = stream["items"].get("oneOf", [stream["items"]])
        described = {item["properties"]["event"]["const"]: item for item in items}
        assert set(described) == set(events)
        for name, component in events.items():
            data = described[name]["properties"]["data"]
            assert data["contentMediaType"] == "application/json"
            if component is not None:
                assert data["contentSchema"] == {"$ref": f"#/components/schemas/{component}"}
                assert component in schemas
    grant = document["paths"]["/v1/accounts/{id}/credits"]["post"]["responses"]
    assert "Idempotent-Replayed" in grant["200"]["headers"] and "409" in grant
