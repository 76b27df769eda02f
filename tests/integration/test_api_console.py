"""The API routes added for the console, and the console's pages and assets, over real
sockets on a real ledger with fake processors (no Ray)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from runtime.api import GATEWAY_API
from runtime.console import IMMUTABLE, REVALIDATE
from tests.integration.api_fixtures import (  # noqa: F401
    ApiHarness,
    MakeApi,
    api_fixture,
    make_api_fixture,
)


@dataclass
class Event:
    name: str
    id: str | None
    data: dict[str, Any]


class EventReader:
    """Reads server-sent events off a response that does not end."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments = 0

    async def next(self, timeout: float = 5.0) -> Event:
        name, id_, data = "message", None, []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                assert raw, "the stream ended"
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data:
                        return Event(name, id_, json.loads("\n".join(data)))
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                field, _, value = line.partition(": ")
                if field == "event":
                    name = value
                elif field == "id":
                    id_ = value
                elif field == "data":
                    data.append(value)

    async def statuses(self, n: int) -> list[Event]:
        events = [await self.next() for _ in range(n)]
        assert all(e.name == "status" for e in events), events
        return events


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await response.json()
    assert set(body) == {"error"}, body
    return response.status, body["error"]["code"]


async def eventually(check: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def served(api: ApiHarness, route: str) -> float:
    return sum(
        sample.value
        for family in api.metrics.collect()
        if family.name == "jobline_http_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and ("route", route) in sample.labels
    )


# --- models ---------------------------------------------------------------------------


async def test_models_lists_every_model_with_its_price_and_input_schema(api: ApiHarness) -> None:
    assert (await api.client.get("/v1/models")).status == 401
    account = await api.account()
    response = await api.client.get("/v1/models", headers=account.auth)
    assert response.status == 200
    models = {m["name"]: m for m in (await response.json())["models"]}
    assert set(models) == set(api.config.models)
    for name, model in api.config.models.items():
        assert models[name]["price"] == model.price
        assert models[name]["input_schema"] == model.input_schema


# --- the account-wide event stream --------------------------------------------------------


async def test_account_events_carry_every_change_of_the_accounts_jobs_only(
    api: ApiHarness,
) -> None:
    mine, other = await api.account(), await api.account(name="other")
    response = await api.client.get("/v1/events", headers=mine.auth)
    assert (response.status, response.content_type) == (200, "text/event-stream")
    events = EventReader(response)
    ready = await events.next()
    assert ready.name == "ready" and ready.id == ready.data["event_id"]

    job = await api.submitted(mine)
    await api.submitted(other)  # never on this stream
    second = await api.submitted(mine)
    await api.complete(job["id"])
    got = await events.statuses(4)
    assert [(e.data["job_id"], e.data["status"]) for e in got] == [
        (job["id"], "queued"),
        (second["id"], "queued"),
        (job["id"], "processing"),
        (job["id"], "completed"),
    ]
    assert [e.id for e in got] == [e.data["event_id"] for e in got]
    assert len({ready.id, *(e.id for e in got)}) == 5
    assert got[3].data["job"]["result_url"] == f"/v1/jobs/{job['id']}/result"
    assert {e.data["job"]["id"] for e in got} <= {job["id"], second["id"]}
    response.close()


async def test_an_accounts_open_event_streams_are_capped_with_a_429_naming_the_setting(
    make_api: MakeApi,
) -> None:
    """Review of issue 13: 200 concurrent GET /v1/events of one account were all taken,
    each reading the ledger on every wake-up (300 slowed another account's reads 27-fold).
    Account and job streams count together; another account is not affected; a closed
    stream frees its place."""
    # Heartbeats far apart (as in production: 15 s): a closed stream is noticed anyway.
    api = await make_api(event_streams_per_account=2, sse_heartbeat_interval=60.0)
    mine, other = await api.account(), await api.account(name="other")
    job = await api.submitted(mine)
    first = await api.client.get("/v1/events", headers=mine.auth)
    await EventReader(first).next()
    second = await api.client.get(f"/v1/jobs/{job['id']}/events", headers=mine.auth)
    assert second.status == 200
    await EventReader(second).next()
    for path in ("/v1/events", f"/v1/jobs/{job['id']}/events"):
        refused = await api.client.get(path, headers=mine.auth)
        if refused.status != 429:
            refused.close()  # a stream taken: its body never ends
        assert refused.status == 429, path
        body = await refused.json()
        assert body["error"]["code"] == "too_many_streams"
        assert "gateway.event_streams_per_account" in body["error"]["message"]
        assert int(refused.headers["Retry-After"]) > 0
    theirs = await api.client.get("/v1/events", headers=other.auth)
    assert theirs.status == 200
    theirs.close()
    first.close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the closed stream within its poll interval
        again = await api.client.get("/v1/events", headers=mine.auth)
        if again.status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert again.status == 200
    again.close()
    second.close()


async def test_an_account_streams_ledger_reads_wait_for_the_accounts_read_slot(
    make_api: MakeApi,
) -> None:
    """Review of issue 13: event streams read the ledger outside
    ``reads_in_flight_per_account``; while the account's one slot is taken, its stream
    sends nothing, and it sends as soon as the slot is free."""
    api = await make_api(reads_in_flight_per_account=1)
    account = await api.account()
    response = await api.client.get("/v1/events", headers=account.auth)
    events = EventReader(response)
    await events.next()  # ready
    assert api.client.app is not None
    reads = api.client.app[GATEWAY_API].reads
    async with reads.slot(account.id):  # a statement read of the account, say
        job = await api.submitted(account)
        pending = asyncio.ensure_future(events.statuses(1))
        await asyncio.sleep(0.5)
        assert not pending.done()  # the stream waits its turn
    (event,) = await asyncio.wait_for(pending, 5)
    assert event.data["job_id"] == job["id"]
    response.close()


async def test_account_events_resume_after_last_event_id(api: ApiHarness) -> None:
    account = await api.account()
    first = await api.submitted(account)
    response = await api.client.get("/v1/events", headers=account.auth)
    events = EventReader(response)
    await events.next()  # ready
    await api.complete(first["id"])
    processing, _ = await events.statuses(2)
    response.close()

    resume = {**account.auth, "Last-Event-ID": processing.id or ""}
    response = await api.client.get("/v1/events", headers=resume)
    events = EventReader(response)
    ready = await events.next()
    assert ready.id == processing.id
    (completed,) = await events.statuses(1)
    assert (completed.data["job_id"], completed.data["status"]) == (first["id"], "completed")
    response.close()

    # An id from the whole history replays it; one that is no event id starts now.
    replay = await api.client.get("/v1/events", headers={**account.auth, "Last-Event-ID": "0"})
    events = EventReader(replay)
    await events.next()
    assert [e.data["status"] for e in await events.statuses(3)] == [
        "queued",
        "processing",
        "completed",
    ]
    replay.close()
    head = completed.id
    for bogus in ("nope", "-1", "9" * 40, "99999999", "A" * 22, head[:-1] + "x"):
        fresh = await api.client.get("/v1/events", headers={**account.auth, "Last-Event-ID": bogus})
        events = EventReader(fresh)
        ready = await events.next()
        assert ready.id == head, bogus  # now: not the start, not the future
        later = await api.submitted(account)
        (event,) = await events.statuses(1)
        assert event.data["job_id"] == later["id"]
        head = event.id or ""
        fresh.close()


async def test_account_event_ids_tell_nothing_of_other_accounts_traffic(api: ApiHarness) -> None:
    # issue 13's leftover: ids were the global history seq, so two of one's own events
    # (or two connections a minute apart) counted every other tenant's status changes.
    mine, other = await api.account(), await api.account(name="other")
    response = await api.client.get("/v1/events", headers=mine.auth)
    events = EventReader(response)
    ready = await events.next()
    first = await api.submitted(mine)
    (before,) = await events.statuses(1)
    for _ in range(5):
        await api.submitted(other)  # five status changes of another tenant
    second = await api.submitted(mine)
    (after,) = await events.statuses(1)
    response.close()
    assert (before.data["job_id"], after.data["job_id"]) == (first["id"], second["id"])
    shown = [ready.id or "", before.id or "", after.id or ""]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in shown), shown
    assert not any(i.isdigit() for i in shown)
    assert all(k not in e.data for e in (ready, before, after) for k in ("seq",))
    # An id works for its own account only: another account's stream starts now with it.
    theirs = await api.client.get(
        "/v1/events", headers={**other.auth, "Last-Event-ID": before.id or ""}
    )
    their_ready = await EventReader(theirs).next()
    assert their_ready.id != before.id
    theirs.close()
    # ... and resumes its own account's stream exactly after it.
    resumed = await api.client.get(
        "/v1/events", headers={**mine.auth, "Last-Event-ID": before.id or ""}
    )
    reader = EventReader(resumed)
    assert (await reader.next()).id == before.id
    (again,) = await reader.statuses(1)
    assert (again.id, again.data["job_id"]) == (after.id, second["id"])
    resumed.close()


async def test_account_events_send_heartbeats_and_end_when_the_client_leaves(
    api: ApiHarness,
) -> None:
    account = await api.account()
    response = await api.client.get("/v1/events", headers=account.auth)
    events = EventReader(response)
    await events.next()
    await asyncio.sleep(0.35)  # heartbeats every 0.1 s in the harness
    job = await api.submitted(account)
    (event,) = await events.statuses(1)
    assert event.data["job_id"] == job["id"] and events.comments >= 2
    response.close()
    await eventually(lambda: served(api, "/v1/events") == 1)


async def test_stopping_the_app_ends_open_account_streams(api: ApiHarness) -> None:
    account = await api.account()
    streams = [await api.client.get("/v1/events", headers=account.auth) for _ in range(3)]
    for response in streams:
        await EventReader(response).next()
    started = time.monotonic()
    await api.client.close()
    assert time.monotonic() - started < 3


async def test_many_streams_share_one_history_read_per_poll(api: ApiHarness) -> None:
    accounts = [await api.account(name=f"a{i}") for i in range(4)]
    reads = 0
    ledger = api.ledger
    original = ledger.accounts_changed

    async def counted(after: int | None, limit: int = 5000) -> tuple[int, list[str]]:
        nonlocal reads
        reads += 1
        return await original(after, limit)

    ledger.accounts_changed = counted  # type: ignore[method-assign]
    streams = []
    for account in accounts:
        for _ in range(3):
            response = await api.client.get("/v1/events", headers=account.auth)
            await EventReader(response).next()
            streams.append(response)
    reads = 0
    await asyncio.sleep(0.5)  # ten polls at 0.05 s
    assert 5 <= reads <= 14  # one per poll for all twelve streams, not twelve
    for response in streams:
        response.close()


async def test_account_events_need_an_api_key(api: ApiHarness) -> None:
    response = await api.client.get("/v1/events")
    assert await error_of(response) == (401, "unauthorized")


# --- a finished job's own stream ----------------------------------------------------------


async def test_a_finished_jobs_stream_is_204_once_every_event_was_sent(api: ApiHarness) -> None:
    account = await api.account()
    job = await api.submitted(account)
    await api.complete(job["id"])
    # Not seen yet: the whole history, then the stream ends (200).
    response = await api.client.get(f"/v1/jobs/{job['id']}/events", headers=account.auth)
    assert response.status == 200
    body = await response.text()
    ids = re.findall(r"^id: ([A-Za-z0-9_-]{22})$", body, re.MULTILINE)
    assert len(ids) == 3
    # The browser reconnects with the last id: 204, and it stops.
    again = {**account.auth, "Last-Event-ID": ids[-1]}
    response = await api.client.get(f"/v1/jobs/{job['id']}/events", headers=again)
    assert response.status == 204 and await response.read() == b""
    assert response.headers["X-Jobline-Trace-Id"] == job["trace_id"]


# --- operator reads -----------------------------------------------------------------------


async def test_vendors_shows_each_processor_and_an_unreachable_one(api: ApiHarness) -> None:
    assert (await api.client.get("/v1/admin/vendors")).status == 401
    account = await api.account()
    # an account's key is authenticated, not allowed
    assert (await api.client.get("/v1/admin/vendors", headers=account.auth)).status == 403

    async def unreachable() -> dict[str, Any]:
        raise ConnectionError("processor restarting")

    async def fal_stats() -> dict[str, Any]:
        return {"inflight": 3, "wasted": {"timeout": 2, "late_orphan": 1}}

    api.router.processors["replicate"].stats = unreachable  # type: ignore[method-assign]
    api.router.processors["fal"].stats = fal_stats  # type: ignore[method-assign]
    response = await api.client.get("/v1/admin/vendors", headers=api.admin)
    assert response.status == 200
    vendors = {v["vendor"]: v for v in (await response.json())["vendors"]}
    assert set(vendors) == set(api.config.vendors)
    fal = vendors["fal"]
    assert (fal["limit"], fal["api"], fal["reachable"]) == (8, "fal", True)
    assert fal["rate_limit"] == api.config.vendors["fal"].requests_per_second
    assert (fal["in_flight"], fal["wasted"], fal["late_orphans"]) == (3, 3, 1)
    replicate = vendors["replicate"]
    assert (replicate["reachable"], replicate["in_flight"], replicate["wasted"]) == (
        False,
        None,
        None,
    )
    assert "processor restarting" in replicate["error"]


async def test_accounts_are_paged_newest_first_with_grants(api: ApiHarness) -> None:
    made = [await api.account(credits=10 * (i + 1), name=f"n{i}") for i in range(5)]
    await api.client.post(
        f"/v1/accounts/{made[0].id}/credits", json={"amount": 7}, headers=api.admin
    )
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = await api.client.get(f"/v1/admin/accounts{query}", headers=api.admin)
        assert response.status == 200
        page = await response.json()
        seen.extend(page["accounts"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [a["account_id"] for a in seen] == [a.id for a in reversed(made)]
    oldest = seen[-1]
    assert oldest["grants"]["count"] == 2 and oldest["grants"]["total"] == 17
    assert oldest["balance"] == oldest["available"] == 17


async def test_bad_account_pages_are_400(api: ApiHarness) -> None:
    for query in ("limit=0", "limit=201", "limit=x", "cursor=abc", "cursor=1.5", "cursor=%00/x"):
        response = await api.client.get(f"/v1/admin/accounts?{query}", headers=api.admin)
        assert (await error_of(response))[0] == 400, query
    assert (await api.client.get("/v1/admin/accounts")).status == 401


# --- the console's pages and assets ---------------------------------------------------------


async def test_console_pages_and_assets_are_served_for_long_caching(api: ApiHarness) -> None:
    response = await api.client.get("/console", allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (302, "/console/studio")
    for path in ("/console/studio", "/console/history", "/console/operator", "/docs"):
        response = await api.client.get(path)
        assert (response.status, response.content_type) == (200, "text/html"), path
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == REVALIDATE
        page = await response.text()
        assert '<meta name="viewport"' in page and "{{" not in page
        for url in re.findall(r'(?:href|src)="(/console/assets/[^"]+)"', page):
            asset = await api.client.get(url)
            assert asset.status == 200, url
            assert asset.headers["Cache-Control"] == IMMUTABLE, url
            assert asset.content_type in ("text/css", "text/javascript"), url
            # The same file without its hash: revalidated by ETag.
            bare = await api.client.get(url.split("?")[0])
            assert bare.headers["Cache-Control"] == REVALIDATE
            etag = bare.headers["ETag"]
            again = await api.client.get(url.split("?")[0], headers={"If-None-Match": etag})
            assert again.status == 304
    for missing in ("/console/assets/nope.js", "/console/assets/../__init__.py"):
        response = await api.client.get(missing)
        assert (await error_of(response)) == (404, "not_found"), missing


async def test_a_path_with_a_trailing_slash_redirects_to_the_canonical_one(
    api: ApiHarness,
) -> None:
    # Field case: /console/ and /docs/ answered 404.
    for path, canonical in (
        ("/console/", "/console"),
        ("/docs/", "/docs"),
        ("/console/studio/", "/console/studio"),
    ):
        response = await api.client.get(path, allow_redirects=False)
        assert response.status in (301, 308), path
        assert response.headers["Location"] == canonical, path
    response = await api.client.get("/docs/")  # followed: the page itself
    assert (response.status, response.content_type) == (200, "text/html")
    assert (await api.client.get("/no-such-page/", allow_redirects=False)).status == 404
