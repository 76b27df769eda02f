"""Where jobline's plain actor classes meet Ray. All Ray API calls are made here.

``actors.wiring`` builds every role (the CreditLedger, one VendorProcessor per vendor,
the Gateways, the Sweeper) as a plain object with its dependencies injected; this
module hosts those objects in Ray actors and runs them as one named, detached app:

- ``_App`` (the actor ``jobline-app``, on the ledger's node) is the app on the cluster.
  It places and creates every role (``actors.placement`` decides where), waits until
  they are ready, gives a gateway to every node that joins with the gateway resource,
  rewrites the Prometheus targets file when roles move, keeps the recent notices of
  every role for ``jobline serve`` / ``jobline logs``, answers ``jobline status``, and
  stops the app in order (gateways drained, then processors and sweeper, then the
  ledger closed and checkpointed). Every actor is detached: the app outlives the
  process that deployed it.
- ``_ActorHost`` runs one role's object in a Ray actor, building and starting it in
  ``__init__``, so that a restarted actor (``max_restarts``) reopens the database,
  reloads its jobs and re-binds its port by itself. It logs JSON lines naming its role
  (and is named by it in Ray's own log prefixes) and forwards its notices to the app.
  Other actors reach it through ``RemoteProxy``: ``await proxy.method(*args)`` becomes
  ``host.call.remote("method", *args)``, retried across restarts (``max_task_retries``),
  which is safe because every ledger operation and processor call is idempotent.
- ``RayRuntime`` is the driver's side: ``start`` (deploy, refusing a second app of the
  same name), ``attach``, ``status``, ``notices``, ``stop``, and the harness's calls
  (``call``, ``kill``, ``node_of``).
- ``connect`` joins a cluster or starts a private local Ray offering jobline's
  resources, retrying a start-up that timed out. ``LocalCluster``: a multi-node
  cluster on this machine (the chaos suite's node loss).

Secrets never travel through Ray: every actor reads them from its own node's
environment (a local Ray's workers inherit the driver's; on a cluster, the environment
of ``ray start`` or the pod). Only the tracing settings that are not secret are passed.

A harness's ``Customization`` (``actors.wiring``) travels to every actor as it is: Ray
pickles it, this module never names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import ray
from ray._private import state as ray_state
from ray.experimental import internal_kv
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.placement import (
    Node,
    RoleStatus,
    gateway_nodes,
    gateways_to_add,
    ledger_node,
    metric_targets,
)
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
)
from runtime.config import JoblineConfig
from runtime.errors import AppAlreadyRunning, AppNotRunning, DeploymentError
from runtime.ports import LedgerPort, ProcessorPort
from runtime.results_s3 import bucket_problems
from runtime.startup import missing_environment
from runtime.telemetry import Family, JsonFormatter, configure_logging, get_logger, is_notice
from runtime.tracing import OTLP_ENV, PATH_ENV

log = get_logger("hosting")

APP = "app"
PUBLIC_ENV = (*OTLP_ENV, "OTEL_SDK_DISABLED", PATH_ENV)  # never OTEL_EXPORTER_OTLP_HEADERS
READY_TIMEOUT = 120.0  # seconds every role gets to start
STOP_TIMEOUT = 30.0  # seconds each step of a stop gets
RECONCILE_INTERVAL = 3.0  # seconds between the app's looks at the nodes and roles
NOTICE_FLUSH = 0.3  # seconds between a role's sends of its notices to the app
NOTICES_KEPT = 5000
START_BACKOFF = 2.0  # seconds before the second Ray start-up attempt, doubling


def actor_name(role: str) -> str:
    return f"jobline-{role}"


# --- connecting ---------------------------------------------------------------------------


def local_resources(config: JoblineConfig) -> dict[str, float]:
    """What a Ray that jobline starts itself offers: every role fits on its one node."""
    processors = {k: v * len(config.vendors) for k, v in config.ray.processor_resources.items()}
    return {config.ray.ledger_resource: 1.0, config.ray.gateway_resource: 1.0, **processors}


def connect(config: JoblineConfig, address: str | None = None, *, attempts: int = 0) -> bool:
    """Join the cluster at ``address`` (else ``[ray] address``), or start a private local
    Ray offering jobline's resources when both are empty. True if this process started
    Ray (it goes when this process does). A start-up that times out is tried again,
    ``attempts`` (else ``[ray] start_attempts``) times in all; DeploymentError when none
    succeeds."""
    if ray.is_initialized():
        return False
    target = _join_address(config, address)
    options: dict[str, Any] = {
        "namespace": config.ray.namespace,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if target:
        options["address"] = target
    else:
        # "local" never joins a cluster someone else started on this machine.
        options |= {
            "address": "local",
            "resources": local_resources(config),
            "include_dashboard": False,
        }
    start_with_retries(lambda: ray.init(**options), attempts or config.ray.start_attempts)
    return not target


def disconnect() -> None:
    """Leave the Ray cluster this process joined (a Ray it started goes with it)."""
    ray.shutdown()


def _join_address(config: JoblineConfig, address: str | None) -> str:
    """The cluster to join; "" (or "local") for a Ray of our own."""
    target = address if address is not None else config.ray.address
    return "" if target == "local" else target


def start_with_retries(
    start: Callable[[], object],
    attempts: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    cleanup: Callable[[], None] = ray.shutdown,
) -> None:
    """``start()``, again after a start-up that timed out (``cleanup()`` between
    attempts), up to ``attempts`` times; DeploymentError naming the last failure."""
    for attempt in range(1, attempts + 1):
        try:
            start()
            return
        except Exception as exc:
            reason = _one_line(exc)
            if not _timed_out(exc) or attempt == attempts:
                tried = f" after {attempt} attempts" if attempt > 1 else ""
                raise DeploymentError((f"Ray did not start{tried}: {reason}",)) from None
            delay = START_BACKOFF * 2 ** (attempt - 1)
            log.warning(
                "Ray start-up timed out (attempt %d of %d), again in %.0fs: %s",
                attempt,
                attempts,
                delay,
                reason,
            )
            with contextlib.suppress(Exception):
                cleanup()
            sleep(delay)


def _timed_out(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        isinstance(exc, TimeoutError | ConnectionError)
        or "timed out" in text
        or ("timeout" in text)
    )


def _one_line(exc: BaseException) -> str:
    """The last meaningful line of an error (Ray's carry their whole traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return _one_line(cause)
    if isinstance(exc, DeploymentError):
        return "; ".join(exc.lines())
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _nodes() -> list[Node]:
    return [
        Node(
            node_id=str(n["NodeID"]),
            address=str(n["NodeManagerAddress"]),
            resources={k: float(v) for k, v in n.get("Resources", {}).items()},
            alive=bool(n["Alive"]),
            head="node:__internal_head__" in n.get("Resources", {}),
        )
        for n in ray.nodes()  # type: ignore[no-untyped-call]
    ]


def _on_node(node_id: str, soft: bool = False) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=soft)


def _public_env() -> dict[str, str]:
    return {name: os.environ[name] for name in PUBLIC_ENV if name in os.environ}


def _actor_info(handle: Any) -> dict[str, Any]:
    """Ray's record of an actor: State, NumRestarts, Address.NodeID, Pid ({} if none)."""
    info: dict[str, Any] = ray_state.actors(handle._actor_id.hex())
    return info


def _app_actors(namespace: str) -> list[str]:
    """The names of every jobline actor alive in ``namespace``."""
    return sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == namespace and entry["name"].startswith("jobline-")
    )


# --- the deployment record ------------------------------------------------------------------


def _record_key(namespace: str) -> bytes:
    return f"jobline:{namespace}:deployment".encode()


def read_record(namespace: str) -> dict[str, Any] | None:
    """What this Ray cluster remembers of the app ``namespace``: where its ledger is."""
    raw = internal_kv._internal_kv_get(_record_key(namespace))
    return None if raw is None else cast(dict[str, Any], json.loads(raw))


def _write_record(namespace: str, record: dict[str, Any]) -> None:
    internal_kv._internal_kv_put(
        _record_key(namespace), json.dumps(record).encode(), overwrite=True
    )


def _ledger_expectation(config: JoblineConfig) -> str | None:
    """Why the ledger must already exist, from this cluster's record of the app."""
    record = read_record(config.ray.namespace)
    if record is None:
        return None
    database = str(config.storage.database)
    if record["database"] != database:
        raise DeploymentError(
            (
                f"app {config.ray.namespace!r} keeps its ledger at {record['database']} on this "
                f"Ray cluster, but the config names {database}: point [storage] database at "
                "the ledger, or move the file there while jobline is stopped",
            )
        )
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["first_served"]))
    return f"app {config.ray.namespace!r} has run on this Ray cluster with it since {since}"


# --- one role in one actor ----------------------------------------------------------------


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


class _NoticeForwarder(logging.Handler):
    """Sends this process's notices (``telemetry.is_notice``) to the app, in batches."""

    def __init__(self, formatter: JsonFormatter, namespace: str) -> None:
        super().__init__()
        self._formatter = formatter
        self._namespace = namespace
        self._pending: deque[dict[str, Any]] = deque(maxlen=1000)
        self._app: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        if is_notice(record):
            try:
                self._pending.append(self._formatter.as_dict(record))
            except Exception:
                self.handleError(record)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(NOTICE_FLUSH)
            batch = []
            while self._pending:
                batch.append(self._pending.popleft())
            if not batch:
                continue
            try:
                if self._app is None:
                    self._app = ray.get_actor(actor_name(APP), namespace=self._namespace)
                await self._app.post.remote(batch)
            except Exception:  # no app (a harness, a stop under way): the notices go
                self._app = None


class _ActorHost:
    """Runs one jobline object inside a Ray actor and forwards calls to it."""

    def __init__(
        self,
        role: str,
        config: JoblineConfig,
        seed: int | None,
        customization: Customization,
        env: dict[str, str],
        ledger_must_exist: str | None,
    ) -> None:
        self._role = role
        for name, value in env.items():
            os.environ.setdefault(name, value)
        formatter = configure_logging(config.logging.level, role=role, file=config.logging.file)
        self._notices = _NoticeForwarder(formatter, config.ray.namespace)
        logging.getLogger("jobline").addHandler(self._notices)
        namespace = config.ray.namespace
        handles: dict[str, RemoteProxy] = {}
        self._role_names = all_roles(config)

        def proxy(target: str) -> RemoteProxy:
            if target not in handles:
                handles[target] = RemoteProxy(
                    ray.get_actor(actor_name(target), namespace=namespace)
                )
            return handles[target]

        def sources() -> dict[str, MetricSource]:
            return {
                r: (self._own_metrics if r == role else proxy(r).collect_metrics)
                for r in self._role_names
            }

        ports = Ports(
            ledger=lambda: cast(LedgerPort, proxy(LEDGER)),
            processor=lambda vendor: cast(ProcessorPort, proxy(processor_role(vendor))),
            metric_sources=sources,
            vendors=list(config.vendors),
        )
        if ray.get_runtime_context().was_current_actor_reconstructed:
            # A restarted actor must not replay the ids and draws it made before its
            # crash (the same seed would hand out the same job ids again), and a
            # restarted ledger never creates a file: it had one open.
            seed = None
            ledger_must_exist = "the ledger actor restarted, and a restart never creates a ledger"
            log.warning("%s restarted", role, extra={"notice": True})
        wiring = Wiring(seed=seed, customization=customization, ledger_must_exist=ledger_must_exist)
        self._object: Role = build_role(role, config, wiring, ports)
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._notices.run())]
        if role.startswith("gateway-"):
            self._background.append(loop.create_task(self._follow_roles(namespace)))
        self._started = loop.create_task(self._start())

    def __repr__(self) -> str:  # Ray prefixes this actor's log lines with it
        return self._role

    async def _start(self) -> None:
        await self._object.start()
        detail = self._detail()
        log.info(
            "%s ready on node %s%s",
            self._role,
            self.node_id()[:8],
            f", serving {detail}" if detail else "",
            extra={"notice": True},
        )

    def _detail(self) -> str:
        if self._role == LEDGER:
            return str(getattr(self._object, "path", ""))
        if self._role.startswith("gateway-"):
            return f"{getattr(self._object, 'host', '')}:{getattr(self._object, 'port', '')}"
        return ""

    async def _follow_roles(self, namespace: str) -> None:
        """A gateway's ``/metrics`` asks every role; the app knows which exist now."""
        while True:
            with contextlib.suppress(Exception):
                app = ray.get_actor(actor_name(APP), namespace=namespace)
                self._role_names = await app.role_names.remote()
            await asyncio.sleep(RECONCILE_INTERVAL)

    async def _own_metrics(self) -> list[Family]:
        return await self._object.collect_metrics()

    async def ready(self) -> dict[str, Any]:
        """Once started: the role, its node, its process and what it serves."""
        await asyncio.shield(self._started)
        return {
            "role": self._role,
            "node_id": self.node_id(),
            "pid": os.getpid(),
            "detail": self._detail(),
        }

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        await asyncio.shield(self._started)
        return await getattr(self._object, method)(*args, **kwargs)

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


def _node_problems(config: JoblineConfig) -> list[str]:
    """Runs on one node: the secrets its environment lacks (names only), and whether
    the result bucket answers to its credentials."""
    return [*missing_environment(config, os.environ), *bucket_problems(config.storage)]


# --- the app ------------------------------------------------------------------------------


class _Notices:
    """The app's recent notices, numbered; readers wait for the next ones."""

    def __init__(self) -> None:
        self._lines: deque[tuple[int, dict[str, Any]]] = deque(maxlen=NOTICES_KEPT)
        self._seq = 0
        self._changed = asyncio.Event()

    def add(self, lines: Sequence[dict[str, Any]]) -> None:
        for line in lines:
            self._seq += 1
            self._lines.append((self._seq, line))
        self._changed.set()

    async def since(self, after: int, wait: float) -> tuple[int, list[dict[str, Any]]]:
        if self._seq <= after and wait > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        return self._seq, [line for seq, line in self._lines if seq > after]


class _NoticeKeeper(logging.Handler):
    """The app's own notices go straight into its list (from any thread)."""

    def __init__(self, formatter: JsonFormatter, notices: _Notices) -> None:
        super().__init__()
        self._formatter = formatter
        self._notices = notices
        self._loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        if is_notice(record):
            line = self._formatter.as_dict(record)
            self._loop.call_soon_threadsafe(self._notices.add, [line])


class _App:
    """The app on the cluster (module docstring): places, creates, watches and stops
    every role; keeps their notices; answers status."""

    def __init__(
        self,
        config: JoblineConfig,
        seed: int | None,
        customization: Customization,
        env: dict[str, str],
        ledger_must_exist: str | None,
    ) -> None:
        self._config = config
        self._namespace = config.ray.namespace
        self._seed = seed
        self._customization = customization
        self._env = env
        self._ledger_must_exist = ledger_must_exist
        formatter = configure_logging(config.logging.level, role=APP, file=config.logging.file)
        self._notices = _Notices()
        logging.getLogger("jobline").addHandler(_NoticeKeeper(formatter, self._notices))
        self._handles: dict[str, Any] = {}
        self._details: dict[str, str] = {}  # role -> what it serves (a gateway's host:port)
        self._targets: list[dict[str, Any]] | None = None
        self._stopped = False
        self._reconciler: asyncio.Task[None] | None = None
        if ray.get_runtime_context().was_current_actor_reconstructed:
            for name in _app_actors(self._namespace):
                if name != actor_name(APP):
                    role = name.removeprefix("jobline-")
                    self._handles[role] = ray.get_actor(name, namespace=self._namespace)
            self._reconciler = asyncio.get_running_loop().create_task(self._reconcile_forever())
            log.warning("the app's actor restarted and found %d roles", len(self._handles))

    def __repr__(self) -> str:
        return APP

    # --- deploy ---

    async def deploy(self, check_nodes: bool, timeout: float) -> list[RoleStatus]:
        """Create every role where it belongs and wait until all are ready; on any
        failure remove them again and raise DeploymentError, one line per problem."""
        config = self._config
        nodes = await asyncio.to_thread(_nodes)
        ledger = ledger_node(nodes, config)
        gateway_nodes(nodes, config)
        if check_nodes:
            await self._check_environment(nodes)
        # The ledger first: if its file is missing where it must exist, nothing else
        # starts (every other role reads it as it starts).
        self._create(LEDGER, strategy=_on_node(ledger.node_id))
        problems = await self._wait_ready([LEDGER], timeout)
        if problems:
            await self._kill([LEDGER])
            raise DeploymentError(tuple(problems))
        self._create(SWEEPER, strategy=_on_node(ledger.node_id))
        for vendor in config.vendors:
            self._create(processor_role(vendor))
        for role, node_id in gateways_to_add({}, nodes, config):
            self._create(role, strategy=_on_node(node_id))
        problems = await self._wait_ready([r for r in self._handles if r != LEDGER], timeout)
        if problems:
            await self._kill(list(self._handles))
            raise DeploymentError(tuple(problems))
        await self._reconcile()
        self._reconciler = asyncio.get_running_loop().create_task(self._reconcile_forever())
        log.info(
            "app %r ready: %d roles", self._namespace, len(self._handles), extra={"notice": True}
        )
        return await self.status()

    async def _check_environment(self, nodes: Sequence[Node]) -> None:
        """Every node that may host a role has every secret in its own environment."""
        resources = {
            self._config.ray.ledger_resource,
            self._config.ray.gateway_resource,
            *self._config.ray.processor_resources,
        }
        anywhere = not self._config.ray.processor_resources
        hosts = [n for n in nodes if n.alive and (anywhere or any(n.offers(r) for r in resources))]
        check = ray.remote(num_cpus=0)(_node_problems)
        answers = await asyncio.gather(
            *(
                check.options(scheduling_strategy=_on_node(n.node_id)).remote(self._config)
                for n in hosts
            ),
            return_exceptions=True,
        )
        problems = []
        for node, answer in zip(hosts, answers, strict=True):
            if isinstance(answer, BaseException):
                problems.append(f"node {node.label}: cannot check it: {_one_line(answer)}")
            else:
                problems += [f"node {node.label}: {line}" for line in answer]
        if problems:
            raise DeploymentError(
                (
                    *problems,
                    "set them in the environment of `ray start` on those nodes "
                    "(deploy/README.md, 'Secrets'); jobline never sends secrets through Ray",
                )
            )

    def _create(self, role: str, strategy: NodeAffinitySchedulingStrategy | None = None) -> None:
        config = self._config
        options: dict[str, Any] = {
            "name": actor_name(role),
            "namespace": self._namespace,
            "lifetime": "detached",
            "max_restarts": config.ray.max_restarts,
            "max_task_retries": 0 if role.startswith("gateway-") else -1,
            "num_cpus": 0,
            "max_concurrency": 10_000,
        }
        if strategy is not None:
            options["scheduling_strategy"] = strategy
        if role.startswith("processor-") and config.ray.processor_resources:
            options["resources"] = dict(config.ray.processor_resources)
        must_exist = self._ledger_must_exist if role == LEDGER else None
        host = ray.remote(_ActorHost).options(**options)
        self._handles[role] = host.remote(
            role, config, self._seed, self._customization, self._env, must_exist
        )

    async def _wait_ready(self, roles: Sequence[str], timeout: float) -> list[str]:
        """One line per role that did not start; the ledger's alone if it failed (the
        others then fail only because it did)."""
        answers = await asyncio.gather(
            *(asyncio.wait_for(self._ready(role), timeout) for role in roles),
            return_exceptions=True,
        )
        failed = {}
        for role, answer in zip(roles, answers, strict=True):
            if isinstance(answer, BaseException):
                reason = (
                    "not ready in time" if isinstance(answer, TimeoutError) else (_one_line(answer))
                )
                failed[role] = reason
        if LEDGER in failed:
            return [f"{LEDGER}: {failed[LEDGER]}"]
        return [f"{role}: {reason}" for role, reason in failed.items()]

    async def _ready(self, role: str) -> dict[str, Any]:
        info: dict[str, Any] = await self._handles[role].ready.remote()
        self._details[role] = info["detail"]
        return info

    async def _kill(self, roles: Sequence[str]) -> None:
        for role in roles:
            handle = self._handles.pop(role, None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    ray.kill(handle, no_restart=True)

    # --- watch ---

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            try:
                await self._reconcile()
            except Exception:
                log.exception("looking at the cluster failed")

    async def _reconcile(self) -> None:
        """Gateways for nodes that joined, none for nodes that left; the targets file."""
        nodes = {node.node_id: node for node in await asyncio.to_thread(_nodes)}
        where: dict[str, Node] = {}
        gateways: dict[str, str] = {}
        for role, handle in list(self._handles.items()):
            info = await asyncio.to_thread(_actor_info, handle)
            node = nodes.get(info.get("Address", {}).get("NodeID", ""))
            state = info.get("State", "DEAD")
            lost = node is not None and not node.alive
            if role.startswith("gateway-") and (state == "DEAD" or lost):
                # Pinned to its node: it cannot come back elsewhere. A new node gets new ones.
                await self._kill([role])
                gone_with = node.label if node is not None else "its node"
                log.warning("%s is gone with %s", role, gone_with, extra={"notice": True})
                continue
            if state == "ALIVE" and node is not None:
                where[role] = node
                if role.startswith("gateway-"):
                    gateways[role] = node.node_id
        pending = {r: "" for r in self._handles if r.startswith("gateway-") and r not in gateways}
        for role, node_id in gateways_to_add(
            {**gateways, **pending}, list(nodes.values()), self._config
        ):
            self._create(role, strategy=_on_node(node_id))
            asyncio.get_running_loop().create_task(self._announce(role, nodes[node_id]))
        await self._write_targets(where)

    async def _announce(self, role: str, node: Node) -> None:
        """A gateway placed on a node that joined: its own notice says when it is ready."""
        try:
            await asyncio.wait_for(self._ready(role), READY_TIMEOUT)
        except Exception as exc:
            log.error("%s did not start on %s: %s", role, node.label, _one_line(exc))

    async def _write_targets(self, where: dict[str, Node]) -> None:
        path = self._config.metrics.targets_file
        if path is None:
            return
        gateways = {}
        for role, node in where.items():
            host, _, port = self._details.get(role, "").rpartition(":")
            if role.startswith("gateway-") and port.isdigit():
                gateways[role] = (node, host, int(port))
        targets = metric_targets(where, gateways)
        if targets != self._targets:
            await asyncio.to_thread(_write_json, path, targets)
            self._targets = targets

    # --- the calls of the driver and of the roles ---

    async def role_names(self) -> list[str]:
        return _ordered(self._handles)

    async def post(self, lines: list[dict[str, Any]]) -> None:
        self._notices.add(lines)

    async def notices(self, after: int, wait: float) -> tuple[int, list[dict[str, Any]], bool]:
        """The notices after number ``after`` (waiting up to ``wait`` s for one), the
        last number, and whether the app has stopped."""
        seq, lines = await self._notices.since(after, 0 if self._stopped else wait)
        return seq, lines, self._stopped

    async def status(self) -> list[RoleStatus]:
        nodes = {node.node_id: node for node in await asyncio.to_thread(_nodes)}
        roles = _ordered(self._handles)
        infos = [await asyncio.to_thread(_actor_info, self._handles[r]) for r in roles]
        pings = await asyncio.gather(
            *(asyncio.wait_for(self._ready(r), 2.0) for r in roles), return_exceptions=True
        )
        rows = []
        for role, info, ping in zip(roles, infos, pings, strict=True):
            error = ""
            if isinstance(ping, BaseException):
                error = (
                    "no answer within 2s" if isinstance(ping, TimeoutError) else (_one_line(ping))
                )
            rows.append(
                RoleStatus(
                    role=role,
                    state=str(info.get("State", "DEAD")),
                    ready=not error,
                    node=nodes.get(info.get("Address", {}).get("NodeID", "")),
                    restarts=int(info.get("NumRestarts", 0)),
                    detail=self._details.get(role, ""),
                    error=error,
                )
            )
        return rows

    async def stop(self) -> list[str]:
        """Drain the gateways, stop processors and sweeper, close and checkpoint the
        ledger, remove every role. One line per step."""
        if self._reconciler is not None:
            self._reconciler.cancel()
        roles = _ordered(self._handles)
        gateways = [r for r in roles if r.startswith("gateway-")]
        workers = [r for r in roles if r not in gateways and r != LEDGER]
        log.info("stopping: draining %d gateways", len(gateways), extra={"notice": True})
        lines = [await self._stop_group(gateways, "drained (open requests finished)")]
        lines.append(await self._stop_group(workers, "stopped"))
        if LEDGER in self._handles:
            done = await self._stop_group([LEDGER], "closed")
            where = self._details.get(LEDGER, str(self._config.storage.database))
            lines.append(
                f"{done}; its WAL checkpointed into {where}" if "failed" not in done else done
            )
        await self._kill(roles)
        self._stopped = True
        await self._write_targets({})
        log.info("app %r stopped", self._namespace, extra={"notice": True})
        return [line for line in lines if line]

    async def _stop_group(self, roles: Sequence[str], verb: str) -> str:
        if not roles:
            return ""
        answers = await asyncio.gather(
            *(asyncio.wait_for(self._handles[r].call.remote("stop"), STOP_TIMEOUT) for r in roles),
            return_exceptions=True,
        )
        failed = [
            f"{role} ({_one_line(answer) or type(answer).__name__})"
            for role, answer in zip(roles, answers, strict=True)
            if isinstance(answer, BaseException)
        ]
        done = [role for role in roles if not any(f.startswith(f"{role} ") for f in failed)]
        text = f"{', '.join(done)} {verb}" if done else ""
        if failed:
            text += ("; " if text else "") + "failed to stop: " + ", ".join(failed)
        return text


def _ordered(roles: Sequence[str] | dict[str, Any]) -> list[str]:
    """Ledger, sweeper, processors, gateways (by number)."""

    def key(role: str) -> tuple[int, int, str]:
        if role.startswith("gateway-"):
            return (3, int(role.removeprefix("gateway-")), role)
        order = {LEDGER: 0, SWEEPER: 1}
        return (order.get(role, 2), 0, role)

    return sorted(roles, key=key)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1), encoding="utf-8")
    partial.replace(path)  # Prometheus never reads half a file


# --- the driver's side --------------------------------------------------------------------


@dataclass
class RayRuntime:
    """The app as the driver (the CLI, a test, the chaos harness) sees it."""

    config: JoblineConfig
    app: Any
    owns_ray: bool = False  # this process started Ray: it goes when the app stops
    connected: bool = False  # this process connected to Ray: it disconnects on stop
    _handles: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        config: JoblineConfig,
        *,
        address: str | None = None,
        seed: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
        customization: Customization | None = None,
        check_nodes: bool | None = None,
    ) -> RayRuntime:
        """Deploy the app ``[ray] namespace``: every role built by ``actors.wiring`` with
        ``customization`` (a harness's; the product's changes nothing). Joins the cluster
        at ``address`` (else ``[ray] address``) or starts a local Ray. DeploymentError
        (one line per problem) if the app already runs, a role has no node, a node
        lacks a secret (``check_nodes``: default, when joining a cluster) or a role
        fails to start."""
        connecting = not ray.is_initialized()
        joining = bool(_join_address(config, address))
        owns = connect(config, address)
        try:
            app = _deploy(
                config,
                seed,
                customization or Customization(),
                joining if check_nodes is None else check_nodes,
                ready_timeout,
            )
        except BaseException:
            if connecting:
                ray.shutdown()
            raise
        return cls(config, app, owns_ray=owns, connected=connecting)

    @classmethod
    def attach(cls, config: JoblineConfig, address: str | None = None) -> RayRuntime:
        """The running app ``[ray] namespace`` on the cluster at ``address`` (never starts
        Ray); AppNotRunning if it does not run there."""
        connecting = not ray.is_initialized()
        if connecting and not _join_address(config, address):
            raise AppNotRunning(config.ray.namespace, "no Ray cluster to look on")
        connect(config, address, attempts=1)
        try:
            app = ray.get_actor(actor_name(APP), namespace=config.ray.namespace)
        except ValueError:
            leftovers = _app_actors(config.ray.namespace)
            if connecting:
                ray.shutdown()
            raise AppNotRunning(config.ray.namespace, "", tuple(leftovers)) from None
        return cls(config, app, connected=connecting)

    # --- operating it ---

    @property
    def cluster_address(self) -> str:
        """The Ray cluster's GCS address (host:port)."""
        return str(ray.get_runtime_context().gcs_address)

    def status(self, timeout: float = 60.0) -> list[RoleStatus]:
        return cast(list[RoleStatus], ray.get(self.app.status.remote(), timeout=timeout))

    def notices(self, after: int, wait: float) -> tuple[int, list[dict[str, Any]], bool]:
        """Notices after ``after`` (waiting up to ``wait`` s), the last number, stopped?"""
        answer = ray.get(self.app.notices.remote(after, wait), timeout=wait + 30)
        return cast(tuple[int, list[dict[str, Any]], bool], answer)

    def stop(self) -> list[str]:
        """Stop the app in order (``_App.stop``), remove it, and let go of Ray."""
        namespace = self.config.ray.namespace
        try:
            lines = cast(list[str], ray.get(self.app.stop.remote(), timeout=STOP_TIMEOUT * 4))
        except Exception as exc:
            lines = [f"the app did not stop in order ({_one_line(exc)}); its actors were killed"]
        record = read_record(namespace)
        if record is not None:
            _write_record(namespace, {**record, "stopped": time.time()})
        with contextlib.suppress(Exception):
            ray.kill(self.app, no_restart=True)
        remove_leftovers(namespace)
        self._handles.clear()
        if self.connected:
            ray.shutdown()
        return lines

    # --- the harness's calls ---

    def roles(self) -> list[str]:
        return cast(list[str], ray.get(self.app.role_names.remote(), timeout=60))

    @property
    def handles(self) -> dict[str, Any]:
        return {role: self.handle(role) for role in self.roles()}

    def handle(self, role: str) -> Any:
        if role not in self._handles:
            self._handles[role] = ray.get_actor(
                actor_name(role), namespace=self.config.ray.namespace
            )
        return self._handles[role]

    def wait_ready(self, timeout: float = 60.0) -> None:
        ray.get([h.ready.remote() for h in self.handles.values()], timeout=timeout)

    def proxy(self, role: str) -> RemoteProxy:
        return RemoteProxy(self.handle(role))

    def call(self, role: str, method: str, *args: Any, timeout: float = 60.0) -> Any:
        """A blocking call from the driver (CLI, tests, chaos harness)."""
        return ray.get(self.handle(role).call.remote(method, *args), timeout=timeout)

    def pid(self, role: str) -> int:
        return cast(int, ray.get(self.handle(role).pid.remote(), timeout=30))

    def kill(self, role: str, *, restart: bool = True) -> None:
        """Kill an actor's process (chaos); Ray restarts it unless ``restart`` is False."""
        ray.kill(self.handle(role), no_restart=not restart)

    def node_of(self, role: str) -> str:
        """The id of the Ray node the role's actor runs on now."""
        return cast(str, ray.get(self.handle(role).node_id.remote(), timeout=60))


def _deploy(
    config: JoblineConfig,
    seed: int | None,
    customization: Customization,
    check_nodes: bool,
    ready_timeout: float,
) -> Any:
    namespace = config.ray.namespace
    names = _app_actors(namespace)
    if actor_name(APP) in names:
        raise AppAlreadyRunning(namespace)
    if names:
        raise DeploymentError(
            (
                f"actors of app {namespace!r} are left on this Ray cluster ({', '.join(names)}) "
                "by a deployment that did not stop cleanly: `jobline stop` removes them",
            )
        )
    must_exist = _ledger_expectation(config)
    ledger = ledger_node(_nodes(), config)
    options = {
        "name": actor_name(APP),
        "namespace": namespace,
        "lifetime": "detached",
        "max_restarts": -1,
        "num_cpus": 0,
        "max_concurrency": 1000,
        "scheduling_strategy": _on_node(ledger.node_id),
    }
    try:
        app: Any = (
            ray.remote(_App)
            .options(**options)
            .remote(config, seed, customization, _public_env(), must_exist)
        )
    except ValueError:  # the name was taken between our look and now
        raise AppAlreadyRunning(namespace) from None
    try:
        ray.get(app.deploy.remote(check_nodes, ready_timeout), timeout=ready_timeout + 30)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            ray.kill(app, no_restart=True)
        remove_leftovers(namespace)
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DeploymentError):
            raise DeploymentError(cause.problems) from None
        if isinstance(exc, ray.exceptions.GetTimeoutError):
            raise DeploymentError(
                (f"the roles were not ready within {ready_timeout:.0f}s",)
            ) from None
        raise
    now = time.time()
    record = read_record(namespace) or {
        "database": str(config.storage.database),
        "first_served": now,
    }
    _write_record(
        namespace, {**record, "served": now, "stopped": None, "ledger_node": ledger.address}
    )
    return app


def remove_leftovers(namespace: str) -> list[str]:
    """Kill every jobline actor left in ``namespace``; their names."""
    names = _app_actors(namespace)
    for name in names:
        with contextlib.suppress(Exception):
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    return names


# --- local clusters -----------------------------------------------------------------------


def start_local_ray(num_cpus: int | None = None) -> bool:
    """A private local Ray for this process (never one found on the machine), offering
    jobline's default ledger and gateway resources.

    Returns False if this process had Ray running already (nothing was started)."""
    if ray.is_initialized():
        return False
    ray.init(
        address="local",
        num_cpus=num_cpus,
        resources=dict(DEFAULT_HEAD_RESOURCES),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return True


def stop_local_ray() -> None:
    ray.shutdown()


DEFAULT_HEAD_RESOURCES = {"jobline_ledger": 1.0, "jobline_gateway": 1.0}


class LocalCluster:
    """A multi-node Ray cluster on this machine: a head and worker nodes (chaos: node loss).

    Every node is a set of real Ray processes; removing one kills them, as losing a
    machine would. Run it in a process of its own with ``RAY_TMPDIR`` pointing at a
    private directory: Ray writes the cluster's address there for ``ray.init()`` to find.
    The head offers the ledger's and the gateways' resources.
    """

    def __init__(self, head_cpus: int = 1) -> None:
        from ray.cluster_utils import Cluster

        self._cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": head_cpus,
                "include_dashboard": False,
                "resources": dict(DEFAULT_HEAD_RESOURCES),
            },
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
