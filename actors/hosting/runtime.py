"""The driver's side (``RayRuntime``): deploy the app, attach to it, operate it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from actors.hosting import ray_calls
from actors.hosting.app import JoblineApp
from actors.hosting.cluster import (
    APP,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    actor_name,
    app_actors,
    connect,
    join_address,
    ledger_expectation,
    one_line,
    public_env,
    read_record,
    write_record,
)
from actors.hosting.roles import RemoteProxy
from actors.placement import (
    RoleStatus,
    ledger_node,
)
from actors.wiring import (
    Customization,
)
from runtime.config import JoblineConfig
from runtime.errors import AppAlreadyRunning, AppNotRunning, DeploymentError
from runtime.telemetry import get_logger

GIVE_UP_EVERY = 1.0  # s between a follower's looks at whether to stop waiting for notices

log = get_logger("hosting")


# --- the driver's side --------------------------------------------------------------------


@dataclass
class RayRuntime:
    """The app as the driver (the CLI, a test, the chaos harness) sees it."""

    config: JoblineConfig
    app: ray_calls.Handle
    owns_ray: bool = False  # this process started Ray: it goes when the app stops
    connected: bool = False  # this process connected to Ray: it disconnects on stop
    _handles: dict[str, ray_calls.Handle] = field(default_factory=dict)

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
        connecting = not ray_calls.is_connected()
        joining = bool(join_address(config, address))
        owns = connect(config, address)
        try:
            app = deploy_app(
                config,
                seed,
                customization or Customization(),
                joining if check_nodes is None else check_nodes,
                ready_timeout,
            )
        except BaseException:
            if connecting:
                ray_calls.shutdown()
            raise
        return cls(config, app, owns_ray=owns, connected=connecting)

    @classmethod
    def attach(cls, config: JoblineConfig, address: str | None = None) -> RayRuntime:
        """The running app ``[ray] namespace`` on the cluster at ``address`` (never starts
        Ray); AppNotRunning if it does not run there."""
        connecting = not ray_calls.is_connected()
        if connecting and not join_address(config, address):
            raise AppNotRunning(config.ray.namespace, "no Ray cluster to look on")
        connect(config, address, attempts=1)
        try:
            app = ray_calls.get_actor(actor_name(APP), config.ray.namespace)
        except ray_calls.ActorNotFound:
            leftovers = app_actors(config.ray.namespace)
            if connecting:
                ray_calls.shutdown()
            raise AppNotRunning(config.ray.namespace, "", tuple(leftovers)) from None
        return cls(config, app, connected=connecting)

    # --- operating it ---

    @property
    def cluster_address(self) -> str:
        """The Ray cluster's GCS address (host:port)."""
        return ray_calls.gcs_address()

    def status(self, timeout: float = 60.0) -> list[RoleStatus]:
        return cast(list[RoleStatus], self._ask("status", timeout=timeout))

    def notices(
        self,
        after: int,
        wait: float,
        follower: str | None = None,
        *,
        give_up: Callable[[], bool] | None = None,
    ) -> tuple[int, list[dict[str, Any]], bool]:
        """Notices after ``after`` (waiting up to ``wait`` s), the last number, stopped?
        A ``follower`` name (the same on every call) makes a stop wait until it has the
        app's last notice (``JoblineApp.notices``). ``give_up`` is asked every
        ``GIVE_UP_EVERY`` s while the answer is awaited: when it says so, the answer is
        "nothing new" at once (a follower told to stop by a signal does not wait the look
        out)."""
        reply = ray_calls.send(self.app, "notices", after, wait, follower)
        deadline = time.monotonic() + wait + 30
        while True:
            left = deadline - time.monotonic()
            try:
                answer = ray_calls.wait(reply, max(min(GIVE_UP_EVERY, left), 0.0))
                return cast(tuple[int, list[dict[str, Any]], bool], answer)
            except ray_calls.NoReply:
                if left <= GIVE_UP_EVERY:
                    raise
                if give_up is not None and give_up():
                    return after, [], False

    def stop(self, follower: str | None = None) -> list[str]:
        """Stop the app in order (``JoblineApp.stop``; ``follower``: the notices' follower
        stopping it, not waited for), remove it, and let go of Ray."""
        namespace = self.config.ray.namespace
        try:
            lines = cast(list[str], self._ask("stop", follower, timeout=STOP_TIMEOUT * 4))
        except Exception as exc:
            lines = [f"the app did not stop in order ({one_line(exc)}); its actors were killed"]
        record = read_record(namespace)
        if record is not None:
            write_record(namespace, {**record, "stopped": time.time()})
        with contextlib.suppress(Exception):
            ray_calls.kill(self.app)
        remove_leftovers(namespace)
        self._handles.clear()
        if self.connected:
            ray_calls.shutdown()
        return lines

    def _ask(self, method: str, *args: Any, timeout: float) -> Any:
        return ray_calls.wait(ray_calls.send(self.app, method, *args), timeout)

    # --- the harness's calls ---

    def roles(self) -> list[str]:
        return cast(list[str], self._ask("role_names", timeout=60))

    @property
    def handles(self) -> dict[str, ray_calls.Handle]:
        return {role: self.handle(role) for role in self.roles()}

    def handle(self, role: str) -> ray_calls.Handle:
        if role not in self._handles:
            self._handles[role] = ray_calls.get_actor(actor_name(role), self.config.ray.namespace)
        return self._handles[role]

    def wait_ready(self, timeout: float = 60.0) -> None:
        ray_calls.wait([ray_calls.send(h, "ready") for h in self.handles.values()], timeout)

    def proxy(self, role: str) -> RemoteProxy:
        return RemoteProxy(self.handle(role))

    def call(self, role: str, method: str, *args: Any, timeout: float = 60.0) -> Any:
        """A blocking call from the driver (CLI, tests, chaos harness)."""
        return ray_calls.wait(ray_calls.send(self.handle(role), "call", method, *args), timeout)

    def pid(self, role: str) -> int:
        return cast(int, ray_calls.wait(ray_calls.send(self.handle(role), "pid"), 30))

    def nearby_calls(self, role: str) -> dict[str, int]:
        """The role's calls that went over a socket, by role called, and ``"served"``: the
        calls it answered over its own (``RoleHost.nearby_calls``)."""
        counts = ray_calls.wait(ray_calls.send(self.handle(role), "nearby_calls"), 30)
        return cast(dict[str, int], counts)

    def kill(self, role: str, *, restart: bool = True) -> None:
        """Kill an actor's process (chaos); Ray restarts it unless ``restart`` is False."""
        ray_calls.kill(self.handle(role), restart=restart)

    def node_of(self, role: str) -> str:
        """The id of the Ray node the role's actor runs on now."""
        return cast(str, ray_calls.wait(ray_calls.send(self.handle(role), "node_id"), 60))


def deploy_app(
    config: JoblineConfig,
    seed: int | None,
    customization: Customization,
    check_nodes: bool,
    ready_timeout: float,
) -> Any:
    namespace = config.ray.namespace
    names = app_actors(namespace)
    if actor_name(APP) in names:
        raise AppAlreadyRunning(namespace)
    if names:
        raise DeploymentError(
            (
                f"actors of app {namespace!r} are left on this Ray cluster ({', '.join(names)}) "
                "by a deployment that did not stop cleanly: `jobline stop` removes them",
            )
        )
    must_exist = ledger_expectation(config)
    ledger = ledger_node(ray_calls.nodes(), config)
    try:
        app = ray_calls.create_actor(
            JoblineApp,
            (config, seed, customization, public_env(), must_exist),
            name=actor_name(APP),
            namespace=namespace,
            max_restarts=-1,
            max_concurrency=1000,
            node_id=ledger.node_id,
        )
    except ray_calls.ActorNameTaken:  # between our look and now
        raise AppAlreadyRunning(namespace) from None
    try:
        ray_calls.wait(
            ray_calls.send(app, "deploy", check_nodes, ready_timeout), ready_timeout + 30
        )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            ray_calls.kill(app)
        remove_leftovers(namespace)
        cause = ray_calls.remote_cause(exc)
        if isinstance(cause, DeploymentError):
            raise DeploymentError(cause.problems) from None
        if isinstance(exc, ray_calls.NoReply):
            raise DeploymentError(
                (f"the roles were not ready within {ready_timeout:.0f}s",)
            ) from None
        raise
    now = time.time()
    record = read_record(namespace) or {
        "database": str(config.storage.database),
        "first_served": now,
    }
    write_record(
        namespace, {**record, "served": now, "stopped": None, "ledger_node": ledger.address}
    )
    return app


def remove_leftovers(namespace: str) -> list[str]:
    """Kill every jobline actor left in ``namespace``; their names."""
    names = app_actors(namespace)
    for name in names:
        with contextlib.suppress(Exception):
            ray_calls.kill(ray_calls.get_actor(name, namespace))
    return names
