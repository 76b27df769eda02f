"""The app's own actor, ``JoblineApp`` (``jobline-app``, beside the ledger): it places,
creates, watches and stops every role, keeps their notices and answers status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actors.hosting import ray_calls
from actors.hosting.cluster import (
    APP,
    NOTICES_KEPT,
    READY_TIMEOUT,
    RECONCILE_INTERVAL,
    STOP_TIMEOUT,
    actor_name,
    app_actors,
    one_line,
    retried_calls,
)
from actors.hosting.roles import RoleHost, node_problems
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
    processor_role,
)
from runtime.config import JoblineConfig
from runtime.errors import DeploymentError
from runtime.telemetry import JsonFormatter, configure_logging, get_logger, is_notice

log = get_logger("hosting")

FOLLOWERS_ANSWERED = 3.0  # s a stop waits for the followers' answers at most
FOLLOWER_SEEN = 5.0  # s: a follower that asked this recently is still following


# --- the app ------------------------------------------------------------------------------


class _Notices:
    """The app's recent notices, numbered; readers wait for the next ones."""

    def __init__(self) -> None:
        self._lines: deque[tuple[int, dict[str, Any]]] = deque(maxlen=NOTICES_KEPT)
        self._seq = 0
        self._changed = asyncio.Event()
        # Each follower (``jobline serve``, ``jobline logs -f``): the last number it was
        # answered with, and when (loop time).
        self._followers: dict[str, tuple[int, float]] = {}

    def add(self, lines: Sequence[dict[str, Any]]) -> None:
        for line in lines:
            self._seq += 1
            self._lines.append((self._seq, line))
        self._changed.set()

    @property
    def last(self) -> int:
        return self._seq

    async def since(
        self, after: int, wait: float, follower: str | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        if follower is not None:  # seen now, answered with nothing new yet
            self._followers[follower] = (after, loop.time())
        if self._seq <= after and wait > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
        if follower is not None:
            self._followers[follower] = (self._seq, loop.time())
        return self._seq, [line for seq, line in self._lines if seq > after]

    async def followers_have(
        self, seq: int, recent: float, timeout: float, but: str | None = None
    ) -> None:
        """Until every follower (``but`` one) seen in the last ``recent`` s was answered
        with notice ``seq`` or later (at most ``timeout`` s): one between two calls is
        waited for."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            now = loop.time()
            behind = [
                name
                for name, (answered, seen) in self._followers.items()
                if answered < seq and now - seen < recent and name != but
            ]
            if not behind:
                return
            await asyncio.sleep(0.01)


class _NoticeKeeper(logging.Handler):
    """The app's own notices go straight into its list (from any thread)."""

    def __init__(self, formatter: JsonFormatter, notices: _Notices) -> None:
        super().__init__()
        self._formatter = formatter
        self._notices = notices
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if is_notice(record):
            line = self._formatter.as_dict(record)
            if threading.get_ident() == self._loop_thread:
                # On the loop: in the list before the next statement runs, so a notice
                # logged before a state change is seen by any reader that sees the change.
                self._notices.add([line])
            else:
                self._loop.call_soon_threadsafe(self._notices.add, [line])


class JoblineApp:
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
        self._handles: dict[str, ray_calls.Handle] = {}
        self._details: dict[str, str] = {}  # role -> what it serves (a gateway's host:port)
        self._targets: list[dict[str, Any]] | None = None
        self._stopped = False
        self._reconciler: asyncio.Task[None] | None = None
        if ray_calls.restarted():
            for name in app_actors(self._namespace):
                if name != actor_name(APP):
                    role = name.removeprefix("jobline-")
                    self._handles[role] = ray_calls.get_actor(name, self._namespace)
            self._reconciler = asyncio.get_running_loop().create_task(self._reconcile_forever())
            log.warning("the app's actor restarted and found %d roles", len(self._handles))

    def __repr__(self) -> str:
        return APP

    # --- deploy ---

    async def deploy(self, check_nodes: bool, timeout: float) -> list[RoleStatus]:
        """Create every role where it belongs and wait until all are ready; on any
        failure remove them again and raise DeploymentError, one line per problem."""
        config = self._config
        nodes = await asyncio.to_thread(ray_calls.nodes)
        ledger = ledger_node(nodes, config)
        gateway_nodes(nodes, config)
        if check_nodes:
            await self._check_environment(nodes)
        # The ledger first: if its file is missing where it must exist, nothing else
        # starts (every other role reads it as it starts).
        self._create(LEDGER, node_id=ledger.node_id)
        problems = await self._wait_ready([LEDGER], timeout)
        if problems:
            await self._kill([LEDGER])
            raise DeploymentError(tuple(problems))
        self._create(SWEEPER, node_id=ledger.node_id)
        for vendor in config.vendors:
            self._create(processor_role(vendor))
        for role, node_id in gateways_to_add({}, nodes, config):
            self._create(role, node_id=node_id)
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
        answers = await asyncio.gather(
            *ray_calls.run_on_nodes(node_problems, [n.node_id for n in hosts], self._config),
            return_exceptions=True,
        )
        problems = []
        for node, answer in zip(hosts, answers, strict=True):
            if isinstance(answer, BaseException):
                problems.append(f"node {node.label}: cannot check it: {one_line(answer)}")
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

    def _create(self, role: str, node_id: str | None = None) -> None:
        """Create the role's actor: on ``node_id`` if given, else where Ray finds room."""
        config = self._config
        must_exist = self._ledger_must_exist if role == LEDGER else None
        processor = role.startswith("processor-")
        self._handles[role] = ray_calls.create_actor(
            RoleHost,
            (role, config, self._seed, self._customization, self._env, must_exist),
            name=actor_name(role),
            namespace=self._namespace,
            max_restarts=config.ray.max_restarts,
            max_task_retries=-1 if retried_calls(role) else 0,
            max_concurrency=10_000,
            node_id=node_id,
            resources=config.ray.processor_resources if processor else None,
        )

    async def _wait_ready(self, roles: Sequence[str], timeout: float) -> list[str]:
        """One line per role that did not start; the ledger's alone if it failed (the
        others then fail only because it did)."""
        answers = await asyncio.gather(
            *(asyncio.wait_for(self._ready(role, self._handles[role]), timeout) for role in roles),
            return_exceptions=True,
        )
        failed = {}
        for role, answer in zip(roles, answers, strict=True):
            if isinstance(answer, BaseException):
                reason = (
                    "not ready in time" if isinstance(answer, TimeoutError) else (one_line(answer))
                )
                failed[role] = reason
        if LEDGER in failed:
            return [f"{LEDGER}: {failed[LEDGER]}"]
        return [f"{role}: {reason}" for role, reason in failed.items()]

    async def _ready(self, role: str, handle: ray_calls.Handle) -> dict[str, Any]:
        info: dict[str, Any] = await ray_calls.send(handle, "ready")
        self._details[role] = info["detail"]
        return info

    async def _kill(self, roles: Sequence[str]) -> None:
        for role in roles:
            handle = self._handles.pop(role, None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    ray_calls.kill(handle)

    # --- watch ---

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            try:
                await self._reconcile()
            except Exception:
                log.exception("looking at the cluster failed")

    async def _reconcile(self) -> None:
        """Gateways for nodes that joined, none for nodes that left; the targets file.

        Ray restarts every other role itself: their states are read only for the targets
        file, when there is one. Nodes and states are read in one hop to a thread."""
        targets = self._config.metrics.targets_file is not None
        watched = {
            role: handle
            for role, handle in self._handles.items()
            if targets or role.startswith("gateway-")
        }
        found, states = await asyncio.to_thread(_look, watched)
        nodes = {node.node_id: node for node in found}
        where: dict[str, Node] = {}
        gateways: dict[str, str] = {}
        for role, actor in states.items():
            if role not in self._handles:  # removed while this looked (a stop)
                continue
            node = nodes.get(actor.node_id)
            state = actor.state
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
            self._create(role, node_id=node_id)
            handle = self._handles[role]
            asyncio.get_running_loop().create_task(self._announce(role, handle, nodes[node_id]))
        await self._write_targets(where)

    async def _announce(self, role: str, handle: ray_calls.Handle, node: Node) -> None:
        """A gateway placed on a node that joined: its own notice says when it is ready."""
        try:
            await asyncio.wait_for(self._ready(role, handle), READY_TIMEOUT)
        except Exception as exc:
            log.error("%s did not start on %s: %s", role, node.label, one_line(exc))

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

    async def notices(
        self, after: int, wait: float, follower: str | None = None
    ) -> tuple[int, list[dict[str, Any]], bool]:
        """The notices after number ``after`` (waiting up to ``wait`` s for one), the
        last number, and whether the app has stopped. A ``follower`` (a name of its own,
        the same on every call) is waited for by ``stop`` until it has the last notice."""
        seq, lines = await self._notices.since(after, 0 if self._stopped else wait, follower)
        return seq, lines, self._stopped

    async def status(self) -> list[RoleStatus]:
        nodes = {node.node_id: node for node in await asyncio.to_thread(ray_calls.nodes)}
        # The roles as they are now: the reconciler removes a lost node's gateways while
        # this awaits, and a row for a role it removed would name nothing.
        handles = {role: self._handles[role] for role in _ordered(self._handles)}
        roles = list(handles)
        actors = [await asyncio.to_thread(ray_calls.actor_state, handles[r]) for r in roles]
        pings = await asyncio.gather(
            *(asyncio.wait_for(self._ready(r, handles[r]), 2.0) for r in roles),
            return_exceptions=True,
        )
        rows = []
        for role, actor, ping in zip(roles, actors, pings, strict=True):
            error = ""
            if isinstance(ping, BaseException):
                error = (
                    "no answer within 2s" if isinstance(ping, TimeoutError) else (one_line(ping))
                )
            rows.append(
                RoleStatus(
                    role=role,
                    state=actor.state,
                    ready=not error,
                    node=nodes.get(actor.node_id),
                    restarts=actor.restarts,
                    detail=self._details.get(role, ""),
                    error=error,
                )
            )
        return rows

    async def stop(self, follower: str | None = None) -> list[str]:
        """Drain the gateways, stop processors and sweeper, close and checkpoint the
        ledger, remove every role. One line per step. Before it returns, every follower of
        the notices but ``follower`` (the one stopping it) has the last one."""
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
        await self._write_targets({})
        # The last notice is in the list before a follower can be told the app stopped
        # (``notices``): it stops reading at that answer.
        log.info("app %r stopped", self._namespace, extra={"notice": True})
        self._stopped = True
        # `jobline stop` removes this actor once this returns: the followers get their
        # answer with the last notice first.
        await self._notices.followers_have(
            self._notices.last, FOLLOWER_SEEN, FOLLOWERS_ANSWERED, but=follower
        )
        return [line for line in lines if line]

    async def _stop_group(self, roles: Sequence[str], verb: str) -> str:
        if not roles:
            return ""
        answers = await asyncio.gather(
            *(
                asyncio.wait_for(ray_calls.send(self._handles[r], "call", "stop"), STOP_TIMEOUT)
                for r in roles
            ),
            return_exceptions=True,
        )
        failed = [
            f"{role} ({one_line(answer) or type(answer).__name__})"
            for role, answer in zip(roles, answers, strict=True)
            if isinstance(answer, BaseException)
        ]
        done = [role for role in roles if not any(f.startswith(f"{role} ") for f in failed)]
        text = f"{', '.join(done)} {verb}" if done else ""
        if failed:
            text += ("; " if text else "") + "failed to stop: " + ", ".join(failed)
        return text


def _look(
    handles: dict[str, ray_calls.Handle],
) -> tuple[list[Node], dict[str, ray_calls.ActorState]]:
    """The cluster's nodes and Ray's record of each actor, now (blocking calls to the GCS)."""
    return ray_calls.nodes(), {role: ray_calls.actor_state(h) for role, h in handles.items()}


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
