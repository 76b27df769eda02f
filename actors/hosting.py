"""Where jobline's plain actor classes meet Ray. All Ray API calls are made here.

``actors.wiring`` builds every role (the CreditLedger, one VendorProcessor per vendor,
N Gateways, the Sweeper) as a plain object with its dependencies injected; this module
only hosts those objects in Ray actors:

- ``RayRuntime`` creates each role as a named Ray actor (``_ActorHost``) with its remote
  options (name, namespace, restarts, retries, resources), which builds and starts its
  object in ``__init__``, so a restarted actor (``max_restarts``) reopens the database,
  reloads its jobs and re-binds its port by itself. Other actors reach it through
  ``RemoteProxy``: ``await proxy.method(*args)`` becomes ``host.call.remote("method",
  *args)``. Calls are retried across restarts (``max_task_retries``), which is safe
  because every ledger operation and every processor call is idempotent.
- ``start_local_ray`` / ``LocalCluster``: a private local Ray, or a multi-node cluster on
  this machine (the chaos suite's node loss).

A harness's ``Customization`` (``actors.wiring``) travels to every actor as it is: Ray
pickles it, this module never names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import ray

from actors.wiring import (
    LEDGER,
    SWEEPER,
    Customization,
    MetricSource,
    Ports,
    Role,
    Wiring,
    all_roles,
    build_role,
    processor_role,
    secret_env_names,
)
from runtime.config import JoblineConfig
from runtime.errors import ActorCallFailed, JoblineError
from runtime.ports import LedgerPort, ProcessorPort
from runtime.telemetry import Family, configure_logging, get_logger
from runtime.tracing import TRACING_ENV

log = get_logger("hosting")


# --- Ray ---------------------------------------------------------------------------------


class RemoteProxy:
    """``await proxy.method(*args)`` runs ``method`` on the object inside a Ray actor.

    What the remote method raised comes back as itself when it is a ``JoblineError``
    (Ray's wrapper would make its message the remote traceback, which must not reach an
    HTTP answer); any other exception it raised is an ``ActorCallFailed`` (a bug there:
    retrying cannot help), its traceback logged here. Ray's own failures to reach the
    actor (it died, is restarting) stay Ray's errors: the caller may retry those.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        handle = self._handle

        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await handle.call.remote(name, *args, **kwargs)
            except ray.exceptions.RayTaskError as exc:
                raise _remote_error(exc, name) from None

        return call


def _remote_error(exc: ray.exceptions.RayTaskError, method: str) -> BaseException:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, JoblineError | ray.exceptions.RayError | OSError | TimeoutError):
        return cause
    log.error("remote call %s raised: %s", method, exc)
    return ActorCallFailed(method, type(cause).__name__ if cause is not None else "error")


class _ActorHost:
    """Runs one jobline object inside a Ray actor and forwards calls to it."""

    def __init__(
        self,
        role: str,
        config: JoblineConfig,
        seed: int | None,
        customization: Customization,
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

        def sources() -> list[MetricSource]:
            roles = all_roles(config)
            return [(self._own_metrics if r == role else proxy(r).collect_metrics) for r in roles]

        ports = Ports(
            ledger=lambda: cast(LedgerPort, proxy(LEDGER)),
            processor=lambda vendor: cast(ProcessorPort, proxy(processor_role(vendor))),
            metric_sources=sources,
            vendors=list(config.vendors),
        )
        if ray.get_runtime_context().was_current_actor_reconstructed:
            # A restarted actor must not replay the ids and draws it made before its
            # crash (the same seed would hand out the same job ids again).
            seed = None
        wiring = Wiring(seed=seed, customization=customization)
        self._object: Role = build_role(role, config, wiring, ports)
        self._started = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        await self._object.start()

    async def _own_metrics(self) -> list[Family]:
        return await self._object.collect_metrics()

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


@dataclass
class RayRuntime:
    """The runtime on a Ray cluster (local, or joined with ``address``)."""

    config: JoblineConfig
    handles: dict[str, Any] = field(default_factory=dict)
    started_ray: bool = False
    customization: Customization = field(default_factory=Customization)

    @classmethod
    def start(
        cls,
        config: JoblineConfig,
        *,
        address: str | None = None,
        seed: int | None = None,
        ready_timeout: float = 60.0,
        customization: Customization | None = None,
    ) -> RayRuntime:
        """Start every actor, each built by ``actors.wiring`` with ``customization`` (a
        harness's; the product's changes nothing)."""
        runtime = cls(config, customization=customization or Customization())
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
        for role in all_roles(config):
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
        self.handles[role] = host.remote(role, self.config, seed, self.customization)

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
