"""The HTTP API on a real ledger, without Ray: fakes for the processors, a test client.

``ApiHarness`` wires ``runtime.api.build_app`` to a real ``Ledger`` on a temporary
SQLite file, a real ``LocalResultStore``, real vendor clients (only their webhook
parsing is used) and a ``FakeRouter`` whose processors record every call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from loadtests.testbed import ROOT_CONFIG
from runtime.api import GatewayContext, build_app
from runtime.clock import SYSTEM_CLOCK, Clock
from runtime.config import JoblineConfig, load_config
from runtime.config_storage import StorageConfig
from runtime.ledger import Ledger
from runtime.models import Complete, Job, MarkProcessing, StartAttempt
from runtime.results import LocalResultStore, ResultStore, result_key_for
from runtime.telemetry import Family, Metrics
from runtime.tracing import tracer_for
from runtime.vendors import VendorClient, WebhookEvent, make_client

ADMIN_TOKEN = "test-admin-token"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"api-test-webhook-secret-32-bytes").decode()
PNG = b"\x89PNG\r\n\x1a\n" + b"api-test-bytes"


@dataclass
class FakeProcessor:
    """A processor that only records what it is told (and can be made to fail)."""

    vendor: str
    dispatched: list[Job] = field(default_factory=list)
    webhooks: list[WebhookEvent] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    dispatch_calls: int = 0
    stats_calls: int = 0
    circuit: str = "closed"
    broken: bool = False
    webhooks_gate: asyncio.Event | None = None  # set: on_webhooks waits until it is set

    async def dispatch(self, jobs: Sequence[Job]) -> None:
        self.dispatch_calls += 1
        if self.broken:
            raise ConnectionError("processor unreachable")
        self.dispatched.extend(jobs)

    async def on_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        if self.webhooks_gate is not None:
            await self.webhooks_gate.wait()
        self.webhooks.extend(events)

    async def take_webhooks(self, events: Sequence[WebhookEvent]) -> list[str]:
        return [""] * len(events)  # follows no task: the gateway records and forwards them

    async def cancel_tasks(self, job_ids: Sequence[str]) -> None:
        self.canceled.extend(job_ids)

    async def adopt(self, jobs: Sequence[Job]) -> int:
        self.dispatched.extend(jobs)
        return len(jobs)

    async def stats(self) -> dict[str, Any]:
        self.stats_calls += 1
        return {"vendor": self.vendor, "dispatched": len(self.dispatched), "circuit": self.circuit}

    async def collect_metrics(self) -> list[Family]:
        return []


class FakeRouter:
    def __init__(self, vendors: Sequence[str]) -> None:
        self.processors = {vendor: FakeProcessor(vendor) for vendor in vendors}

    def processor(self, vendor: str) -> FakeProcessor:
        return self.processors[vendor]

    def vendors(self) -> list[str]:
        return list(self.processors)


@dataclass
class Account:
    id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class ApiHarness:
    config: JoblineConfig
    ledger: Ledger
    results: ResultStore
    router: FakeRouter
    metrics: Metrics
    client: TestClient[Any, Any]

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def account(self, credits: int = 100, name: str = "test") -> Account:
        response = await self.client.post(
            "/v1/accounts", json={"name": name, "credits": credits}, headers=self.admin
        )
        assert response.status == 201, await response.text()
        body = await response.json()
        return Account(body["account_id"], body["api_key"])

    async def submit(
        self,
        account: Account,
        prompt: str = "a lighthouse at dusk",
        model: str = "flux-schnell",
        key: str | None = None,
    ) -> ClientResponse:
        headers = dict(account.auth)
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.client.post(
            "/v1/jobs", json={"model": model, "input": {"prompt": prompt}}, headers=headers
        )

    async def submitted(self, account: Account, **kwargs: Any) -> dict[str, Any]:
        response = await self.submit(account, **kwargs)
        assert response.status == 202, await response.text()
        body: dict[str, Any] = await response.json()
        return body

    async def balance(self, account: Account) -> dict[str, Any]:
        response = await self.client.get("/v1/credits", headers=account.auth)
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body

    async def complete(self, job_id: str, data: bytes = PNG) -> None:
        """Drive a queued job to completed through the ledger, as a processor would."""
        job = await self.ledger.get_job(job_id)
        await self.ledger.execute_many([StartAttempt(job_id, 1, job.vendor, 0)])
        await self.ledger.execute_many([MarkProcessing(job_id, 1, f"task-{job_id}")])
        key = result_key_for(job_id, "image/png")
        await self.results.put(key, data, "image/png")
        (outcome,) = await self.ledger.execute_many([Complete(job_id, key)])
        outcome.unwrap()

    def dispatched(self) -> list[Job]:
        return [job for p in self.router.processors.values() for job in p.dispatched]


MakeApi = Callable[..., Awaitable[ApiHarness]]


def _config(overrides: dict[str, Any], config: JoblineConfig | None = None) -> JoblineConfig:
    config = config or load_config(ROOT_CONFIG)
    if overrides:
        config = config.model_copy(update={"gateway": config.gateway.model_copy(update=overrides)})
    return config


@pytest.fixture(name="make_api")
async def make_api_fixture(tmp_path: Path) -> AsyncIterator[MakeApi]:
    """``await make_api(admin_token=..., results=..., storage=..., **gateway_overrides)``:
    a served API, torn down after (``results``: a store instead of a fresh directory;
    ``storage``: the ``[storage]`` the gateway is told about; ``config``: instead of the
    root jobline.toml; ``wrap_ledger``: what the gateway gets instead of the ledger,
    made from it)."""
    opened: list[tuple[TestClient[Any, Any], Ledger, list[VendorClient]]] = []

    async def make(
        admin_token: str | None = ADMIN_TOKEN,
        clock: Clock = SYSTEM_CLOCK,
        results: ResultStore | None = None,
        storage: StorageConfig | None = None,
        config: JoblineConfig | None = None,
        wrap_ledger: Callable[[Ledger], Any] | None = None,
        sse_heartbeat_interval: float = 0.1,
        **overrides: Any,
    ) -> ApiHarness:
        config = _config(overrides, config)
        if storage is not None:
            config = config.model_copy(update={"storage": storage})
        data = tmp_path / f"api-{len(opened)}"
        ledger = await Ledger.open(data / "jobline.db", clock=time.time)
        results = results or LocalResultStore(data / "results")
        router = FakeRouter(list(config.vendors))
        metrics = Metrics("gateway-test")
        parsers = {
            name: make_client(vendor, "test-key", WEBHOOK_SECRET)
            for name, vendor in config.vendors.items()
        }
        other = Metrics("processor-test")
        other.retries.labels("fal", "timeout").inc()

        async def collect_all() -> list[Family]:
            return [*other.collect(), *metrics.collect()]

        async def is_ready() -> bool:
            await ledger.counts()
            return True

        ctx = GatewayContext(
            config=config,
            ledger=ledger if wrap_ledger is None else wrap_ledger(ledger),
            router=router,
            results=results,
            webhook_parsers=parsers,
            metrics=metrics,
            tracer=tracer_for("gateway-test", config),
            collect_all_metrics=collect_all,
            clock=clock,
            rng=random.Random(0),
            admin_token=admin_token,
            is_ready=is_ready,
        )
        app = build_app(ctx, sse_poll_interval=0.05, sse_heartbeat_interval=sse_heartbeat_interval)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        opened.append((client, ledger, list(parsers.values())))
        return ApiHarness(config, ledger, results, router, metrics, client)

    yield make
    for client, ledger, parsers in opened:
        await client.close()
        await ledger.close()
        for parser in parsers:
            await parser.close()


@pytest.fixture(name="api")
async def api_fixture(make_api: MakeApi) -> ApiHarness:
    return await make_api()


async def read_events(response: ClientResponse, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every ``data:`` of an event stream until the server ends it."""
    events: list[dict[str, Any]] = []

    async def read() -> None:
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))

    await asyncio.wait_for(read(), timeout)
    return events
