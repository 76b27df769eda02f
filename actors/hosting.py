"""Where jobline's plain actor classes meet Ray. All Ray API calls are made here.

Every actor (the CreditLedger, one VendorProcessor per vendor, N Gateways, the
Sweeper) is a plain class with async methods and injected dependencies. This module
builds them in one of two ways:

- ``RayRuntime``: each object lives in its own named Ray actor (``_ActorHost``), which
  builds and starts it in ``__init__`` — so a restarted actor (``max_restarts``)
  reopens the database, reloads its jobs and re-binds its port by itself. Other
  actors reach it through ``RemoteProxy``: ``await proxy.method(*args)`` becomes
  ``host.call.remote("method", *args)``. Calls are retried across restarts
  (``max_task_retries``), which is safe because every ledger operation and every
  processor call is idempotent.
- ``InProcessRuntime``: the same objects wired together in one event loop, for fast
  tests and a deterministic simulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import ray

from actors.gateway import Gateway
from actors.ledger import CreditLedger
from actors.processor import VendorProcessor
from actors.sweeper import Sweeper
from runtime.api import GatewayContext
from runtime.config import JoblineConfig, VendorConfig
from runtime.errors import ConfigError
from runtime.ports import LedgerPort, ProcessorPort
from runtime.results import LocalResultStore, ResultStore
from runtime.telemetry import Family, Metrics, configure_logging, get_logger
from runtime.tracing import TRACING_ENV
from runtime.vendors import VendorClient, make_client

log = get_logger("hosting")

LEDGER = "ledger"
SWEEPER = "sweeper"
METRICS_TIMEOUT = 3.0


def processor_role(vendor: str) -> str:
    return f"processor-{vendor}"


def gateway_role(index: int) -> str:
    return f"gateway-{index}"


def secret_env_names(config: JoblineConfig) -> list[str]:
    names = [config.gateway.admin_token_env]
    for vendor in config.vendors.values():
        names.append(vendor.api_key_env)
        if vendor.webhook_secret_env:  # replicate-shaped; fal publishes public keys
            names.append(vendor.webhook_secret_env)
    return names


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
    key, secret = vendor_secrets(vendor)
    return make_client(vendor, key, secret)


def build_results(config: JoblineConfig) -> ResultStore:
    return LocalResultStore(Path(config.storage.results))


# --- building each role ------------------------------------------------------------------


class _Ports:
    """How a role reaches the others: Ray proxies or plain objects."""

    def __init__(
        self,
        ledger: Callable[[], LedgerPort],
        processor: Callable[[str], ProcessorPort],
        metric_sources: Callable[[], list[Callable[[], Awaitable[list[Family]]]]],
        vendors: list[str],
    ) -> None:
        self.ledger = ledger
        self._processor = processor
        self.metric_sources = metric_sources
        self._vendors = vendors

    def processor(self, vendor: str) -> ProcessorPort:
        return self._processor(vendor)

    def vendors(self) -> list[str]:
        return list(self._vendors)


# Deliberately broken builds, for the chaos suite's test that its checks can fail:
# processors that ignore their vendor's concurrency limit, or start every task twice.
BROKEN_BUILDS = frozenset({"ignore-slot-limit", "double-submit"})


class _DoubleSubmit:
    """A vendor client that starts every task twice (the ``double-submit`` broken build)."""

    def __init__(self, client: VendorClient) -> None:
        self._client = client

    async def submit(self, model: str, input: dict[str, Any], **kwargs: Any) -> str:
        await self._client.submit(model, input, **kwargs)
        return await self._client.submit(model, input, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _build(
    role: str,
    config: JoblineConfig,
    ports: _Ports,
    seed: int | None,
    broken: frozenset[str] = frozenset(),
) -> Any:
    clock = time.time
    if role == LEDGER:
        return CreditLedger(Path(config.storage.database), clock)
    if role == SWEEPER:
        clients = {name: build_client(v) for name, v in config.vendors.items()}
        return Sweeper(config, ports.ledger(), ports, clients, build_results(config), clock=clock)
    if role.startswith("processor-"):
        vendor = config.vendors[role.removeprefix("processor-")]
        client = build_client(vendor)
        if "double-submit" in broken:
            client = cast(VendorClient, _DoubleSubmit(client))
        return VendorProcessor(
            vendor,
            config,
            ports.ledger(),
            client,
            build_results(config),
            ports,
            clock=clock,
            rng=random.Random(seed),
            enforce_slots="ignore-slot-limit" not in broken,
        )
    if role.startswith("gateway-"):
        metrics = Metrics(role)

        async def collect_all() -> list[Family]:
            return await _collect(ports.metric_sources())

        async def is_ready() -> bool:
            try:
                await asyncio.wait_for(ports.ledger().counts(), timeout=2.0)
            except Exception:
                return False
            return True

        context = GatewayContext(
            config=config,
            ledger=ports.ledger(),
            router=ports,
            results=build_results(config),
            webhook_parsers={name: build_client(v) for name, v in config.vendors.items()},
            metrics=metrics,
            collect_all_metrics=collect_all,
            clock=clock,
            admin_token=config.gateway.admin_token(),
            is_ready=is_ready,
        )
        return Gateway(context, config.gateway.host, config.gateway.port)
    raise ValueError(f"unknown role {role!r}")


async def _collect(sources: Sequence[Callable[[], Awaitable[list[Family]]]]) -> list[Family]:
    async def one(source: Callable[[], Awaitable[list[Family]]]) -> list[Family]:
        try:
            return await asyncio.wait_for(source(), timeout=METRICS_TIMEOUT)
        except Exception:  # a restarting actor misses one scrape
            return []

    results = await asyncio.gather(*(one(s) for s in sources))
    return [family for families in results for family in families]


# --- Ray ---------------------------------------------------------------------------------


class RemoteProxy:
    """``await proxy.method(*args)`` runs ``method`` on the object inside a Ray actor."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        handle = self._handle

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await handle.call.remote(name, *args, **kwargs)

        return call


class _ActorHost:
    """Runs one jobline object inside a Ray actor and forwards calls to it."""

    def __init__(
        self,
        role: str,
        config: JoblineConfig,
        seed: int | None,
        broken: frozenset[str] = frozenset(),
    ) -> None:
        configure_logging()
        self._role = role
        namespace = config.ray.namespace
        handles: dict[str, RemoteProxy] = {}

        def proxy(target: str) -> RemoteProxy:
            if target not in handles:
                handles[target] = RemoteProxy(
                    ray.get_actor(actor_name(target), namespace=namespace)
                )
            return handles[target]

        def sources() -> list[Callable[[], Awaitable[list[Family]]]]:
            roles = _all_roles(config)
            return [(self._own_metrics if r == role else proxy(r).collect_metrics) for r in roles]

        ports = _Ports(
            ledger=lambda: cast(LedgerPort, proxy(LEDGER)),
            processor=lambda vendor: cast(ProcessorPort, proxy(processor_role(vendor))),
            metric_sources=sources,
            vendors=list(config.vendors),
        )
        self._object = _build(role, config, ports, seed, broken)
        self._started = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        await self._object.start()

    async def _own_metrics(self) -> list[Family]:
        families: list[Family] = await self._object.collect_metrics()
        return families

    async def ready(self) -> Any:
        await asyncio.shield(self._started)
        return getattr(self._object, "port", True)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        await asyncio.shield(self._started)
        return await getattr(self._object, method)(*args, **kwargs)

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


def actor_name(role: str) -> str:
    return f"jobline-{role}"


def _all_roles(config: JoblineConfig) -> list[str]:
    return [
        LEDGER,
        SWEEPER,
        *(processor_role(v) for v in config.vendors),
        *(gateway_role(i) for i in range(config.gateway.replicas)),
    ]


@dataclass
class RayRuntime:
    """The runtime on a Ray cluster (local, or joined with ``address``)."""

    config: JoblineConfig
    handles: dict[str, Any] = field(default_factory=dict)
    started_ray: bool = False
    broken: frozenset[str] = frozenset()

    @classmethod
    def start(
        cls,
        config: JoblineConfig,
        *,
        address: str | None = None,
        seed: int | None = None,
        ready_timeout: float = 60.0,
        broken: frozenset[str] = frozenset(),
    ) -> RayRuntime:
        """Start every actor; ``broken`` names deliberately broken parts (chaos tests only)."""
        unknown = broken - BROKEN_BUILDS
        if unknown:
            raise ValueError(f"unknown broken builds {sorted(unknown)}")
        runtime = cls(config, broken=broken)
        if not ray.is_initialized():
            runtime.started_ray = True
            # "" in the config means a Ray of our own: "local" never joins a cluster that
            # someone else started on this machine (ray.init(None) would).
            init_address = address if address is not None else (config.ray.address or "local")
            ray.init(
                address=init_address,
                namespace=config.ray.namespace,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                runtime_env={"env_vars": _secret_env(config)},
            )
        for role in _all_roles(config):
            runtime._create(role, seed)
        runtime.wait_ready(ready_timeout)
        return runtime

    def _create(self, role: str, seed: int | None) -> None:
        options: dict[str, Any] = {
            "name": actor_name(role),
            "namespace": self.config.ray.namespace,
            "max_restarts": self.config.ray.max_restarts,
            "max_task_retries": -1 if not role.startswith("gateway-") else 0,
            "num_cpus": 0,
            "max_concurrency": 10_000,
            "runtime_env": {"env_vars": _secret_env(self.config)},
        }
        if role.startswith("processor-") and self.config.ray.processor_resources:
            options["resources"] = dict(self.config.ray.processor_resources)
        host = ray.remote(_ActorHost).options(**options)
        role_seed = None if seed is None else hash((seed, role)) & 0xFFFFFFFF
        self.handles[role] = host.remote(role, self.config, role_seed, self.broken)

    def wait_ready(self, timeout: float = 60.0) -> None:
        ray.get([h.ready.remote() for h in self.handles.values()], timeout=timeout)

    def proxy(self, role: str) -> RemoteProxy:
        return RemoteProxy(self.handles[role])

    def call(self, role: str, method: str, *args: Any, timeout: float = 60.0) -> Any:
        """A blocking call from the driver (CLI, tests, chaos harness)."""
        return ray.get(self.handles[role].call.remote(method, *args), timeout=timeout)

    def pid(self, role: str) -> int:
        return cast(int, ray.get(self.handles[role].pid.remote(), timeout=30))

    def kill(self, role: str, *, restart: bool = True) -> None:
        """Kill an actor's process (chaos); Ray restarts it unless ``restart`` is False."""
        ray.kill(self.handles[role], no_restart=not restart)

    def node_of(self, role: str) -> str:
        """The id of the Ray node the role's actor runs on now."""
        return cast(str, ray.get(self.handles[role].node_id.remote(), timeout=60))

    def roles(self) -> list[str]:
        return list(self.handles)

    def stop(self) -> None:
        for role in (*[r for r in self.handles if r.startswith("gateway-")], SWEEPER):
            if role in self.handles:
                with contextlib.suppress(Exception):
                    self.call(role, "stop", timeout=10)
        for handle in self.handles.values():
            ray.kill(handle, no_restart=True)
        self.handles.clear()
        if self.started_ray:
            ray.shutdown()


def start_local_ray(num_cpus: int | None = None) -> bool:
    """A private local Ray for this process (never one found on the machine).

    Returns False if this process had Ray running already (nothing was started)."""
    if ray.is_initialized():
        return False
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return True


def stop_local_ray() -> None:
    ray.shutdown()


class LocalCluster:
    """A multi-node Ray cluster on this machine: a head and worker nodes (chaos: node loss).

    Every node is a set of real Ray processes; removing one kills them, as losing a
    machine would. Run it in a process of its own with ``RAY_TMPDIR`` pointing at a
    private directory: Ray writes the cluster's address there for ``ray.init()`` to find.
    """

    def __init__(self, head_cpus: int = 1) -> None:
        from ray.cluster_utils import Cluster

        self._cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": head_cpus, "include_dashboard": False},
        )
        self._workers: dict[str, Any] = {}

    @property
    def address(self) -> str:
        return str(self._cluster.address)

    def add_worker(self, resources: dict[str, float], num_cpus: int = 1) -> str:
        node = self._cluster.add_node(num_cpus=num_cpus, resources=dict(resources))
        node_id = str(node.node_id)
        self._workers[node_id] = node
        return node_id

    def workers(self) -> list[str]:
        return list(self._workers)

    def remove_worker(self, node_id: str) -> None:
        """Kill every process of a worker node at once (no graceful shutdown)."""
        self._cluster.remove_node(self._workers.pop(node_id), allow_graceful=False)

    def shutdown(self) -> None:
        self._cluster.shutdown()  # type: ignore[no-untyped-call]


def _secret_env(config: JoblineConfig) -> dict[str, str]:
    """The environment every actor needs from the driver: secrets, and where spans go."""
    names = [*secret_env_names(config), *TRACING_ENV]
    return {name: os.environ[name] for name in names if name in os.environ}


# --- one process -------------------------------------------------------------------------


@dataclass
class InProcessRuntime:
    """Every actor object in this event loop (tests, simulation). Same classes as on Ray."""

    config: JoblineConfig
    objects: dict[str, Any]

    @classmethod
    async def start(
        cls, config: JoblineConfig, *, seed: int = 0, start_sweeper: bool = True
    ) -> InProcessRuntime:
        objects: dict[str, Any] = {}
        ports = _Ports(
            ledger=lambda: cast(LedgerPort, objects[LEDGER]),
            processor=lambda vendor: cast(ProcessorPort, objects[processor_role(vendor)]),
            metric_sources=lambda: [o.collect_metrics for o in objects.values()],
            vendors=list(config.vendors),
        )
        roles = [LEDGER, SWEEPER, *(processor_role(v) for v in config.vendors), gateway_role(0)]
        for role in roles:
            objects[role] = _build(role, config, ports, seed)
        for role in roles:
            if role != SWEEPER or start_sweeper:
                await objects[role].start()
        return cls(config, objects)

    def object(self, role: str) -> Any:
        return self.objects[role]

    async def stop(self) -> None:
        for role in reversed(list(self.objects)):
            await self.objects[role].stop()
