"""What every route module shares: the injected ``GatewayContext`` and the ``Api`` core.

``Api`` owns the gateway's few pieces of memory, none of which another replica or a
restart needs: the coalesced ledger calls (many concurrent requests share one actor
call), the jobs it has seen ended (``EndedJobs``: an ended job never changes again, so
reading it once is enough), the coalesced calls to each vendor's processor, the API keys
it has checked
(``runtime.api.auth``), the per-account bound on expensive reads
(``runtime.api.limits``), and the background tasks that send work on after the client
has its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from runtime import strict_json
from runtime.api.auth import Authenticator, bearer
from runtime.api.bodies import IDEMPOTENCY_KEY_PATTERN
from runtime.api.circuits import CircuitView
from runtime.api.errors import (
    HttpRefusal,
    bad_request,
    check_json,
    describe_validation,
    ledger_failure,
    read_body,
)
from runtime.api.limits import AccountReads, AccountStreams
from runtime.api.refusals import RecentRefusals
from runtime.batching import Coalescer
from runtime.clock import Clock
from runtime.config import JoblineConfig
from runtime.errors import (
    Forbidden,
    JoblineError,
    JobNotFound,
    LedgerUnavailable,
    Unauthorized,
)
from runtime.ledger_nearby import FileIdentity, NearbyLedgerReads
from runtime.models import Job, KeyMatch, LedgerOp, Outcome
from runtime.ports import LedgerPort, Router
from runtime.results import ResultStore
from runtime.telemetry import Family, Metrics, get_logger
from runtime.tracing import JobTracer
from runtime.vendors import VendorClient, WebhookEvent

log = get_logger("gateway")

LEDGER_TIMEOUT = 30.0  # a ledger call slower than this answers 503 (retry with the same key)
PROCESSOR_TIMEOUT = 30.0  # background calls to processors give up after this
SSE_POLL_INTERVAL = 0.3  # seconds between reads of a job an event stream follows
SSE_HEARTBEAT_INTERVAL = 15.0
ENDED_JOBS_KEPT = 20_000  # ended jobs a replica answers from memory (a few KiB each)

B = TypeVar("B", bound=BaseModel)
T = TypeVar("T")

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


@dataclass(frozen=True)
class GatewayContext:
    """Everything the HTTP API needs, injected (Ray handles or plain objects)."""

    config: JoblineConfig
    ledger: LedgerPort
    router: Router
    results: ResultStore
    webhook_parsers: Mapping[str, VendorClient]  # by vendor name
    metrics: Metrics
    tracer: JobTracer
    collect_all_metrics: Callable[[], Awaitable[list[Family]]]
    clock: Clock
    rng: random.Random  # job ids, trace ids, grant ids (never API keys: those use secrets)
    admin_token: str | None
    is_ready: Callable[[], Awaitable[bool]]
    # One role's metrics (``/metrics?actor=ROLE``); None: no role of that name.
    collect_metrics_of: Callable[[str], Awaitable[list[Family] | None]] | None = None


class EndedJobs:
    """The ended jobs this replica has read, newest kept, at most ``capacity``, each with
    its ``GET /v1/jobs/{id}`` body once it has been answered.

    Terminal states absorb (``runtime.states``: no transition leaves one, and the ledger's
    guards are in SQL), so an ended job's row never changes again: answering it from
    memory is exact, never stale, and so is the body rendered from it. A job not yet
    ended is never kept; it is read from the ledger each time.
    """

    def __init__(self, capacity: int = ENDED_JOBS_KEPT) -> None:
        self.capacity = capacity
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._bodies: dict[str, bytes] = {}  # by job id, only of jobs in _jobs

    def get(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None:
            self._jobs.move_to_end(job_id)
        return job

    def keep(self, job: Job | None) -> None:
        if job is None or not job.terminal or self.capacity <= 0:
            return
        if self._jobs.get(job.id) is not job:
            self._bodies.pop(job.id, None)
        self._jobs[job.id] = job
        self._jobs.move_to_end(job.id)
        while len(self._jobs) > self.capacity:
            gone, _ = self._jobs.popitem(last=False)
            self._bodies.pop(gone, None)

    def body(self, job: Job) -> bytes | None:
        """``job``'s API body as UTF-8 JSON, rendered once, if ``job`` is the ended job kept
        here under its id; None for any other job (not ended, not kept, or another copy)."""
        if self._jobs.get(job.id) is not job:
            return None
        body = self._bodies.get(job.id)
        if body is None:
            body = self._bodies[job.id] = strict_json.dumps(job.to_api()).encode("utf-8")
        return body

    def __len__(self) -> int:
        return len(self._jobs)


class _ProcessorCalls:
    """The coalesced calls to one vendor's processor."""

    def __init__(self, router: Router, vendor: str) -> None:
        self._router = router
        self.vendor = vendor
        self.dispatch: Coalescer[Job, None] = Coalescer(self._dispatch)
        self.webhooks: Coalescer[WebhookEvent, None] = Coalescer(self._webhooks)
        self.take: Coalescer[WebhookEvent, str] = Coalescer(self._take)
        self.cancels: Coalescer[str, None] = Coalescer(self._cancel)

    async def _dispatch(self, jobs: list[Job]) -> list[None]:
        await self._router.processor(self.vendor).dispatch(jobs)
        return [None] * len(jobs)

    async def _webhooks(self, events: list[WebhookEvent]) -> list[None]:
        await self._router.processor(self.vendor).on_webhooks(events)
        return [None] * len(events)

    async def _take(self, events: list[WebhookEvent]) -> list[str]:
        return list(await self._router.processor(self.vendor).take_webhooks(events))

    async def _cancel(self, job_ids: list[str]) -> list[None]:
        await self._router.processor(self.vendor).cancel_tasks(job_ids)
        return [None] * len(job_ids)


class Api:
    """The core the route modules share, bound to one GatewayContext."""

    def __init__(
        self,
        ctx: GatewayContext,
        *,
        sse_poll_interval: float = SSE_POLL_INTERVAL,
        sse_heartbeat_interval: float = SSE_HEARTBEAT_INTERVAL,
    ) -> None:
        self.ctx = ctx
        self.sse_poll_interval = sse_poll_interval
        self.sse_heartbeat_interval = sse_heartbeat_interval
        self.tracer = ctx.tracer
        self.closing = asyncio.Event()  # set on shutdown: long requests (event streams) end
        self.shutdown_hooks: list[Callable[[], None]] = []  # route modules' own, on shutdown
        self._ops: Coalescer[LedgerOp, Outcome] = Coalescer(self._execute_many)
        self._job_reads: Coalescer[str, Job | None] = Coalescer(self.get_jobs)
        self.ended = EndedJobs()
        self.nearby = NearbyLedgerReads(
            Path(ctx.config.storage.database), self._ledger_file_identity, ctx.clock.time
        )
        self._processors: dict[str, _ProcessorCalls] = {}
        gateway = ctx.config.gateway
        self.auth = Authenticator(
            gateway,
            ctx.clock,
            self._keys_for_hashes,
            lambda after_seq: self.read(ctx.ledger.revocations(after_seq)),
            self.execute,
        )
        self.reads = AccountReads(gateway.reads_in_flight_per_account)
        self.streams = AccountStreams(gateway.event_streams_per_account)
        self.refusals = RecentRefusals()  # submits its limits refused a moment ago
        self._background: set[asyncio.Task[None]] = set()
        self.circuits = CircuitView(ctx.router, ctx.clock, self.spawn)

    # --- ledger access --------------------------------------------------------------------

    async def _execute_many(self, ops: list[LedgerOp]) -> list[Outcome]:
        try:
            return await self.ctx.ledger.execute_many(ops)
        except JoblineError:
            raise
        except Exception as exc:  # the ledger actor is gone or restarting
            raise ledger_failure(exc) from exc

    async def get_jobs(self, job_ids: list[str]) -> list[Job | None]:
        """The jobs, in the order asked: from the ledger's file where this replica runs
        on the ledger's machine (``runtime.ledger_nearby``: exact, no actor call), else,
        and for any job not found there, through the ledger actor."""
        jobs = await self.nearby.jobs(job_ids)
        if jobs is None:
            return await self.read(self.ctx.ledger.get_jobs(job_ids))
        missing = [job_id for job_id, job in zip(job_ids, jobs, strict=True) if job is None]
        if missing:
            found = dict(
                zip(missing, await self.read(self.ctx.ledger.get_jobs(missing)), strict=True)
            )
            jobs = [job or found[job_id] for job_id, job in zip(job_ids, jobs, strict=True)]
        return jobs

    async def _ledger_file_identity(self) -> FileIdentity | None:
        return await self.read(self.ctx.ledger.file_identity())

    async def _keys_for_hashes(self, hashes: list[str]) -> list[KeyMatch | None]:
        return await self.read(self.ctx.ledger.keys_for_hashes(hashes))

    async def read(self, call: Awaitable[T]) -> T:
        """A ledger call's answer; a ledger that fails or takes too long is a 503."""
        try:
            async with asyncio.timeout(LEDGER_TIMEOUT):  # a timer, not a task per call
                return await call
        except JoblineError:
            raise
        except TimeoutError as exc:
            raise LedgerUnavailable(f"no answer within {LEDGER_TIMEOUT:.0f}s") from exc
        except Exception as exc:
            raise ledger_failure(exc) from exc

    async def execute(self, op: LedgerOp) -> Outcome:
        """One ledger operation, coalesced with every other request's."""
        return await self.read(self._ops.call(op))

    async def job(self, job_id: str) -> Job | None:
        """The job, or None: an ended job from memory if this replica saw it ended, else
        read from the ledger (coalesced with every other request's read)."""
        ended = self.ended.get(job_id)
        if ended is not None:
            return ended
        job = await self.read(self._job_reads.call(job_id))
        self.ended.keep(job)
        return job

    async def owned_job(self, job_id: str, account_id: str) -> Job:
        job = await self.job(job_id)
        if job is None or job.account_id != account_id:
            raise JobNotFound(job_id)
        return job

    # --- processors (fire and forget) -----------------------------------------------------

    def processor(self, vendor: str) -> _ProcessorCalls:
        calls = self._processors.get(vendor)
        if calls is None:
            calls = self._processors[vendor] = _ProcessorCalls(self.ctx.router, vendor)
        return calls

    def in_background(self, call: Awaitable[None], what: str, job: Job | None = None) -> None:
        """Run ``call`` without making the client wait; a failure is logged, not raised."""

        async def run() -> None:
            try:
                async with asyncio.timeout(PROCESSOR_TIMEOUT):  # a timer, not another task
                    await call
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                extra = {"error": repr(exc)}
                if job is not None:
                    extra |= {"job_id": job.id, "trace_id": job.trace_id, "vendor": job.vendor}
                log.warning(
                    "%s failed; the ledger keeps the job for the sweeper", what, extra=extra
                )

        self.spawn(run())

    def spawn(self, call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task the gateway waits for (briefly) when it shuts down."""
        task = asyncio.get_running_loop().create_task(call)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def dispatch(self, job: Job) -> None:
        """Hand a new job to its processor, in the background."""
        self.in_background(self._traced_dispatch(job), "dispatch", job)

    async def _traced_dispatch(self, job: Job) -> None:
        with self.tracer.span("dispatch", job.trace_id, job_id=job.id, vendor=job.vendor):
            await self.processor(job.vendor).dispatch.call(job)

    # --- request parts --------------------------------------------------------------------

    async def account(self, request: web.Request) -> str:
        """The account of the request's API key; 401 without a valid one."""
        return await self.auth.account(request)

    @contextlib.asynccontextmanager
    async def bounded_read(self, account_id: str, *, refuse: bool = True) -> AsyncIterator[None]:
        """Run an expensive read (a statement, a job list, an event stream's wake-up) in
        one of the account's slots; ``refuse=False``: wait however many wait already."""
        async with self.reads.slot(account_id, refuse=refuse):
            yield

    async def require_admin(self, request: web.Request) -> None:
        """Return if the request carries the admin token. 401 without a token or with an
        unknown one; 403 with an account's valid API key (authenticated, not allowed);
        503 when no admin token is set."""
        token = self.ctx.admin_token
        if not token:
            env = self.ctx.config.gateway.admin_token_env
            raise HttpRefusal(
                503, "admin_disabled", f"admin routes are off: no admin token is set ({env})"
            )
        given = bearer(request)
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            return
        if given is not None:
            try:  # an unknown key counts against its source, as on every other route
                await self.auth.account(request)
            except Unauthorized:
                pass
            else:
                raise Forbidden("this route needs the admin token, not an account's API key")
        raise Unauthorized("admin routes need the admin token as Authorization: Bearer")

    async def json_body(self, request: web.Request, model: type[B]) -> tuple[B, dict[str, Any]]:
        """The body validated as ``model``, and as the plain JSON object it was."""
        ctype = request.content_type
        if ctype != "application/json" and not (
            ctype.startswith("application/") and ctype.endswith("+json")
        ):
            raise HttpRefusal(
                415, "unsupported_media_type", f"send application/json, not {ctype or 'nothing'}"
            )
        raw = await self.body(request)
        if not raw:
            raise bad_request("the request body is empty")
        data = check_json(raw, self.ctx.config.gateway.max_json_depth)
        if not isinstance(data, dict):
            raise bad_request("the body must be a JSON object")
        try:
            return model.model_validate(data), data
        except ValidationError as exc:
            raise bad_request(describe_validation(exc)) from None

    async def body(self, request: web.Request) -> bytes:
        """The request body, read within ``gateway.body_timeout`` (else 408, closed)."""
        return await read_body(request, self.ctx.config.gateway.body_timeout)

    def idempotency_key(self, request: web.Request) -> str | None:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            raise bad_request(
                "Idempotency-Key must be 1 to 255 printable ASCII characters "
                "(no leading or trailing space)"
            )
        return key

    # --- lifecycle ------------------------------------------------------------------------

    async def on_shutdown(self, app: web.Application) -> None:
        self.closing.set()  # event streams end, so shutdown does not wait for them
        for hook in self.shutdown_hooks:
            hook()
        await self.auth.close()  # and the last key uses are written

    async def on_cleanup(self, app: web.Application) -> None:
        self.nearby.close()
        if self._background:
            _, pending = await asyncio.wait(list(self._background), timeout=2.0)
            for task in pending:  # the jobs are in the ledger; the sweeper has them
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def job_fields(job: Job) -> dict[str, Any]:
    """A job's log fields."""
    return {
        "job_id": job.id,
        "trace_id": job.trace_id,
        "vendor": job.vendor,
        "account_id": job.account_id,
    }
