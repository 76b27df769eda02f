"""Roles -> plain objects, every dependency injected. No Ray here
(``actors.hosting.ray_calls`` is the only module that imports it).

A *role* is one object of the running system: the ledger, the sweeper, one processor per
vendor, N gateways. ``build_role`` makes each from the config and a ``Wiring``: the clock
every role reads and sleeps on, a seeded ``random.Random`` per role, the vendor-client,
result-store and tracer factories, how the ledger runs its database work, and the
harness's ``Customization``. A role reaches the
others through ``Ports``: Ray proxies (``actors.hosting``) or the plain objects
themselves (``InProcessRuntime``, below, which runs every role in one event loop on the
clock it is given).

A harness changes what is built through a ``Customization`` (the chaos suite's
deliberately broken builds wrap the vendor client or lift the slot limit), never
through a flag on a product class. It must pickle (Ray sends it to every actor): a
module-level class, which Ray pickles by reference.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from actors.gateway import Gateway
from actors.ledger import CreditLedger
from actors.processor import VendorProcessor
from actors.slots import Slots
from actors.sweeper import Sweeper
from runtime.api import GatewayContext
from runtime.clock import SYSTEM_CLOCK, Clock
from runtime.config import JoblineConfig, VendorConfig
from runtime.errors import ConfigError
from runtime.ledger import THREADED, LedgerMode
from runtime.ports import LedgerPort, ProcessorPort
from runtime.results import ResultStore
from runtime.results_s3 import build_result_store
from runtime.startup import CREATE_LEDGER_FALSE, required_environment
from runtime.telemetry import Family, Metrics
from runtime.tracing import JobTracer, tracer_for
from runtime.vendors import VendorClient, make_client

LEDGER = "ledger"
SWEEPER = "sweeper"
METRICS_TIMEOUT = 3.0
READY_TIMEOUT = 2.0

MetricSource = Callable[[], Awaitable[list[Family]]]


class Role(Protocol):
    async def start(self) -> object: ...

    async def stop(self) -> None: ...

    async def collect_metrics(self) -> list[Family]: ...


def processor_role(vendor: str) -> str:
    return f"processor-{vendor}"


def gateway_role(index: int) -> str:
    return f"gateway-{index}"


def all_roles(config: JoblineConfig, gateways: int | None = None) -> list[str]:
    """Every role, in start order: the ledger first, the gateways last."""
    replicas = config.gateway.replicas if gateways is None else gateways
    return [
        LEDGER,
        SWEEPER,
        *(processor_role(v) for v in config.vendors),
        *(gateway_role(i) for i in range(replicas)),
    ]


def secret_env_names(config: JoblineConfig) -> list[str]:
    """Every environment variable holding a secret: the admin token, vendor keys,
    webhook secrets, the S3 credentials (read on each node, never sent through Ray)."""
    return [requirement.variable for requirement in required_environment(config)]


def vendor_secrets(vendor: VendorConfig) -> tuple[str, str | None]:
    """The vendor's API key and (replicate-shaped) webhook secret, from the environment
    variables it names; a fal-shaped vendor has no secret (its keys are public)."""
    key, secret = vendor.api_key(), vendor.webhook_secret()
    needed = [(key, vendor.api_key_env)]
    if vendor.webhook_secret_env:
        needed.append((secret, vendor.webhook_secret_env))
    for value, env in needed:
        if not value:
            raise ConfigError("environment", env, f"not set (vendors.{vendor.name} needs it)")
    assert key is not None
    return key, secret


def build_client(vendor: VendorConfig) -> VendorClient:
    """The vendor's HTTP adapter, with its key and secret from the environment."""
    key, secret = vendor_secrets(vendor)
    return make_client(vendor, key, secret)


def build_results(config: JoblineConfig) -> ResultStore:
    """The result store ``[storage]`` chooses: a directory, or an S3-compatible bucket."""
    return build_result_store(config.storage)


class Customization:
    """How a harness changes what the wiring builds; the product's own changes nothing.

    Subclass it at module level (so that it pickles by reference) and override a hook.
    """

    def vendor_client(self, client: VendorClient) -> VendorClient:
        """The client every role uses for a vendor (a harness may wrap it)."""
        return client

    def slot_limit(self, vendor: VendorConfig) -> int:
        """How many tasks a processor keeps in flight at its vendor."""
        return vendor.concurrency


@dataclass(frozen=True)
class Wiring:
    """What every role is built with, besides the config."""

    clock: Clock = SYSTEM_CLOCK
    seed: int | None = None  # None: each role's generator is seeded from the OS
    customization: Customization = field(default_factory=Customization)
    vendor_clients: Callable[[VendorConfig], VendorClient] = build_client
    result_stores: Callable[[JoblineConfig], ResultStore] = build_results
    tracers: Callable[[str, JoblineConfig], JobTracer] = tracer_for
    ledger_mode: LedgerMode = THREADED  # inline: no threads (a simulation)
    # Why the ledger's file must already exist (a deployment record, a restarted ledger
    # actor); None: as ``[storage] create_ledger`` says.
    ledger_must_exist: str | None = None

    def rng(self, role: str) -> random.Random:
        """The role's own generator: the same seed and role give the same stream."""
        return random.Random(None if self.seed is None else f"{self.seed}:{role}")

    def client(self, vendor: VendorConfig) -> VendorClient:
        return self.customization.vendor_client(self.vendor_clients(vendor))


class Ports:
    """How a role reaches the others: Ray proxies or plain objects."""

    def __init__(
        self,
        ledger: Callable[[], LedgerPort],
        processor: Callable[[str], ProcessorPort],
        metric_sources: Callable[[], dict[str, MetricSource]],  # by role
        vendors: list[str],
        refresh_roles: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.ledger = ledger
        self._processor = processor
        self.metric_sources = metric_sources
        # Before a gateway asks every role for its metrics: learn which roles exist now.
        self.refresh_roles = refresh_roles
        self._vendors = vendors

    def processor(self, vendor: str) -> ProcessorPort:
        return self._processor(vendor)

    def vendors(self) -> list[str]:
        return list(self._vendors)


def build_role(role: str, config: JoblineConfig, wiring: Wiring, ports: Ports) -> Role:
    """The plain object of ``role``, not started yet."""
    clock = wiring.clock
    metrics = Metrics(role)
    if role == LEDGER:
        must_exist = wiring.ledger_must_exist
        if must_exist is None and not config.storage.create_ledger:
            must_exist = CREATE_LEDGER_FALSE
        path = Path(config.storage.database)
        return CreditLedger(path, clock, metrics, must_exist=must_exist, mode=wiring.ledger_mode)
    tracer = wiring.tracers(role, config)
    if role == SWEEPER:
        clients = {name: wiring.client(v) for name, v in config.vendors.items()}
        results = wiring.result_stores(config)
        return Sweeper(
            config, ports.ledger(), ports, clients, results, clock=clock, metrics=metrics,
            tracer=tracer,
        )  # fmt: skip
    if role.startswith("processor-"):
        vendor = config.vendors[role.removeprefix("processor-")]
        return VendorProcessor(
            vendor,
            config,
            ports.ledger(),
            wiring.client(vendor),
            wiring.result_stores(config),
            ports,
            clock=clock,
            rng=wiring.rng(role),
            slots=Slots(wiring.customization.slot_limit(vendor)),
            metrics=metrics,
            tracer=tracer,
        )
    if role.startswith("gateway-"):

        async def collect_all() -> list[Family]:
            if ports.refresh_roles is not None:
                await ports.refresh_roles()
            return await collect(list(ports.metric_sources().values()))

        async def collect_of(actor: str) -> list[Family] | None:
            if ports.refresh_roles is not None:
                await ports.refresh_roles()
            source = ports.metric_sources().get(actor)
            return None if source is None else await collect([source])

        async def is_ready() -> bool:
            try:
                await asyncio.wait_for(ports.ledger().counts(), timeout=READY_TIMEOUT)
            except Exception:
                return False
            return True

        context = GatewayContext(
            config=config,
            ledger=ports.ledger(),
            router=ports,
            results=wiring.result_stores(config),
            webhook_parsers={name: wiring.client(v) for name, v in config.vendors.items()},
            metrics=metrics,
            tracer=tracer,
            collect_all_metrics=collect_all,
            collect_metrics_of=collect_of,
            clock=clock,
            rng=wiring.rng(role),
            admin_token=config.gateway.admin_token(),
            is_ready=is_ready,
        )
        return Gateway(context, config.gateway.host, config.gateway.port)
    raise ValueError(f"unknown role {role!r}")


async def collect(sources: Sequence[MetricSource]) -> list[Family]:
    """Every source's metric families; a source that fails or is slow misses one scrape."""

    async def one(source: MetricSource) -> list[Family]:
        try:
            return await asyncio.wait_for(source(), timeout=METRICS_TIMEOUT)
        except Exception:  # a restarting actor misses one scrape
            return []

    results = await asyncio.gather(*(one(s) for s in sources))
    return [family for families in results for family in families]


# --- one process -------------------------------------------------------------------------


@dataclass
class InProcessRuntime:
    """Every role in this event loop, on the wiring's clock (tests, a simulation).

    The same classes as on Ray; calls between roles are plain method calls.
    """

    config: JoblineConfig
    objects: dict[str, Role]

    @classmethod
    async def start(
        cls,
        config: JoblineConfig,
        wiring: Wiring | None = None,
        *,
        start_sweeper: bool = True,
    ) -> InProcessRuntime:
        wiring = wiring or Wiring(seed=0)
        objects: dict[str, Role] = {}
        ports = Ports(
            ledger=lambda: cast(LedgerPort, objects[LEDGER]),
            processor=lambda vendor: cast(ProcessorPort, objects[processor_role(vendor)]),
            metric_sources=lambda: {r: o.collect_metrics for r, o in objects.items()},
            vendors=list(config.vendors),
        )
        roles = all_roles(config, gateways=1)
        for role in roles:
            objects[role] = build_role(role, config, wiring, ports)
        for role in roles:
            if role != SWEEPER or start_sweeper:
                await objects[role].start()
        return cls(config, objects)

    def object(self, role: str) -> Role:
        return self.objects[role]

    async def stop(self) -> None:
        for role in reversed(list(self.objects)):
            await self.objects[role].stop()
