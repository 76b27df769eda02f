"""The processor rig: VendorProcessors in one process on a real ledger file, real fake
vendors on loopback, the real vendor adapters and result store, and the gateway's webhook
route in miniature; no Ray. ``rig`` is registered as a fixture in ``conftest.py``."""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from actors.processor import VendorProcessor
from actors.wiring import Customization, Ports, Wiring, build_role, processor_role
from loadtests.testbed import ROOT_CONFIG, ensure_dev_secrets, local_config
from runtime.api.webhooks import with_reference
from runtime.config import JoblineConfig, load_config
from runtime.errors import WebhookRejected
from runtime.invariants import check_invariants
from runtime.ledger import Ledger, new_job_id
from runtime.models import (
    CreateAccount,
    Grant,
    Job,
    OpenJob,
)
from runtime.ports import LedgerPort, ProcessorPort
from runtime.results import LocalResultStore
from runtime.states import JobStatus
from runtime.vendors import WebhookEvent, make_client
from tests.ledger_ops import apply_op
from vendors_fake.profile import merge_profile, preset
from vendors_fake.runner import FakeVendorSet, start_fake_vendors, vendor_credentials

IDS = random.Random(5)
FAST = {
    "retry": {"base": 0.02, "cap": 0.2},
    "circuit": {"cooldown": 1.0},
    "vendors.fal": {"poll_interval": 0.1},
    "vendors.replicate": {"poll_interval": 0.1},
}


@dataclass
class Rig:
    config: JoblineConfig
    ledger: Ledger
    fakes: FakeVendorSet
    processors: dict[str, VendorProcessor]
    results: LocalResultStore
    relayed: list[WebhookEvent] = field(default_factory=list)
    answers: list[tuple[str, str]] = field(default_factory=list)  # (webhook id, answer)

    def processor(self, vendor: str) -> ProcessorPort:
        return self.processors[vendor]

    def vendors(self) -> list[str]:
        return list(self.processors)

    def build(
        self,
        role: str,
        seed: int = 0,
        ledger: LedgerPort | None = None,
        customization: Customization | None = None,
    ) -> Any:
        """The role as the wiring builds it, on this rig's ledger, fakes and store."""
        wiring = Wiring(
            seed=seed,
            customization=customization or Customization(),
            vendor_clients=lambda v: make_client(v, *vendor_credentials(v)),
            result_stores=lambda _: self.results,
        )
        ports = Ports(
            ledger=lambda: ledger or cast(LedgerPort, self.ledger),
            processor=self.processor,
            metric_sources=dict,
            vendors=self.vendors(),
        )
        return build_role(role, self.config, wiring, ports)

    def make_processor(
        self,
        vendor: str,
        seed: int = 0,
        ledger: LedgerPort | None = None,
        customization: Customization | None = None,
    ) -> VendorProcessor:
        role = processor_role(vendor)
        processor: VendorProcessor = self.build(role, seed, ledger, customization)
        return processor

    async def open(
        self, model: str, n: int = 1, *, account: str = "acct", **input: Any
    ) -> list[Job]:
        jobs = []
        for i in range(n):
            route = self.config.models[model].route
            job = await apply_op(
                self.ledger,
                OpenJob(
                    new_job_id(time.time(), IDS),
                    account,
                    model,
                    {"prompt": f"p{i}", **input},
                    self.config.models[model].price,
                    f"trace{i:028d}",
                    route[0].vendor,
                    time.time() + 60,
                ),
            )
            jobs.append(job)
        return jobs

    async def dispatch(self, jobs: list[Job]) -> None:
        for job in jobs:
            await self.processors[job.vendor].dispatch([job])

    async def until_processing(self, job: Job) -> None:
        """Until the ledger has ``job`` processing (its task id recorded)."""
        while (await self.ledger.get_job(job.id)).status is not JobStatus.PROCESSING:
            await asyncio.sleep(0.02)

    async def wait(self, jobs: list[Job], timeout: float = 30) -> list[Job]:
        deadline = time.monotonic() + timeout
        while True:
            now = await self.ledger.get_jobs([j.id for j in jobs])
            if all(j is not None and j.terminal for j in now):
                assert check_invariants(self.ledger.path) == []
                return [j for j in now if j is not None]
            assert time.monotonic() < deadline, [j and (j.id, j.status) for j in now]
            await asyncio.sleep(0.05)


async def relay_webhooks(rig: Rig) -> web.AppRunner:
    """The gateway's webhook route in miniature, at the config's ``public_url``: each
    webhook verified in its vendor's scheme, its URL's job and attempt attached, offered
    to the vendor's processor, and forwarded if it did not take it (``runtime.api.webhooks``;
    the answers are in ``rig.answers``)."""
    clients = {
        name: make_client(v, *vendor_credentials(v)) for name, v in rig.config.vendors.items()
    }

    async def receive(request: web.Request) -> web.Response:
        vendor = request.match_info["vendor"]
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            event = await clients[vendor].parse_webhook(
                headers, await request.read(), time.time(), 300
            )
        except WebhookRejected:
            return web.Response(status=401)
        event = with_reference(event, request.query)
        rig.relayed.append(event)
        (answer,) = await rig.processors[vendor].take_webhooks([event])
        rig.answers.append((event.webhook_id, answer))
        if not answer:
            await rig.processors[vendor].on_webhooks([event])
        return web.json_response({"status": "duplicate" if answer == "duplicate" else "accepted"})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/webhooks/{vendor}", receive)

    async def close_clients(_: web.Application) -> None:
        for client in clients.values():
            await client.close()

    app.on_cleanup.append(close_clients)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rig.config.gateway.port).start()
    return runner


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    marker = request.node.get_closest_marker("profile")
    profile = merge_profile(preset("calm"), marker.args[0] if marker else {})
    overrides = request.node.get_closest_marker("overrides")
    base = load_config(ROOT_CONFIG)
    ensure_dev_secrets(base)
    fakes = await start_fake_vendors(
        base, profile.model_copy(update={"concurrency_limit": 10_000}), ports="free"
    )
    config = local_config(
        base, tmp_path, fakes.urls, overrides={**FAST, **(overrides.args[0] if overrides else {})}
    )
    ledger = await Ledger.open(tmp_path / "ledger.db")
    await apply_op(ledger, CreateAccount("acct", "hash"))
    await apply_op(ledger, Grant("acct", 10_000, "g"))
    rig = Rig(config, ledger, fakes, {}, LocalResultStore(tmp_path / "results"))
    for vendor in config.vendors:
        rig.processors[vendor] = rig.make_processor(vendor)
        await rig.processors[vendor].start()
    relay = await relay_webhooks(rig)
    yield rig
    await relay.cleanup()
    for processor in rig.processors.values():
        await processor.stop()
    await ledger.close()
    await fakes.stop()


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0) -> None:
    """Until ``check()`` (a plain or an async predicate) holds."""
    deadline = time.monotonic() + timeout
    while not await _value(check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else result


async def no_slot_taken(rig: Rig, vendor: str = "fal") -> bool:
    return bool((await rig.processors[vendor].stats())["inflight"] == 0)


async def no_orphan(rig: Rig, vendor: str = "fal") -> bool:
    """The ledger keeps no orphan of ``vendor``: a processor ends one in the ledger just
    after its task's slot is free (``EndOrphan``, one write later), so wait for it."""
    return await rig.ledger.orphans(vendor, time.time()) == []
