"""The simulated system: jobline's roles wired in one process on virtual time, its
vendors in memory, and the doors through which faults come in.

:class:`World` builds every role with ``actors.wiring.build_role``, the same function Ray's
hosting calls, with a ``Wiring`` of its own: the virtual clock, the run's seed, jobline's
vendor adapters talking to the in-memory fakes, an in-memory result store, no-op tracing,
and a ledger that runs inline on the loop on a non-durable SQLite file. Roles reach each
other through ``Ports`` whose targets are looked up on every call, so a role rebuilt after
a crash is found by the others at once, as a restarted Ray actor is found by its name.

The ledger is reached through :class:`WatchedLedger`, which hands every batch and its
outcomes to the ``Watch`` (the invariants, checked as the run goes) and is where ledger
faults come in: calls refused while the ledger is down, answers lost after a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from opentelemetry.trace import NoOpTracerProvider

from actors.gateway import Gateway
from actors.ledger import CreditLedger
from actors.processor import VendorProcessor
from actors.wiring import (
    LEDGER,
    SWEEPER,
    Customization,
    Ports,
    Role,
    Wiring,
    all_roles,
    build_role,
    processor_role,
)
from loadtests.sim.faults import PATCHES, Fault, fitted
from loadtests.sim.gateway import ApiReply, InMemoryApi
from loadtests.sim.loop import VirtualClock
from loadtests.sim.results import MemoryResultStore
from loadtests.sim.trace import Trace
from loadtests.sim.vendors import Vendors, in_memory_config
from loadtests.sim.watch import Watch
from runtime.config import JoblineConfig
from runtime.errors import LedgerUnavailable
from runtime.ledger import LedgerMode
from runtime.ledger_schema import memory_uri
from runtime.models import LedgerOp, Outcome, Violation
from runtime.ports import LedgerPort, ProcessorPort
from runtime.tracing import JobTracer
from vendors_fake.profile import FaultProfile, merge_profile

GATEWAY = "gateway-0"
PUBLIC_URL = "http://gateway.sim.invalid"
ADMIN_TOKEN = "sim-admin-token"


class ActorDown(ConnectionError):
    """A call to a role while it is down (Ray: the actor is restarting)."""


class _DownRole:
    """What a crashed role answers until it is back: every call fails."""

    def __init__(self, role: str) -> None:
        self.role = role

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise ActorDown(f"{self.role} is restarting")

        return refuse


class WatchedLedger:
    """The ledger port every role uses: the current ledger object, watched and faulted."""

    FLAKY_SHARE = 1 / 3  # of the write batches that fail while the ledger is flaky

    def __init__(self, world: World) -> None:
        self._world: World = world
        self.down_until = -1.0
        self.lost_until = -1.0
        self.flaky_until = -1.0
        self._rng = random.Random(f"{world.seed}:ledger-faults")

    def release(self) -> None:
        """The run is over: let go of its world (aiohttp's handler cache keeps this)."""
        del self._world

    async def execute_many(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        world = self._world
        now = world.clock.elapsed()
        if now < self.down_until:
            world.trace.add("ledger-refused", len(ops))
            raise LedgerUnavailable("the ledger is down (simulated)")
        if now < self.flaky_until and self._rng.random() < self.FLAKY_SHARE:
            world.trace.add("ledger-failed", len(ops))
            raise LedgerUnavailable("disk I/O error (simulated)")
        outcomes = await world.ledger_object().execute_many(ops)
        world.watch.batch(ops, outcomes)
        if world.clock.elapsed() < self.lost_until:
            world.trace.add("ledger-answer-lost", len(ops))
            raise LedgerUnavailable("the ledger's answer was lost (simulated)")
        return outcomes

    async def check_invariants(self) -> int:
        """The sweeper's periodic check: the simulation checks the invariants continuously
        itself (``Watch``), so it answers with what it found instead of reading the whole
        database inline every minute of virtual time."""
        return len(self._world.watch.violations)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # _world, once released
            raise AttributeError(name)
        world = self._world
        target = getattr(world.ledger_object(), name)

        async def read(*args: Any, **kwargs: Any) -> Any:
            if world.clock.elapsed() < self.down_until:
                raise LedgerUnavailable("the ledger is down (simulated)")
            return await target(*args, **kwargs)

        return read


@dataclasses.dataclass
class WorldOptions:
    config: JoblineConfig
    profiles: Mapping[str, FaultProfile]
    seed: int
    data: Path
    customization: Customization = dataclasses.field(default_factory=Customization)
    trace_sink: TextIO | None = None  # a file that gets every line of the trace
    task_horizon: float | None = None  # see ``SimSettings.task_horizon``


class World:
    def __init__(self, options: WorldOptions) -> None:
        self.options = options
        self.seed = options.seed
        self.clock = VirtualClock()
        self.trace = Trace(self.clock.elapsed, sink=options.trace_sink)
        config = in_memory_config(options.config)
        self.config = config.model_copy(
            update={
                "gateway": config.gateway.model_copy(
                    update={"public_url": PUBLIC_URL, "replicas": 1}
                ),
                "storage": config.storage.model_copy(
                    update={"database": options.data / "ledger.db", "results": options.data}
                ),
            }
        )
        self.vendors = Vendors(
            self.config,
            options.profiles,
            seed=options.seed,
            wall_clock=self.clock.time,
            post_webhook=self._post_webhook,
            trace=self.trace,
        )
        self.results = MemoryResultStore()
        self.wiring = Wiring(
            clock=self.clock,
            seed=options.seed,
            customization=options.customization,
            vendor_clients=self.vendors.client,
            result_stores=lambda _: self.results,
            tracers=_no_tracing,
            ledger_mode=LedgerMode(inline=True, durable=False, memory=True),
        )
        self.watch = Watch(
            self.config, self.trace, self.clock.elapsed, self.vendors.fakes, epoch=self.clock.epoch
        )
        self.ledger = WatchedLedger(self)
        # A vendor task is asked about while its job is open (at most its deadline and
        # the sweeper's grace) and looked for in lists back to its submit: one ended before
        # twice that is never asked about again, and the fakes let go of it.
        longest = max(self.config.job_deadline(model) for model in self.config.models.values())
        self.task_horizon = options.task_horizon or 2 * (longest + self.watch.grace)
        self.tasks_let_go = 0
        self.objects: dict[str, Role | _DownRole] = {}
        self._starting: dict[str, asyncio.Future[Any]] = {}  # roles whose start is under way
        self._crashes: dict[str, int] = {}  # by role: how many times it crashed
        self._down_until: dict[str, float] = {}  # by role: when its last crash is over
        self.ports = Ports(
            ledger=lambda: cast(LedgerPort, self.ledger),
            processor=lambda vendor: cast(ProcessorPort, self.objects[processor_role(vendor)]),
            metric_sources=lambda: {},
            vendors=list(self.config.vendors),
        )
        self.api: InMemoryApi | None = None
        self.unhandled = 0  # exceptions no task handled (found when the task is collected:
        self.unhandled_seen: list[str] = []  # counted, kept out of the trace, whose order
        # must not depend on when the garbage collector runs)
        self._disk: sqlite3.Connection | None = None
        self.roles = all_roles(self.config, gateways=1)
        self._base_profiles = {name: fake.core.profile for name, fake in self.vendors.fakes.items()}
        self._patches: dict[str, list[tuple[int, dict[str, Any]]]] = {
            name: [] for name in self.vendors.fakes
        }
        self._patch_ids = 0

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        asyncio.get_running_loop().set_exception_handler(self._unhandled)
        # The database is in memory and lives while a connection is open: this one keeps
        # it across a crash of the ledger, as the disk would.
        self._disk = sqlite3.connect(memory_uri(self.config.storage.database), uri=True)
        for role in self.roles:
            await self._start_role(role)

    async def stop(self) -> None:
        for role in reversed(self.roles):
            with contextlib.suppress(Exception):
                await self._stop_role(role)
        for fake in self.vendors.fakes.values():
            await asyncio.gather(*fake.core.stop_pending(), return_exceptions=True)
        self.objects.clear()
        gc.collect()  # tasks that died with an exception nobody retrieved report it now
        if self._disk is not None:
            self._disk.close()
            self._disk = None

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An exception no task handled (asyncio would log "Task exception was never
        retrieved"): a bug of whoever started the task; counted, and the first ones kept."""
        error = context.get("exception")
        where = context.get("future") or context.get("handle")
        name = getattr(getattr(where, "get_coro", lambda: None)(), "__qualname__", "")
        self.unhandled += 1
        if len(self.unhandled_seen) < 10:
            self.unhandled_seen.append(f"{name}: {error!r}")

    def release(self) -> None:
        """Drop what the run held (results, the fakes' tasks, the shadow ledger) once its
        result is taken. aiohttp keeps the middleware chains of the handlers it served in
        a process-wide cache, and through them the gateway's context; without this, an
        exploration of many seeds in one process would keep every run's memory."""
        self.results.release()
        for fake in self.vendors.fakes.values():
            fake.core.tasks.clear()
            fake.core.stats.attempts.clear()
        self.watch.jobs.clear()
        self.watch.ended.clear()
        self.trace.recent.clear()
        self.objects.clear()
        self.ledger.release()

    async def _start_role(self, role: str) -> None:
        built = build_role(role, self.config, self.wiring, self.ports)
        if isinstance(built, Gateway):  # no socket: its application answers in memory
            ctx = dataclasses.replace(built.ctx, admin_token=ADMIN_TOKEN)
            self.api = InMemoryApi(ctx)
            await self.api.start()
        else:
            # A role's start may wait (a processor waits for a ledger that is down): a
            # crash meanwhile kills it there, as it kills a restarting actor on Ray.
            starting = asyncio.ensure_future(built.start())
            self._starting[role] = starting
            try:
                await starting
            except asyncio.CancelledError:
                if self._starting.get(role) is starting:
                    raise  # the run ends
                with contextlib.suppress(Exception):
                    await built.stop()
                return  # crashed while starting: that crash starts it again
            finally:
                if self._starting.get(role) is starting:
                    del self._starting[role]
        self.objects[role] = built
        self.trace.add("started", role)

    async def _stop_role(self, role: str) -> None:
        current = self.objects.get(role)
        if role == GATEWAY and self.api is not None:
            api, self.api = self.api, None
            await api.stop()
        elif current is not None and not isinstance(current, _DownRole):
            await current.stop()

    def ledger_object(self) -> LedgerPort:
        current = self.objects.get(LEDGER)
        if current is None or isinstance(current, _DownRole):
            raise LedgerUnavailable("the ledger is restarting (simulated)")
        return cast(LedgerPort, current)

    def forget_old_tasks(self) -> int:
        """The fakes let go of the tasks that ended beyond ``task_horizon``, counted into
        the report (a long run would hold every task it ever made); how many."""
        return self.vendors.forget_ended(self.clock.time() - self.task_horizon)

    async def full_check(self) -> list[Violation]:
        """The whole database checked by ``runtime.invariants`` (nothing while the ledger
        is down)."""
        current = self.objects.get(LEDGER)
        if not isinstance(current, CreditLedger):
            return []
        return await current.ledger.check_invariants()

    def processor(self, vendor: str) -> VendorProcessor | None:
        found = self.objects.get(processor_role(vendor))
        return found if isinstance(found, VendorProcessor) else None

    # --- the HTTP API ---------------------------------------------------------------------

    async def http(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> ApiReply:
        """A request to the gateway; ``ActorDown`` while it is restarting."""
        api = self.api
        if api is None:
            raise ActorDown("the gateway is restarting")
        return await api.request(method, path, headers, body)

    async def _post_webhook(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> int | None:
        path_qs = _path_and_query(url)
        vendor = path_qs.partition("?")[0].rsplit("/", 1)[-1]
        sent = {**headers, "Content-Type": "application/json"}
        try:
            async with asyncio.timeout(timeout):  # no task of its own, unlike wait_for
                reply = await self.http("POST", path_qs, sent, body)
        except (TimeoutError, ActorDown):
            self.trace.add("webhook", vendor, "no-answer")
            return None
        self.trace.add("webhook", vendor, reply.status)
        return reply.status

    # --- faults ---------------------------------------------------------------------------

    async def act(self, fault: Fault) -> None:
        """Act out one fault from now; returns when it is over."""
        self.trace.add("fault", str(fault))
        if fault.kind == "outage":
            self.vendors[fault.target].core.start_outage(fault.length)
            await self.clock.sleep(fault.length)
        elif fault.kind in PATCHES:
            patch_id = self._patch(fault.target, PATCHES[fault.kind])
            await self.clock.sleep(fault.length)
            self._unpatch(fault.target, patch_id)
        elif fault.kind == "crash":
            await self.crash(fault.target, fault.length)
        elif fault.kind == "ledger-down":
            self.ledger.down_until = max(self.ledger.down_until, fault.at + fault.length)
            await self.clock.sleep(fault.length)
        elif fault.kind == "ledger-lost":
            self.ledger.lost_until = max(self.ledger.lost_until, fault.at + fault.length)
            await self.clock.sleep(fault.length)
        elif fault.kind == "ledger-flaky":
            self.ledger.flaky_until = max(self.ledger.flaky_until, fault.at + fault.length)
            await self.clock.sleep(fault.length)
        self.trace.add("fault-over", str(fault))

    async def crash(self, role: str, downtime: float) -> None:
        """The role's process dies: its object (and all it held in memory) is gone, calls
        to it fail for ``downtime`` seconds, then the wiring builds a fresh one, which
        loads what it needs from the ledger."""
        self.trace.add("crash", role)
        generation = self._crashes[role] = self._crashes.get(role, 0) + 1
        back_at = max(self._down_until.get(role, 0.0), self.clock.time() + downtime)
        self._down_until[role] = back_at
        starting = self._starting.pop(role, None)
        if starting is not None:
            starting.cancel()  # it died while starting
        await self._stop_role(role)
        self.objects[role] = _DownRole(role)
        await self.clock.sleep(downtime)
        # Down for as long as any of its crashes says (a later, shorter one ends no sooner).
        while self._crashes[role] == generation and self._down_until[role] > self.clock.time():
            await self.clock.sleep(self._down_until[role] - self.clock.time())
        if self._crashes[role] == generation:  # else it crashed again: that crash starts it
            await self._start_role(role)

    def _patch(self, vendor: str, patch: dict[str, Any]) -> int:
        self._patch_ids += 1
        self._patches[vendor].append((self._patch_ids, patch))
        self._apply_patches(vendor)
        return self._patch_ids

    def _unpatch(self, vendor: str, patch_id: int) -> None:
        self._patches[vendor] = [(i, p) for i, p in self._patches[vendor] if i != patch_id]
        self._apply_patches(vendor)

    def _apply_patches(self, vendor: str) -> None:
        profile = self._base_profiles[vendor]
        for _, patch in self._patches[vendor]:
            profile = merge_profile(profile, fitted(profile.model_dump(), patch))
        self.vendors[vendor].core.set_profile(profile)


def _path_and_query(url: str) -> str:
    """What an absolute URL puts on the request line: its path and query, as written."""
    rest = url.partition("://")[2]
    at = rest.find("/")
    return "/" if at < 0 else rest[at:]


def _no_tracing(role: str, config: JoblineConfig) -> JobTracer:
    return JobTracer(role, NoOpTracerProvider())


class _LogsToTrace(logging.Handler):
    """The roles' errors, as events of the trace (their message templates only: no
    values that could differ between two runs of a seed)."""

    def __init__(self, trace: Trace) -> None:
        super().__init__(logging.ERROR)
        self.trace = trace
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.errors += 1
        self.trace.add("log", record.name.removeprefix("jobline."), str(record.msg)[:80])


@contextlib.contextmanager
def logs_in_trace(trace: Trace) -> Iterator[_LogsToTrace]:
    """While a simulation runs, jobline's errors go to its trace, not to the terminal."""
    logger = logging.getLogger("jobline")
    handler = _LogsToTrace(trace)
    saved = (logger.level, logger.handlers[:], logger.propagate)
    logger.setLevel(logging.ERROR)
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


__all__ = ["GATEWAY", "SWEEPER", "ActorDown", "World", "WorldOptions", "logs_in_trace"]
