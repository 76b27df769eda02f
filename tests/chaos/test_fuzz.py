"""Hostile input (issue 5): the API fuzzer against the real gateway, and against a broken one.

The real gateway runs in this process (``Testbed(mode="in-process")``: no Ray, the same
actor classes) with fake vendors on loopback; the fuzzer talks to it over HTTP only.
A tiny aiohttp app with planted bugs shows that every kind of check can fail.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from loadtests.chaos.fuzz import CATEGORIES, Known, all_requests, fuzz_api, plan_requests
from loadtests.testbed import ROOT_CONFIG, TERMINAL, Testbed
from runtime.api.openapi import openapi_document
from runtime.config import load_config
from runtime.invariants import check_invariants

SEED = 5
EXAMPLES = 25
CREDITS = 100_000
OTHER_CREDITS = 1_000


def _ledger_rows(db: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_the_gateway_survives_hostile_input_with_its_money_intact(tmp_path: Path) -> None:
    async with Testbed(tmp_path, mode="in-process", seed=SEED, credits=CREDITS) as bed:
        client = bed.client
        other_id, other_key = await client.create_account(OTHER_CREDITS, name="other")

        report = await fuzz_api(
            client.base_url,
            client.api_key,
            other_key,
            client.admin_token,
            seed=SEED,
            examples=EXAMPLES,
        )

        assert report.problems == [], report.summary()
        assert all(report.tried[category] > 0 for category in CATEGORIES), report.tried
        documented = json.loads(json.dumps(openapi_document(bed.config)))
        operation_ids = {
            op["operationId"] for item in documented["paths"].values() for op in item.values()
        }
        assert set(report.operations) == operation_ids  # every operation was fuzzed
        assert report.statuses.get(0, 0) == 0  # every request got an HTTP answer

        # A job is canceled only by a cancel that was answered 2xx.
        db = bed.config.storage.database
        canceled = _ledger_rows(db, "SELECT id FROM jobs WHERE status = 'canceled'")
        assert {job_id for (job_id,) in canceled} <= set(report.canceled_jobs)

        # Settle what is still in flight, so the money stops moving.
        owners = {bed.account_id: client.api_key, other_id: other_key}
        open_jobs = "SELECT id, account_id FROM jobs WHERE status IN ('queued', 'processing')"
        for job_id, account in _ledger_rows(db, open_jobs):
            status, body = await client.request(
                "POST", f"/v1/jobs/{job_id}/cancel", api_key=owners[account]
            )
            assert status in (200, 409), body
        assert check_invariants(db) == []

        # Every job in the ledger was answered 2xx; a rejected request made none.
        jobs = _ledger_rows(db, "SELECT id, account_id, status, cost FROM jobs")
        assert {job_id for job_id, *_ in jobs} == set(report.accepted_jobs)
        assert all(status in TERMINAL for _, _, status, _ in jobs)

        # Each account holds what it was granted, less what its completed jobs cost.
        captured: dict[str, int] = defaultdict(int)
        for _, account, status, cost in jobs:
            if status == "completed":
                captured[account] += cost
        for account, key, start in (
            (bed.account_id, client.api_key, CREDITS),
            (other_id, other_key, OTHER_CREDITS),
        ):
            granted = start + report.granted.get(account, 0)
            balance = granted - captured[account]
            assert await client.credits(api_key=key) == {
                "account_id": account,
                "balance": balance,
                "held": 0,
                "available": balance,
            }
            entries = await client.entries(api_key=key)
            assert sum(e["amount"] for e in entries if e["kind"] == "grant") == granted


def test_the_fuzzer_does_not_import_ray() -> None:
    # A fresh interpreter: this one has Ray loaded already (the testbed's hosting does).
    code = (
        "import sys, loadtests.chaos.fuzz, loadtests.chaos.fuzz_schema; "
        "sys.exit('ray' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_seed_gives_the_same_plan() -> None:
    doc = json.loads(json.dumps(openapi_document(load_config(ROOT_CONFIG))))
    known = Known("acct_a", "acct_b", ("job_a1", "job_a2"), ("job_b1",))
    first = all_requests(plan_requests(doc, known, seed=1, examples=5))
    again = all_requests(plan_requests(doc, known, seed=1, examples=5))
    other = all_requests(plan_requests(doc, known, seed=2, examples=5))
    assert first == again
    assert first != other
    # Secrets are placeholders in a plan, filled in only when a request is sent.
    assert any("<admin_token:chopped>" in value for r in first for _, value in r.headers)


# --- a gateway with planted bugs ----------------------------------------------------------

KEYS = {"key-a": "acct_a", "key-b": "acct_b"}
ADMIN_TOKEN = "admin-secret"
_BROKEN_DOC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "broken", "version": "1"},
    "security": [{"apiKey": []}],
    "paths": {
        "/v1/credits": {"get": {"operationId": "getCredits", "responses": {"200": {}}}},
        "/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["prompt"],
                                "additionalProperties": False,
                                "properties": {"prompt": {"type": "string", "minLength": 1}},
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "id": {"type": "string"},
                                        "status": {"type": "string"},
                                    },
                                }
                            }
                        }
                    },
                    "400": {},
                    "401": {},
                },
            },
            "get": {"operationId": "listJobs", "responses": {"200": {}, "401": {}}},
        },
        "/v1/jobs/{id}": {
            "get": {
                "operationId": "getJob",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {}, "401": {}, "404": {}},
            }
        },
        "/v1/things": {
            "get": {
                "operationId": "listThings",
                "parameters": [{"name": "n", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": {}, "401": {}},
            }
        },
        "/v1/open": {"get": {"operationId": "open", "responses": {"200": {}, "401": {}}}},
        "/v1/admin/reset": {
            "post": {
                "operationId": "reset",
                "security": [{"adminToken": []}],
                "responses": {"200": {}, "401": {}},
            }
        },
    },
}


def broken_app() -> web.Application:
    """Planted bugs: a 500, two auth holes, a cross-account leak, a rejected request's job."""
    jobs: dict[str, str] = {}  # job id -> account

    def account(request: web.Request) -> str:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or key not in KEYS:
            raise web.HTTPUnauthorized()
        return KEYS[key]

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(_BROKEN_DOC)

    async def credits(request: web.Request) -> web.Response:
        return web.json_response({"account_id": account(request)})

    async def submit(request: web.Request) -> web.Response:
        owner = account(request)
        job_id = f"job_{len(jobs)}"
        jobs[job_id] = owner  # BUG: written before the body is checked
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise web.HTTPBadRequest() from None
        if not isinstance(body, dict) or set(body) != {"prompt"} or not body["prompt"]:
            raise web.HTTPBadRequest()
        return web.json_response({"id": job_id, "status": "queued"}, status=202)

    async def list_jobs(request: web.Request) -> web.Response:
        owner = account(request)
        mine = [{"id": j, "status": "queued"} for j, a in jobs.items() if a == owner]
        return web.json_response({"jobs": mine, "next_cursor": None})

    async def get_job(request: web.Request) -> web.Response:
        account(request)
        job_id = request.match_info["id"]
        if job_id not in jobs:  # BUG: another account's job is found too
            raise web.HTTPNotFound()
        return web.json_response({"id": job_id, "status": "queued"})

    async def things(request: web.Request) -> web.Response:
        account(request)
        return web.json_response({"n": int(request.query.get("n", "1"))})  # BUG: 500 on "abc"

    async def open_route(request: web.Request) -> web.Response:
        if not request.headers.get("Authorization", "").startswith("Bearer"):  # BUG
            raise web.HTTPUnauthorized()
        return web.json_response({"ok": True})

    async def reset(request: web.Request) -> web.Response:
        return web.json_response({"reset": True})  # BUG: no admin check at all

    app = web.Application()
    app.add_routes(
        [
            web.get("/openapi.json", openapi),
            web.get("/v1/credits", credits),
            web.post("/v1/jobs", submit),
            web.get("/v1/jobs", list_jobs),
            web.get("/v1/jobs/{id}", get_job),
            web.get("/v1/things", things),
            web.get("/v1/open", open_route),
            web.post("/v1/admin/reset", reset),
        ]
    )
    return app


@pytest.fixture
async def broken_url() -> AsyncIterator[str]:
    runner = web.AppRunner(broken_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_the_fuzzer_reports_every_planted_bug(broken_url: str) -> None:
    report = await fuzz_api(broken_url, "key-a", "key-b", ADMIN_TOKEN, seed=SEED, examples=10)

    def found(reason: str, path: str = "") -> bool:
        return any(
            reason in p.reason and (p.request is None or path in p.request.path)
            for p in report.problems
        )

    assert found("server error", "/v1/things?n="), report.summary()
    assert found("auth bypass", "/v1/open"), report.summary()
    assert found("admin route answered 2xx without the admin token", "/v1/admin/reset")
    assert found("another account's job must be 404", "/v1/jobs/job_")
    assert found("exists; no request got a 2xx")  # the audit: a rejected submit made a job
    # Each problem names its request (or, from the audit, the category before it).
    assert all(p.request is not None or p.category in CATEGORIES for p in report.problems)
