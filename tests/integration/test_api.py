"""The HTTP API over real sockets, on a real ledger, with fake processors (no Ray)."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import time
from typing import Any

import aiohttp
import pytest

from actors.gateway import Gateway
from runtime.api import GATEWAY_API, WEBHOOK_ANSWER_WITHIN
from runtime.api.webhooks import WEBHOOK_OFFER_WITHIN
from runtime.models import Fail, ScheduleRetry
from runtime.states import JobStatus
from runtime.webhooks import signed_headers
from tests.integration.api_fixtures import (  # noqa: F401
    ADMIN_TOKEN,
    PNG,
    WEBHOOK_SECRET,
    ApiHarness,
    MakeApi,
    api_fixture,
    make_api_fixture,
    read_events,
)


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str, str]:
    body = await response.json()
    assert set(body) == {"error"}, body
    return response.status, body["error"]["code"], body["error"]["message"]


# --- accounts and credits ---------------------------------------------------------------


async def test_account_creation_needs_the_admin_token(api: ApiHarness) -> None:
    body = {"name": "acme", "credits": 50}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
        response = await api.client.post("/v1/accounts", json=body, headers=headers)
        assert (await error_of(response))[:2] == (401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")

    response = await api.client.post("/v1/accounts", json=body, headers=api.admin)
    assert response.status == 201
    created = await response.json()
    assert created["account_id"].startswith("acct_")
    assert created["api_key"].startswith("jl_")
    assert created["credits"] == 50
    auth = {"Authorization": f"Bearer {created['api_key']}"}
    balance = await (await api.client.get("/v1/credits", headers=auth)).json()
    assert balance == {
        "account_id": created["account_id"],
        "balance": 50,
        "held": 0,
        "available": 50,
    }
    # The key itself is nowhere in the database, only its hash.
    assert created["api_key"].encode() not in api.ledger.path.read_bytes()


async def test_an_accounts_key_on_an_admin_route_is_403_and_documented(api: ApiHarness) -> None:
    # Field case: a user's key on an admin route got 401; it is authenticated, not allowed.
    account = await api.account()
    for method, path in (
        ("POST", "/v1/accounts"),
        ("GET", "/v1/admin/dead-letters"),
        ("GET", "/v1/admin/accounts"),
        ("GET", f"/v1/accounts/{account.id}/keys"),
    ):
        response = await api.client.request(method, path, json={}, headers=account.auth)
        assert (await error_of(response))[:2] == (403, "forbidden"), path
        unknown = {"Authorization": "Bearer jl_not_a_key"}
        response = await api.client.request(method, path, json={}, headers=unknown)
        assert (await error_of(response))[:2] == (401, "unauthorized"), path
    document = await (await api.client.get("/openapi.json")).json()
    admin_operations = [
        (path, method, operation["responses"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == [{"adminToken": []}]
    ]
    assert len(admin_operations) >= 8
    for path, method, responses in admin_operations:
        assert {"401", "403"} <= set(responses), (method, path)
        # Every admin-only operation refuses what it documents (a route that forgot to
        # check, or forgot to await the check, answers something else).
        url = re.sub(r"\{[^}]+\}", account.id, path)
        response = await api.client.request(method, url, json={}, headers=account.auth)
        assert (await error_of(response))[:2] == (403, "forbidden"), (method, path)
        response = await api.client.request(method, url, json={}, headers=unknown)
        assert (await error_of(response))[:2] == (401, "unauthorized"), (method, path)


async def test_admin_routes_are_off_without_an_admin_token(make_api: MakeApi) -> None:
    api = await make_api(admin_token=None)
    response = await api.client.post(
        "/v1/accounts", json={"name": "x"}, headers={"Authorization": "Bearer anything"}
    )
    assert (await error_of(response))[:2] == (503, "admin_disabled")


async def test_grants_are_idempotent_by_key(api: ApiHarness) -> None:
    account = await api.account(credits=10)
    url = f"/v1/accounts/{account.id}/credits"
    headers = {**api.admin, "Idempotency-Key": "invoice-7"}
    first = await api.client.post(url, json={"amount": 5}, headers=headers)
    again = await api.client.post(url, json={"amount": 5}, headers=headers)
    assert (first.status, again.status) == (200, 200)
    assert await again.json() == await first.json()  # the first answer, replayed
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await api.balance(account))["balance"] == 15

    response = await api.client.post(
        "/v1/accounts/acct_nope/credits", json={"amount": 1}, headers=api.admin
    )
    assert (await error_of(response))[:2] == (404, "account_not_found")
    response = await api.client.post(url, json={"amount": 0}, headers=api.admin)
    assert (await error_of(response))[:2] == (400, "bad_request")

    entries = await (await api.client.get("/v1/credits/entries", headers=account.auth)).json()
    assert [(e["kind"], e["amount"]) for e in entries["entries"]] == [("grant", 10), ("grant", 5)]


async def test_unknown_api_key_is_401(api: ApiHarness) -> None:
    for headers in ({}, {"Authorization": "Bearer jl_unknown"}, {"Authorization": "Basic abc"}):
        response = await api.client.get("/v1/credits", headers=headers)
        assert (await error_of(response))[:2] == (401, "unauthorized")


# --- submitting -------------------------------------------------------------------------


async def test_submit_holds_the_price_and_dispatches(api: ApiHarness) -> None:
    account = await api.account(credits=10)
    response = await api.submit(account)
    assert response.status == 202
    job = await response.json()
    assert job["status"] == "queued"
    assert job["id"].startswith("job_")
    assert (job["model"], job["vendor"], job["cost"]) == ("flux-schnell", "fal", 3)
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["X-Jobline-Trace-Id"] == job["trace_id"]
    assert "Idempotent-Replayed" not in response.headers
    assert await api.balance(account) == {
        "account_id": account.id,
        "balance": 10,
        "held": 3,
        "available": 7,
    }
    await _eventually(lambda: len(api.router.processors["fal"].dispatched) == 1)
    assert api.router.processors["fal"].dispatched[0].id == job["id"]

    fetched = await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)
    assert (await fetched.json())["id"] == job["id"]
    page = await (await api.client.get("/v1/jobs?status=queued", headers=account.auth)).json()
    assert [j["id"] for j in page["jobs"]] == [job["id"]]


async def test_a_failing_dispatch_does_not_fail_the_request(api: ApiHarness) -> None:
    api.router.processors["replicate"].broken = True
    account = await api.account()
    response = await api.submit(account, model="sdxl")
    assert response.status == 202
    await _eventually(lambda: api.router.processors["replicate"].dispatch_calls == 1)
    job = await api.ledger.get_job((await response.json())["id"])
    assert job.status is JobStatus.QUEUED  # durable: the sweeper will find it


async def test_bad_requests_are_refused_and_charge_nothing(api: ApiHarness) -> None:
    account = await api.account(credits=10)
    auth = account.auth
    post = api.client.post

    async def submit_raw(data: bytes, content_type: str = "application/json") -> Any:
        return await post("/v1/jobs", data=data, headers={**auth, "Content-Type": content_type})

    cases: list[tuple[Any, int, str, str]] = [
        (
            await post("/v1/jobs", json={"model": "nope", "input": {"prompt": "x"}}, headers=auth),
            422,
            "unknown_model",
            "nope",
        ),
        (
            await post("/v1/jobs", json={"model": "sdxl", "input": {"prompt": ""}}, headers=auth),
            422,
            "input_invalid",
            "$.input.prompt",
        ),
        (
            await post("/v1/jobs", json={"model": "sdxl", "input": {}}, headers=auth),
            422,
            "input_invalid",
            "'prompt' is a required property",
        ),
        (
            await post(
                "/v1/jobs",
                json={"model": "sdxl", "input": {"prompt": "x", "seed": "7"}},
                headers=auth,
            ),
            422,
            "input_invalid",
            "$.input.seed",
        ),
        (await submit_raw(b'{"model": "sdxl", "input": '), 400, "bad_request", "malformed JSON"),
        (await submit_raw(b"[1, 2]"), 400, "bad_request", "JSON object"),
        (
            await submit_raw(b'{"model": "sdxl", "input": {"prompt": "\\ud800"}}'),
            400,
            "bad_request",
            "a string contains an unpaired surrogate",
        ),
        (
            await post(
                "/v1/jobs", json={"model": "sdxl", "input": {"prompt": "y" * 2001}}, headers=auth
            ),
            422,
            "input_invalid",
            "$.input.prompt: 'yyyy",  # a short start of the value, not all 2001 characters
        ),
        (
            await post("/v1/jobs", json={"model": "m" * 200, "input": {}}, headers=auth),
            422,
            "unknown_model",
            "unknown model 'mmm",
        ),
        (await submit_raw(b'{"model": "sdxl", "input": NaN}'), 400, "bad_request", "NaN"),
        (await submit_raw(b'{"model": "sdxl", "input": "x"}'), 400, "bad_request", "input"),
        (await submit_raw(b'{"model": 5, "input": {}}'), 400, "bad_request", "model"),
        (
            await submit_raw(b'{"model": "sdxl", "input": {"prompt": "x"}, "extra": 1}'),
            400,
            "bad_request",
            "extra",
        ),
        (await submit_raw(b"", "application/json"), 400, "bad_request", "empty"),
        (
            await submit_raw(b"model=sdxl", "application/x-www-form-urlencoded"),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (await submit_raw(b'{"model": "sdxl"}', "text/plain"), 415, "unsupported_media_type", ""),
        (
            await submit_raw(json.dumps({"model": "sdxl", "input": {"p": "x" * 70_000}}).encode()),
            413,
            "payload_too_large",
            "",
        ),
    ]
    for key in ("x" * 256, "tab\there", "caf\u00e9"):
        headers = {**auth, "Idempotency-Key": key}
        response = await post(
            "/v1/jobs", json={"model": "sdxl", "input": {"prompt": "x"}}, headers=headers
        )
        cases.append((response, 400, "bad_request", "Idempotency-Key"))

    for response, status, code, needle in cases:
        got = await error_of(response)
        assert got[:2] == (status, code), got
        assert needle in got[2], got
        if needle.endswith("'yyyy") or needle.endswith("'mmm"):  # a short start, not it all
            assert len(got[2]) < 120, got
    assert await api.balance(account) == {
        "account_id": account.id,
        "balance": 10,
        "held": 0,
        "available": 10,
    }
    await asyncio.sleep(0.05)
    assert api.dispatched() == []


async def test_a_body_that_cannot_be_decoded_is_400_and_changes_nothing(api: ApiHarness) -> None:
    # Found by the API fuzzer: a body without the Content-Encoding it claims answered 500
    # (aiohttp's RequestPayloadError), and the connection was unusable afterwards.
    account = await api.account(credits=10)
    body = json.dumps({"model": "sdxl", "input": {"prompt": "x"}}).encode()
    for encoding in ("gzip", "deflate", "br"):
        headers = {**account.auth, "Content-Type": "application/json", "Content-Encoding": encoding}
        for path in ("/v1/jobs", "/v1/webhooks/fal"):
            response = await api.client.post(path, data=body, headers=headers)
            status, code, message = await error_of(response)
            assert (status, code) == (400, "bad_request"), (path, encoding, message)
            assert f"Content-Encoding {encoding}" in message
            assert response.headers["Connection"] == "close"  # the rest is still unread
    assert (await api.balance(account))["held"] == 0
    assert api.dispatched() == []
    assert all(not p.webhooks for p in api.router.processors.values())

    # Really compressed, the same body is a job like any other.
    headers = {**account.auth, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = await api.client.post("/v1/jobs", data=gzip.compress(body), headers=headers)
    assert response.status == 202, await response.text()
    assert (await api.balance(account))["held"] == 5


async def test_insufficient_credits_is_402_and_charges_nothing(api: ApiHarness) -> None:
    account = await api.account(credits=2)
    response = await api.submit(account)
    assert (await error_of(response))[:2] == (402, "insufficient_credits")
    assert (await api.balance(account))["available"] == 2
    entries = await (await api.client.get("/v1/credits/entries", headers=account.auth)).json()
    assert [e["kind"] for e in entries["entries"]] == ["grant"]
    assert api.dispatched() == []


async def test_concurrent_submits_with_one_key_make_one_job(api: ApiHarness) -> None:
    account = await api.account(credits=100)
    responses = await asyncio.gather(*(api.submit(account, key="order-42") for _ in range(20)))
    assert [r.status for r in responses] == [202] * 20
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 1
    replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
    assert replayed.count("true") == 19
    assert (await api.balance(account))["held"] == 3
    entries = await (await api.client.get("/v1/credits/entries", headers=account.auth)).json()
    assert [e["kind"] for e in entries["entries"]] == ["grant", "hold"]
    await _eventually(lambda: len(api.dispatched()) == 1)

    other_body = await api.submit(account, prompt="something else", key="order-42")
    assert (await error_of(other_body))[:2] == (422, "idempotency_conflict")
    assert (await api.balance(account))["held"] == 3


async def test_the_in_flight_cap_is_429_with_retry_after(make_api: MakeApi) -> None:
    api = await make_api(max_jobs_in_flight_per_account=2)
    account = await api.account(credits=100)
    for _ in range(2):
        await api.submitted(account)
    response = await api.submit(account)
    assert (await error_of(response))[:2] == (429, "too_many_jobs_in_flight")
    assert int(response.headers["Retry-After"]) > 0
    assert (await api.balance(account))["held"] == 6


# --- reading, isolation, cancel ---------------------------------------------------------


async def test_another_accounts_job_is_404_everywhere(api: ApiHarness) -> None:
    owner, stranger = await api.account(), await api.account()
    job = await api.submitted(owner)
    for method, path in (
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/result"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", "/v1/jobs/job_does_not_exist"),
    ):
        response = await api.client.request(method, path, headers=stranger.auth)
        assert (await error_of(response))[:2] == (404, "job_not_found"), path
    page = await (await api.client.get("/v1/jobs", headers=stranger.auth)).json()
    assert page == {"jobs": [], "next_cursor": None}
    assert (await api.ledger.get_job(job["id"])).status is JobStatus.QUEUED


async def test_list_endpoints_refuse_unknown_and_repeated_query_parameters(
    api: ApiHarness,
) -> None:
    # Field case: GET /v1/jobs ignored order=, unknown filters and a repeated status,
    # while /v1/credits/entries refused a bad order.
    account = await api.account()
    for path, needle in (
        ("/v1/jobs?order=desc", "unknown query parameter 'order'"),
        ("/v1/jobs?model=sdxl", "unknown query parameter 'model'"),
        ("/v1/jobs?status=queued&status=failed", "status is given more than once"),
        ("/v1/jobs?limit=5&limit=6", "limit is given more than once"),
        ("/v1/credits/entries?sort=asc", "unknown query parameter 'sort'"),
        ("/v1/credits/entries?order=sideways", "order must be asc"),
        ("/v1/keys?x=1", "unknown query parameter 'x'"),
    ):
        status, code, message = await error_of(await api.client.get(path, headers=account.auth))
        assert (status, code) == (400, "bad_request"), path
        assert needle in message, (path, message)
    for path in ("/v1/admin/dead-letters?include=1", "/v1/admin/accounts?cursor=a&cursor=b"):
        response = await api.client.get(path, headers=api.admin)
        assert (await error_of(response))[:2] == (400, "bad_request"), path
    ok = await api.client.get("/v1/jobs?status=queued&limit=5", headers=account.auth)
    assert ok.status == 200


async def test_list_jobs_pages_and_validates(api: ApiHarness) -> None:
    account = await api.account()
    ids = [(await api.submitted(account))["id"] for _ in range(3)]
    first = await (await api.client.get("/v1/jobs?limit=2", headers=account.auth)).json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2]
    url = f"/v1/jobs?limit=2&cursor={first['next_cursor']}"
    second = await (await api.client.get(url, headers=account.auth)).json()
    assert [j["id"] for j in second["jobs"]] == ids[:1]
    assert second["next_cursor"] is None
    for query in ("status=done", "limit=0", "limit=201", "limit=x", "cursor=abc"):
        response = await api.client.get(f"/v1/jobs?{query}", headers=account.auth)
        assert (await error_of(response))[:2] == (400, "bad_request"), query


async def test_page_sizes_too_long_to_parse_are_400_not_500(api: ApiHarness) -> None:
    # Found by the API fuzzer: int() refuses more than 4300 digits, so ?limit= answered 500.
    account = await api.account()
    await api.submitted(account)
    for digits in ("9" * 5_000, "1" + "0" * 4_400, "0" * 4_400 + "99999"):
        response = await api.client.get(f"/v1/jobs?limit={digits}", headers=account.auth)
        assert (await error_of(response))[:2] == (400, "bad_request")
        url = f"/v1/admin/dead-letters?limit={digits}"
        response = await api.client.get(url, headers=api.admin)
        assert (await error_of(response))[:2] == (400, "bad_request")
    response = await api.client.get("/v1/jobs?limit=" + "0" * 4_400 + "1", headers=account.auth)
    assert response.status == 200  # leading zeros: that is 1
    assert len((await response.json())["jobs"]) == 1


async def test_cancel_refunds_once_and_is_idempotent(api: ApiHarness) -> None:
    account = await api.account(credits=10)
    job = await api.submitted(account)
    url = f"/v1/jobs/{job['id']}/cancel"
    first = await api.client.post(url, headers=account.auth)
    assert first.status == 200
    assert (await first.json())["status"] == "canceled"
    again = await api.client.post(url, headers=account.auth)
    assert again.status == 200
    assert (await again.json())["status"] == "canceled"
    assert await api.balance(account) == {
        "account_id": account.id,
        "balance": 10,
        "held": 0,
        "available": 10,
    }
    entries = await (await api.client.get("/v1/credits/entries", headers=account.auth)).json()
    assert [e["kind"] for e in entries["entries"]] == ["grant", "hold", "release"]
    await _eventually(lambda: api.router.processors["fal"].canceled == [job["id"]])

    done = await api.submitted(account)
    await api.complete(done["id"])
    response = await api.client.post(f"/v1/jobs/{done['id']}/cancel", headers=account.auth)
    assert (await error_of(response))[:2] == (409, "job_finished")


async def test_result_download(api: ApiHarness) -> None:
    account = await api.account()
    job = await api.submitted(account)
    url = f"/v1/jobs/{job['id']}/result"
    assert (await error_of(await api.client.get(url, headers=account.auth)))[:2] == (
        409,
        "job_not_completed",
    )
    await api.complete(job["id"], PNG)
    fetched = await (await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)).json()
    assert fetched["status"] == "completed"
    assert fetched["result_url"] == url
    response = await api.client.get(url, headers=account.auth)
    assert response.status == 200
    assert response.content_type == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # the type is never guessed
    assert await response.read() == PNG
    assert (await api.balance(account))["balance"] == 97  # captured


async def test_events_stream_every_status_change_to_the_end(api: ApiHarness) -> None:
    account = await api.account()
    job = await api.submitted(account)
    response = await api.client.get(f"/v1/jobs/{job['id']}/events", headers=account.auth)
    assert response.status == 200
    assert response.content_type == "text/event-stream"

    async def drive() -> None:
        await asyncio.sleep(0.25)  # the stream has sent `queued` and a heartbeat by now
        await api.complete(job["id"])

    driver = asyncio.create_task(drive())
    events = await read_events(response)
    await driver
    assert [e["status"] for e in events] == ["queued", "processing", "completed"]
    assert events[-1]["job"]["status"] == "completed"
    assert events[-1]["job"]["result_url"] == f"/v1/jobs/{job['id']}/result"
    assert all("job" not in e for e in events[:-1])

    # Resuming after the terminal event ends at once; resuming earlier replays the rest.
    resume = {**account.auth, "Last-Event-ID": events[0]["event_id"]}
    response = await api.client.get(f"/v1/jobs/{job['id']}/events", headers=resume)
    assert [e["status"] for e in await read_events(response)] == ["processing", "completed"]


async def test_an_event_stream_stops_when_the_client_leaves(api: ApiHarness) -> None:
    account = await api.account()
    job = await api.submitted(account)
    response = await api.client.get(f"/v1/jobs/{job['id']}/events", headers=account.auth)
    assert (await response.content.readline()).startswith(b"id: ")
    response.close()
    # The handler returns (and is counted) once it notices, within a poll or a heartbeat.
    await _eventually(lambda: _served(api, "/v1/jobs/{id}/events") == 1)


async def test_stopping_the_app_ends_open_event_streams(api: ApiHarness) -> None:
    account = await api.account()
    job = await api.submitted(account)
    response = await api.client.get(f"/v1/jobs/{job['id']}/events", headers=account.auth)
    await response.content.readline()
    started = time.monotonic()
    await api.client.close()  # would wait for a stream that kept running
    assert time.monotonic() - started < 3


# --- webhooks ---------------------------------------------------------------------------


def _prediction(task_id: str) -> bytes:
    return json.dumps({"id": task_id, "status": "succeeded", "output": ["http://x/o.png"]}).encode()


async def test_a_signed_webhook_is_forwarded_once(api: ApiHarness) -> None:
    body = _prediction("task-1")
    headers = signed_headers(WEBHOOK_SECRET, "msg_1", int(time.time()), body)
    headers["Content-Type"] = "application/json"
    first = await api.client.post("/v1/webhooks/replicate", data=body, headers=headers)
    assert (first.status, await first.json()) == (200, {"status": "accepted"})
    again = await api.client.post("/v1/webhooks/replicate", data=body, headers=headers)
    assert (again.status, await again.json()) == (200, {"status": "duplicate"})
    received = api.router.processors["replicate"].webhooks
    assert [(e.webhook_id, e.task_id) for e in received] == [("msg_1", "task-1")]


async def test_a_webhook_carries_the_job_and_attempt_its_url_names(api: ApiHarness) -> None:
    sent = [
        ("jobline_job_id=job-7&jobline_attempt=2", ("job-7", 2)),
        ("jobline_job_id=job-7&jobline_attempt=two", (None, None)),  # a hint, not an error
        ("jobline_job_id=job-7&jobline_attempt=%C2%B2", (None, None)),  # "²" is a digit
        ("jobline_attempt=2", (None, None)),
        (f"jobline_job_id={'j' * 500}&jobline_attempt=1", (None, None)),
        ("", (None, None)),
    ]
    for i, (query, _) in enumerate(sent):
        body = _prediction(f"task-{i}")
        headers = signed_headers(WEBHOOK_SECRET, f"msg_{i}", int(time.time()), body)
        response = await api.client.post(
            f"/v1/webhooks/replicate?{query}", data=body, headers=headers
        )
        assert response.status == 200, await response.text()
    received = api.router.processors["replicate"].webhooks
    assert [(e.job_id, e.attempt) for e in received] == [hint for _, hint in sent]


async def test_a_webhook_is_answered_while_a_slow_processor_still_takes_it(
    api: ApiHarness,
) -> None:
    processor = api.router.processors["replicate"]
    processor.webhooks_gate = asyncio.Event()  # the processor is restarting, say
    body = _prediction("task-slow")
    headers = signed_headers(WEBHOOK_SECRET, "msg_slow", int(time.time()), body)
    started = time.monotonic()
    response = await api.client.post("/v1/webhooks/replicate", data=body, headers=headers)
    assert (response.status, await response.json()) == (200, {"status": "accepted"})
    assert time.monotonic() - started < WEBHOOK_ANSWER_WITHIN + 1.0
    assert processor.webhooks == []
    processor.webhooks_gate.set()
    for _ in range(100):
        if processor.webhooks:
            break
        await asyncio.sleep(0.01)
    assert [e.task_id for e in processor.webhooks] == ["task-slow"]


async def test_a_processor_slow_to_take_a_webhook_has_it_recorded_after_the_offer_window(
    api: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    processor = api.router.processors["replicate"]

    async def slow_take(events: Any) -> list[str]:
        await asyncio.sleep(30)  # a processor stuck in a long turn
        return ["taken"] * len(events)

    processor.take_webhooks = slow_take  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="jobline")
    body = _prediction("task-stuck")
    headers = signed_headers(WEBHOOK_SECRET, "msg_stuck", int(time.time()), body)
    started = time.monotonic()
    response = await api.client.post("/v1/webhooks/replicate", data=body, headers=headers)
    assert (response.status, await response.json()) == (200, {"status": "accepted"})
    assert time.monotonic() - started < WEBHOOK_OFFER_WITHIN + 2.0
    assert [e.task_id for e in processor.webhooks] == ["task-stuck"]  # recorded, forwarded
    notes = [r for r in caplog.records if r.msg.startswith("webhook not taken")]
    assert [r.error for r in notes] == ["TimeoutError()"]  # type: ignore[attr-defined]
    again = await api.client.post("/v1/webhooks/replicate", data=body, headers=headers)
    assert (again.status, await again.json()) == (200, {"status": "duplicate"})


async def test_forged_stale_and_malformed_webhooks_change_nothing(api: ApiHarness) -> None:
    body = _prediction("task-2")
    now = int(time.time())
    forged = signed_headers(WEBHOOK_SECRET, "msg_2", now, body)
    forged["webhook-signature"] = "v1," + "A" * 44
    stale = signed_headers(WEBHOOK_SECRET, "msg_3", now - 3600, body)
    junk = b'{"id": "task-4", "status": "exploded"}'
    malformed = signed_headers(WEBHOOK_SECRET, "msg_4", now, junk)
    for headers, data, status, code in (
        (forged, body, 401, "webhook_signature_invalid"),
        ({}, body, 401, "webhook_signature_invalid"),
        (stale, body, 401, "webhook_timestamp_stale"),
        (malformed, junk, 400, "webhook_malformed"),
    ):
        response = await api.client.post("/v1/webhooks/replicate", data=data, headers=headers)
        assert (await error_of(response))[:2] == (status, code)
    assert api.router.processors["replicate"].webhooks == []
    # None was recorded: the authentic message, once fresh, is still accepted.
    fresh = signed_headers(WEBHOOK_SECRET, "msg_3", now, body)
    response = await api.client.post("/v1/webhooks/replicate", data=body, headers=fresh)
    assert (await response.json()) == {"status": "accepted"}

    response = await api.client.post("/v1/webhooks/nobody", data=body, headers=fresh)
    assert (await error_of(response))[:2] == (404, "unknown_vendor")
    text = await (await api.client.get("/metrics")).text()
    for reason in ("signature", "stale", "malformed"):
        assert (
            f'jobline_webhook_rejections_total{{actor="gateway-test",reason="{reason}",'
            f'vendor="replicate"}}' in text
        )


async def test_a_flood_of_forged_webhooks_logs_a_line_not_a_line_each(api: ApiHarness) -> None:
    # Field case: 300 anonymous POSTs wrote 300 WARNING lines to `serve`'s output.
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    gateway_log = logging.getLogger("jobline.gateway")
    handler = Collect(logging.WARNING)
    gateway_log.addHandler(handler)
    try:
        for _ in range(100):
            response = await api.client.post("/v1/webhooks/replicate", data=b"{}")
            assert response.status == 401
    finally:
        gateway_log.removeHandler(handler)
    rejected = [line for line in lines if line.startswith("webhook rejected")]
    assert len(rejected) == 1 and "(signature) from 127.0.0.1" in rejected[0]
    text = await (await api.client.get("/metrics")).text()
    assert (
        'jobline_webhook_rejections_total{actor="gateway-test",reason="signature",'
        'vendor="replicate"} 100.0' in text
    )  # the metric counts each one


# --- dead letters -----------------------------------------------------------------------


async def test_dead_letters_are_listed_and_redriven(api: ApiHarness) -> None:
    account = await api.account(credits=3)
    dead = await api.submitted(account)
    route = api.config.models[dead["model"]].route
    failover = ScheduleRetry(dead["id"], 0, 0.0, "down", len(route) - 1, route[-1].vendor)
    for outcome in await api.ledger.execute_many([failover, Fail(dead["id"], "vendor said no")]):
        outcome.unwrap()

    assert (await api.client.get("/v1/admin/dead-letters")).status == 401
    listing = await (await api.client.get("/v1/admin/dead-letters", headers=api.admin)).json()
    assert [(d["job_id"], d["error"]) for d in listing["dead_letters"]] == [
        (dead["id"], "vendor said no")
    ]

    blocker = await api.submitted(account)  # holds all 3 credits
    url = f"/v1/admin/dead-letters/{dead['id']}/redrive"
    response = await api.client.post(url, headers=api.admin)
    assert (await error_of(response))[:2] == (402, "insufficient_credits")

    await api.client.post(f"/v1/jobs/{blocker['id']}/cancel", headers=account.auth)
    response = await api.client.post(url, headers=api.admin)
    assert response.status == 202
    new = await response.json()
    assert new["redriven_from"] == dead["id"]
    assert new["status"] == "queued"
    assert new["vendor"] == route[0].vendor  # a redrive starts the route over
    await _eventually(lambda: new["id"] in {j.id for j in api.dispatched()})
    again = await api.client.post(url, headers=api.admin)
    assert (await again.json())["id"] == new["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await api.balance(account))["held"] == 3

    missing = await api.client.post("/v1/admin/dead-letters/job_x/redrive", headers=api.admin)
    assert (await error_of(missing))[:2] == (404, "dead_letter_not_found")


# --- operations -------------------------------------------------------------------------


async def test_metrics_count_requests_by_route_template(api: ApiHarness) -> None:
    account = await api.account()
    job = await api.submitted(account)
    await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)
    response = await api.client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert "jobline_http_requests_total" in text
    assert 'jobline_jobs_submitted_total{actor="gateway-test",model="flux-schnell"} 1.0' in text
    assert 'route="/v1/jobs/{id}"' in text
    assert job["id"] not in text
    assert 'jobline_retries_total{actor="processor-test"' in text  # the other actors' too
    # This gateway's series appear once even though collect_all_metrics also returns them.
    assert text.count('jobline_jobs_submitted_total{actor="gateway-test"') == 1


async def test_health_readiness_and_unknown_routes(api: ApiHarness) -> None:
    assert (await api.client.get("/healthz")).status == 200
    ready = await api.client.get("/readyz")
    assert (ready.status, await ready.json()) == (200, {"status": "ready"})
    assert (await error_of(await api.client.get("/v1/nothing")))[:2] == (404, "not_found")
    wrong = await api.client.delete("/v1/jobs")
    assert (await error_of(wrong))[:2] == (405, "method_not_allowed")
    assert set(wrong.headers["Allow"].split(",")) == {"GET", "POST"}


async def test_openapi_documents_every_route(api: ApiHarness) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    assert api.client.app is not None
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in api.client.app.router.routes()
        if route.resource is not None
    }
    documented = {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert served == documented
    schemes = document["components"]["securitySchemes"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "500" in operation["responses"], (method, path)
            for requirement in operation.get("security", document["security"]):
                assert set(requirement) <= set(schemes)
            for name in _path_names(path):
                assert any(p["name"] == name for p in operation.get("parameters", [])), path


async def test_gateway_serves_on_a_free_port(make_api: MakeApi) -> None:
    api = await make_api()
    assert api.client.app is not None
    gateway = Gateway(api.client.app[GATEWAY_API].ctx, "127.0.0.1", 0)
    port = await gateway.start()
    assert port > 0 and gateway.port == port
    assert await gateway.ping()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            assert response.status == 200
        assert any(f.name == "jobline_http_requests" for f in await gateway.collect_metrics())
    finally:
        await gateway.stop()
    assert not await gateway.ping()


async def test_every_request_is_counted_by_route_template_and_status_and_timed(
    make_api: MakeApi,
) -> None:
    api = await make_api()
    account = await api.account()
    job = await api.submitted(account, prompt="counted")
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}", "/v1/jobs/job_nope"):
        await (await api.client.get(path, headers=account.auth)).read()
    await (await api.client.get(f"/v1/jobs/{job['id']}")).read()  # no key: 401
    by_code: dict[str, float] = {}
    timed = 0.0
    for family in api.metrics.collect():
        for sample in family.samples:
            labels = dict(sample.labels)
            if labels.get("route") != "/v1/jobs/{id}":
                continue
            if family.name == "jobline_http_requests" and sample.name.endswith("_total"):
                by_code[labels["code"]] = sample.value
            if sample.name == "jobline_http_request_duration_seconds_count":
                timed = sample.value
    assert by_code == {"200": 2.0, "404": 1.0, "401": 1.0}
    assert timed == 4.0


# --- helpers ----------------------------------------------------------------------------


def _served(api: ApiHarness, route: str) -> float:
    return sum(
        sample.value
        for family in api.metrics.collect()
        if family.name == "jobline_http_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and ("route", route) in sample.labels
    )


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


async def _eventually(check: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
