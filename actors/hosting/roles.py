"""One role in one Ray actor (``RoleHost``), how the others call it (``RemoteProxy``), and
how its notices reach the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

from actors.hosting import ray_calls
from actors.hosting.cluster import (
    APP,
    NOTICE_FLUSH,
    RECONCILE_INTERVAL,
    actor_name,
    one_line,
    retried_calls,
)
from actors.hosting.nearby_calls import CallLost, NearbyClient, NearbyServer, NotNearby
from actors.wiring import (
    LEDGER,
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
from runtime.ports import LedgerPort, ProcessorPort
from runtime.results_s3 import bucket_problems
from runtime.startup import missing_environment
from runtime.telemetry import Family, JsonFormatter, configure_logging, get_logger, is_notice

log = get_logger("hosting")

ROLES_TIMEOUT = 2.0  # s a gateway waits for the app's list of roles before a scrape


# --- one role in one actor ----------------------------------------------------------------


class RemoteProxy:
    """``await proxy.method(*args)`` runs ``method`` on the object inside a ``RoleHost``
    actor (``ray_calls.forward``: what it raised comes back as itself when it is a
    ``JoblineError``, else as ``ActorCallFailed``; Ray's failures to reach the actor stay
    Ray's, for the caller to retry).

    ``nearby``: the call goes over the actor's socket when it is on this machine
    (``nearby_calls``), else through Ray. A call whose connection broke is sent again
    through Ray when ``retried`` (the actor's calls are retried across its restarts, so Ray
    would send it again too), else it raises ``CallLost``.
    """

    def __init__(
        self, handle: ray_calls.Handle, *, nearby: bool = False, retried: bool = False
    ) -> None:
        self._handle = handle
        self._nearby = NearbyClient(ray_calls.actor_id(handle)) if nearby else None
        self._retried = retried

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        handle, nearby, retried = self._handle, self._nearby, self._retried

        async def call(*args: Any, **kwargs: Any) -> Any:
            if nearby is not None:
                try:
                    return await nearby.call(name, args, kwargs)
                except NotNearby:
                    pass
                except CallLost:
                    if not retried:
                        raise
            return await ray_calls.forward(handle, name, *args, **kwargs)

        return call

    @property
    def nearby_calls(self) -> int:
        """How many calls went over the socket (not through Ray)."""
        return self._nearby.calls if self._nearby is not None else 0


class _NoticeForwarder(logging.Handler):
    """Sends this process's notices (``telemetry.is_notice``) to the app, in batches: a
    notice logged while none was sent for ``NOTICE_FLUSH`` s goes at once, later ones
    within ``NOTICE_FLUSH`` s of the last send. Between notices it waits and does nothing
    (no timer)."""

    def __init__(self, formatter: JsonFormatter, namespace: str) -> None:
        super().__init__()
        self._formatter = formatter
        self._namespace = namespace
        self._pending: deque[dict[str, Any]] = deque(maxlen=1000)
        self._app: ray_calls.Handle = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: asyncio.Event | None = None  # set: something is pending

    def emit(self, record: logging.LogRecord) -> None:
        if is_notice(record):
            try:
                self._pending.append(self._formatter.as_dict(record))
            except Exception:
                self.handleError(record)
                return
            self._wake()

    def _wake(self) -> None:
        loop, waiting = self._loop, self._waiting
        if loop is None or waiting is None:
            return  # not running yet: ``run`` sends what is pending when it starts
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            waiting.set()
        else:  # another thread's notice
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to send
                loop.call_soon_threadsafe(waiting.set)

    async def run(self, flush: float = NOTICE_FLUSH) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiting = asyncio.Event()
        while True:
            if not self._pending:
                self._waiting.clear()
                await self._waiting.wait()
            await self.send_pending()
            await asyncio.sleep(flush)  # at most one send per ``flush`` s

    async def send_pending(self) -> None:
        """Send what is pending now; with no app to take them (a harness, a stop under
        way), they are dropped and the reason logged (to the role's own log only)."""
        batch = []
        while self._pending:
            batch.append(self._pending.popleft())
        if not batch:
            return
        try:
            if self._app is None:
                self._app = ray_calls.get_actor(actor_name(APP), self._namespace)
            await ray_calls.send(self._app, "post", batch)
        except Exception as exc:
            self._app = None
            log.info("%d notices not sent to the app: %s", len(batch), one_line(exc))


class RoleNames:
    """The roles that exist now, as the app knows them (a gateway's ``/metrics`` asks each
    of them; the app adds gateways as nodes join). Asked for (``refresh``) only when metrics
    are collected, at most once per ``fresh`` s, never in between; the last known names
    when the app does not answer within ``timeout`` s (restarting, or none: a harness)."""

    def __init__(
        self,
        known: list[str],
        ask: Callable[[], Awaitable[list[str]]],
        *,
        fresh: float = RECONCILE_INTERVAL,
        timeout: float = ROLES_TIMEOUT,
    ) -> None:
        self.names = list(known)
        self._ask = ask
        self._fresh = fresh
        self._timeout = timeout
        self._asked: float | None = None  # loop time of the last ask
        self.asks = 0

    async def refresh(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._asked is not None and now - self._asked < self._fresh:
            return
        self._asked = now
        self.asks += 1
        with contextlib.suppress(Exception):
            self.names = list(await asyncio.wait_for(self._ask(), self._timeout))


class RoleHost:
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
        self._proxies = handles
        self._app: ray_calls.Handle = None
        self._roles = RoleNames(all_roles(config), lambda: self._app_roles(namespace))

        nearby = config.ray.nearby_calls

        def proxy(target: str) -> RemoteProxy:
            if target not in handles:
                handles[target] = RemoteProxy(
                    ray_calls.get_actor(actor_name(target), namespace),
                    nearby=nearby,
                    retried=retried_calls(target),
                )
            return handles[target]

        def sources() -> dict[str, MetricSource]:
            return {
                r: (self._own_metrics if r == role else proxy(r).collect_metrics)
                for r in self._roles.names
            }

        ports = Ports(
            ledger=lambda: cast(LedgerPort, proxy(LEDGER)),
            processor=lambda vendor: cast(ProcessorPort, proxy(processor_role(vendor))),
            metric_sources=sources,
            vendors=list(config.vendors),
            refresh_roles=self._roles.refresh,
        )
        if ray_calls.restarted():
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
        self._server = NearbyServer(ray_calls.current_actor_id(), self.call, ray_calls.answerable)
        if nearby:
            self._background.append(loop.create_task(self._server.start()))
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

    async def _app_roles(self, namespace: str) -> list[str]:
        try:
            if self._app is None:
                self._app = ray_calls.get_actor(actor_name(APP), namespace)
            return cast(list[str], await ray_calls.send(self._app, "role_names"))
        except Exception:
            self._app = None  # gone (a new app is a new actor): looked up again next time
            raise

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
        answer = await getattr(self._object, method)(*args, **kwargs)
        if method == "stop":  # the app removes this actor next: its last notices go now
            await self._notices.send_pending()
        return answer

    def pid(self) -> int:
        return os.getpid()

    def nearby_calls(self) -> dict[str, int]:
        """How many of this role's calls to each role went over the socket (not Ray), and
        how many calls it answered over its own (``"served"``)."""
        counts = {role: proxy.nearby_calls for role, proxy in self._proxies.items()}
        return {**counts, "served": self._server.served}

    def node_id(self) -> str:
        return ray_calls.node_id()


def node_problems(config: JoblineConfig) -> list[str]:
    """Runs on one node: the secrets its environment lacks (names only), and whether
    the result bucket answers to its credentials."""
    return [*missing_environment(config, os.environ), *bucket_problems(config.storage)]
