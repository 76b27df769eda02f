"""Every Ray call jobline makes: the one module that imports ``ray``.

The rest of ``actors.hosting`` is plain Python calling these functions; an actor handle
(``Handle``), a pending reply and a local cluster are opaque objects to it. What Ray
raises is turned into jobline's own errors here:

- ``forward`` (a call into a ``RoleHost``): what the role's method raised comes back as
  itself when it is a ``JoblineError`` (Ray's wrapper would make its message the remote
  traceback, which must not reach an HTTP answer), an ``OSError`` or a ``TimeoutError``;
  any other exception it raised is an ``ActorCallFailed`` (a bug there: retrying cannot
  help). Ray's own failures to reach the actor (it died, is restarting) stay Ray's
  errors: the caller may retry those.
- ``send`` + ``wait``: a reply that does not come in time is ``NoReply`` (a
  ``TimeoutError``); ``remote_cause`` finds what the remote method raised.
- ``get_actor``: ``ActorNotFound``; ``create_actor``: ``ActorNameTaken`` (both
  ``ValueError``, as Ray's own are).

Every actor jobline creates is named, detached (it outlives the process that created
it) and takes no CPU: it waits on I/O.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray._private import state as ray_state
from ray.experimental import internal_kv
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.placement import Node
from runtime.errors import ActorCallFailed, JoblineError
from runtime.telemetry import get_logger

log = get_logger("hosting")

Handle = Any  # a Ray actor handle, or a local cluster's node: opaque outside this module

# Only the parts of Ray that jobline uses (issue 16), for a Ray jobline starts itself: no
# Ray-internal metrics (jobline exports its own), no idle workers started ahead (every role
# is an actor placed at once); and, per actor, no task events (Ray's state API and
# dashboard timeline, never read): they cost every actor call a record in the caller, the
# callee and the GCS.
RAY_SYSTEM_CONFIG = {
    "enable_metrics_collection": False,
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
}


# The same, for the Ray processes of a Ray jobline starts itself (read from their
# environment, which they inherit from this process): Ray's dashboard agent samples every
# process's CPU and memory for a dashboard jobline never starts (every 5 s: every 60 s
# here), and asks whether its raylet is alive every 0.4 s (every 1 s here: it still ends
# itself within ~5 s of its raylet's death).
RAY_PROCESS_ENV = {
    "REPORTER_UPDATE_INTERVAL_MS": "60000",
    "RAY_DASHBOARD_AGENT_CHECK_PARENT_INTERVAL_S": "1",
}


class ActorNotFound(ValueError):
    """No actor of this name lives in the namespace."""

    def __init__(self, name: str, namespace: str) -> None:
        super().__init__(name, namespace)
        self.name = name
        self.namespace = namespace

    def __str__(self) -> str:
        return f"no actor {self.name!r} in namespace {self.namespace!r}"


class ActorNameTaken(ValueError):
    """An actor of this name lives in the namespace already."""

    def __init__(self, name: str, namespace: str) -> None:
        super().__init__(name, namespace)
        self.name = name
        self.namespace = namespace

    def __str__(self) -> str:
        return f"an actor {self.name!r} lives in namespace {self.namespace!r} already"


class NoReply(TimeoutError):
    """A blocking wait for replies (``wait``) ran out of time."""


# --- a Ray for this process -----------------------------------------------------------------


def is_connected() -> bool:
    """Whether this process has joined or started a Ray."""
    return ray.is_initialized()


def join(address: str, namespace: str) -> None:
    """Join the running Ray cluster at ``address`` ("auto" or host:port)."""
    ray.init(
        address=address,
        namespace=namespace,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )


def start_local(
    resources: Mapping[str, float],
    *,
    namespace: str | None = None,
    num_cpus: int | None = None,
    log_to_driver: bool = False,
) -> None:
    """Start a private Ray for this process (never join one found on the machine),
    offering the custom ``resources``; it goes when this process does. Without
    ``log_to_driver`` no process reads the workers' output through Ray (each worker's
    files stay in Ray's session directory): Ray's log monitor, which reads every worker's
    log files ten times a second to publish their new lines, is stopped."""
    _set_process_env()
    ray.init(
        address="local",
        namespace=namespace,
        num_cpus=num_cpus,
        resources=dict(resources),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=log_to_driver,
        _system_config=RAY_SYSTEM_CONFIG,
    )
    if not log_to_driver:
        _stop_log_monitor()


def _set_process_env() -> None:
    for name, value in RAY_PROCESS_ENV.items():
        os.environ.setdefault(name, value)


def _stop_log_monitor() -> None:
    node = ray._private.worker._global_node
    if node is not None:
        try:
            node.kill_log_monitor(check_alive=False)
        except Exception as exc:  # a Ray without one: nothing to save
            log.info("Ray's log monitor not stopped: %s", exc)


def shutdown() -> None:
    """Leave the Ray this process joined (a Ray it started goes with it)."""
    ray.shutdown()


def gcs_address() -> str:
    """The joined cluster's GCS address (host:port)."""
    return str(ray.get_runtime_context().gcs_address)


# --- inside an actor ----------------------------------------------------------------------


def node_id() -> str:
    """The id (hex) of the Ray node this process runs on."""
    return str(ray.get_runtime_context().get_node_id())


def current_actor_id() -> str:
    """The Ray actor id (hex) of the actor this process runs."""
    return str(ray.get_runtime_context().get_actor_id())


def restarted() -> bool:
    """Whether the current actor is a restart of one that died (``max_restarts``)."""
    return bool(ray.get_runtime_context().was_current_actor_reconstructed)


# --- the cluster ----------------------------------------------------------------------------


def nodes() -> list[Node]:
    """Every node the cluster knows of, alive or not."""
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


def named_actors(namespace: str) -> list[str]:
    """The names of the named actors alive in ``namespace``."""
    return [
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == namespace
    ]


def kv_get(key: bytes) -> bytes | None:
    """A value the cluster keeps (in its GCS) under ``key``; None if none."""
    value: bytes | None = internal_kv._internal_kv_get(key)
    return value


def kv_put(key: bytes, value: bytes) -> None:
    internal_kv._internal_kv_put(key, value, overwrite=True)


# --- actors ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActorState:
    """Ray's record of an actor: ALIVE, RESTARTING, DEAD…, its node, its restarts."""

    state: str = "DEAD"
    node_id: str = ""  # "" when it has none
    restarts: int = 0


def create_actor(
    cls: type,
    args: Sequence[Any],
    *,
    name: str,
    namespace: str,
    max_restarts: int,
    max_concurrency: int,
    max_task_retries: int = 0,
    node_id: str | None = None,
    resources: Mapping[str, float] | None = None,
) -> Handle:
    """A named, detached actor running ``cls(*args)``, taking no CPU, on the node
    ``node_id`` (else where Ray finds ``resources``). Ray restarts it ``max_restarts``
    times (-1: always) and retries a call it was running ``max_task_retries`` times.
    ActorNameTaken if ``name`` lives in ``namespace`` already."""
    options: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "lifetime": "detached",
        "max_restarts": max_restarts,
        "max_task_retries": max_task_retries,
        "num_cpus": 0,
        "max_concurrency": max_concurrency,
        "enable_task_events": False,
    }
    if node_id is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    if resources:
        options["resources"] = dict(resources)
    try:
        return ray.remote(cls).options(**options).remote(*args)
    except ValueError:  # Ray's answer to a name that is taken
        raise ActorNameTaken(name, namespace) from None


def get_actor(name: str, namespace: str) -> Handle:
    """The actor named ``name`` in ``namespace``; ActorNotFound if none lives."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise ActorNotFound(name, namespace) from None


def actor_id(handle: Handle) -> str:
    """The Ray actor id (hex) of the actor behind ``handle``; a restart keeps it."""
    return str(handle._actor_id.hex())


def kill(handle: Handle, *, restart: bool = False) -> None:
    """Kill the actor's process at once; Ray restarts it only if ``restart``."""
    ray.kill(handle, no_restart=not restart)


def actor_state(handle: Handle) -> ActorState:
    """Ray's record of the actor now (a DEAD one if Ray has none)."""
    info: dict[str, Any] = ray_state.actors(handle._actor_id.hex())
    return ActorState(
        state=str(info.get("State", "DEAD")),
        node_id=str(info.get("Address", {}).get("NodeID", "")),
        restarts=int(info.get("NumRestarts", 0)),
    )


def send(handle: Handle, method: str, *args: Any, **kwargs: Any) -> Awaitable[Any]:
    """Call ``method`` on the actor now; the reply is awaitable (or ``wait``-able)."""
    reply: Awaitable[Any] = getattr(handle, method).remote(*args, **kwargs)
    return reply


def wait(replies: Awaitable[Any] | Sequence[Awaitable[Any]], timeout: float) -> Any:
    """Block until the reply (or every reply of a list) is here: the value(s). What the
    remote method raised comes as Ray's wrapper of it (``remote_cause``); NoReply if not
    within ``timeout`` seconds."""
    try:
        return ray.get(cast(Any, replies), timeout=timeout)
    except ray.exceptions.GetTimeoutError as exc:
        raise NoReply(str(exc)) from None


def remote_cause(exc: BaseException) -> BaseException | None:
    """What the remote method raised, if ``exc`` is Ray's report of it."""
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    return cause if isinstance(cause, BaseException) else None


async def forward(handle: Handle, method: str, *args: Any, **kwargs: Any) -> Any:
    """``method(*args, **kwargs)`` on the object a ``RoleHost`` actor runs (its ``call``);
    errors as the module docstring says."""
    try:
        return await send(handle, "call", method, *args, **kwargs)
    except ray.exceptions.RayTaskError as exc:
        raise _jobline_error(exc, method) from None


def _jobline_error(exc: ray.exceptions.RayTaskError, method: str) -> BaseException:
    cause = getattr(exc, "cause", None)
    if _passes(cause):
        return cast(BaseException, cause)
    log.error("remote call %s raised: %s", method, exc)
    return ActorCallFailed(method, type(cause).__name__ if cause is not None else "error")


def answerable(exc: BaseException, method: str) -> BaseException:
    """What a caller gets for ``exc``, raised by ``method`` of a role (the same as
    ``forward`` gives; for the calls that bypass Ray, ``nearby_calls``): the error itself,
    or an ``ActorCallFailed`` after logging its traceback here."""
    if _passes(exc):
        return exc
    log.error("call %s raised", method, exc_info=exc)
    return ActorCallFailed(method, type(exc).__name__)


def _passes(exc: object) -> bool:
    """Whether a role's error reaches its caller as itself."""
    return isinstance(exc, JoblineError | ray.exceptions.RayError | OSError | TimeoutError)


def run_on_nodes(
    function: Callable[..., Any], node_ids: Iterable[str], *args: Any
) -> list[Awaitable[Any]]:
    """``function(*args)`` as a task on each node (no CPU taken); one reply per node."""
    task = ray.remote(num_cpus=0)(function)
    return [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
            *args
        )
        for n in node_ids
    ]


# --- a cluster of several nodes on this machine (the chaos suite's node loss) ------------


def start_cluster_here(head_cpus: int, head_resources: Mapping[str, float]) -> Handle:
    """A head node's real Ray processes on this machine; Ray writes its address under
    ``RAY_TMPDIR`` for a later ``ray.init()`` to find."""
    from ray.cluster_utils import Cluster

    _set_process_env()
    return Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": head_cpus,
            "include_dashboard": False,
            "resources": dict(head_resources),
            "_system_config": RAY_SYSTEM_CONFIG,
        },
    )


def cluster_address(cluster: Handle) -> str:
    return str(cluster.address)


def add_node(cluster: Handle, num_cpus: int, resources: Mapping[str, float]) -> tuple[str, Handle]:
    """A worker node joining ``cluster``: its id and the node."""
    node = cluster.add_node(num_cpus=num_cpus, resources=dict(resources))
    return str(node.node_id), node


def kill_node(cluster: Handle, node: Handle) -> None:
    """Kill every process of a worker node at once (no graceful shutdown)."""
    cluster.remove_node(node, allow_graceful=False)


def stop_cluster(cluster: Handle) -> None:
    cluster.shutdown()
