"""The HTTP API (DESIGN §5) as an aiohttp application.

Theory of operation
-------------------
The gateway holds no state of its own: every request becomes ledger operations and
reads (through ``GatewayContext.ledger``) and, for new work, a message to a vendor's
processor (through ``GatewayContext.router``). Any replica can die at any time.

- Writes go through one ``Coalescer`` over ``ledger.execute_many`` and job reads through
  one over ``ledger.get_jobs``, so many concurrent requests share one actor call.
- A job is durable once ``OpenJob`` returns; the ``dispatch`` to its processor is sent
  afterwards, in the background, and may fail: a restarted processor or the sweeper
  picks the job up from the ledger. The same holds for ``cancel_tasks``.
- A webhook is verified, then recorded (``RecordWebhook``) before it is forwarded, so a
  webhook id is applied at most once; a repeat is acknowledged and dropped.
- One middleware turns every exception into ``{"error": {"code", "message"}}`` with a
  fitting status (``_ERRORS``); another counts requests by route template and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import jsonschema
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import BaseModel, ValidationError

from runtime.batching import Coalescer
from runtime.config import JoblineConfig, ModelConfig
from runtime.errors import (
    AccountNotFound,
    DeadLetterNotFound,
    IdempotencyConflict,
    IllegalTransition,
    InputInvalid,
    InsufficientCredits,
    JoblineError,
    JobNotFound,
    LedgerUnavailable,
    RequestError,
    ResultNotFound,
    ResultStoreUnavailable,
    TooManyJobsInFlight,
    Unauthorized,
    UnknownModel,
    WebhookRejected,
    WebhookSignatureInvalid,
    WebhookTimestampStale,
)
from runtime.ledger import new_job_id
from runtime.models import (
    Cancel,
    CreateAccount,
    Grant,
    Job,
    JobHistoryEntry,
    LedgerOp,
    OpenJob,
    Outcome,
    RecordWebhook,
    Redrive,
)
from runtime.openapi import (
    CURSOR_PATTERN,
    DEFAULT_DEAD_LETTERS,
    DEFAULT_PAGE,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_DEAD_LETTERS,
    MAX_PAGE,
    REPLAYED_HEADER,
    CreateAccountBody,
    GrantBody,
    SubmitJobBody,
    openapi_document,
)
from runtime.ports import LedgerPort, Router
from runtime.results import ResultStore
from runtime.results_http import result_response
from runtime.states import JobStatus
from runtime.telemetry import (
    TRACE_HEADER,
    Family,
    Metrics,
    Stopwatch,
    get_logger,
    new_trace_id,
    render,
)
from runtime.tracing import tracer_for
from runtime.vendors import VendorClient, WebhookEvent
from runtime.webhooks import ATTEMPT_PARAM, JOB_PARAM

log = get_logger("gateway")

LEDGER_TIMEOUT = 30.0  # a ledger call slower than this answers 503 (retry with the same key)
PROCESSOR_TIMEOUT = 30.0  # background calls to processors give up after this
WEBHOOK_ANSWER_WITHIN = 2.0  # a vendor's webhook is answered by then, forwarded or not
READY_TIMEOUT = 2.0
RETRY_AFTER_IN_FLIGHT = 5  # seconds, for 429 TooManyJobsInFlight
RETRY_AFTER_UNAVAILABLE = 1  # seconds, for 503
SSE_POLL_INTERVAL = 0.3
SSE_HEARTBEAT_INTERVAL = 15.0
SSE_GRACE_AFTER_DEADLINE = 60.0  # a stream outlives its job's deadline by at most this
KEY_CACHE_SIZE = 100_000
UNMATCHED_ROUTE = "unmatched"  # the metrics label of requests no route matched
MAX_REFERENCE_LENGTH = 128  # a job id in a webhook URL; longer is not one of ours

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_CURSOR = re.compile(CURSOR_PATTERN)


@dataclass(frozen=True)
class GatewayContext:
    """Everything the HTTP API needs, injected (Ray handles or plain objects)."""

    config: JoblineConfig
    ledger: LedgerPort
    router: Router
    results: ResultStore
    webhook_parsers: Mapping[str, VendorClient]  # by vendor name
    metrics: Metrics
    collect_all_metrics: Callable[[], Awaitable[list[Family]]]
    clock: Callable[[], float]
    admin_token: str | None
    is_ready: Callable[[], Awaitable[bool]]


class HttpRefusal(RequestError):
    """A refusal the HTTP layer itself decides, with its status and error code."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.args = (status, code, message, dict(headers or {}))
        self.status = status
        self.code = code
        self.headers = dict(headers or {})


# The first matching class decides; subclasses come before their bases.
_ERRORS: tuple[tuple[type[JoblineError], int, str], ...] = (
    (Unauthorized, 401, "unauthorized"),
    (UnknownModel, 422, "unknown_model"),
    (InputInvalid, 422, "input_invalid"),
    (JobNotFound, 404, "job_not_found"),
    (AccountNotFound, 404, "account_not_found"),
    (DeadLetterNotFound, 404, "dead_letter_not_found"),
    (ResultNotFound, 404, "result_not_found"),
    (ResultStoreUnavailable, 503, "result_store_unavailable"),
    (InsufficientCredits, 402, "insufficient_credits"),
    (IdempotencyConflict, 422, "idempotency_conflict"),
    (TooManyJobsInFlight, 429, "too_many_jobs_in_flight"),
    (LedgerUnavailable, 503, "ledger_unavailable"),
    (WebhookSignatureInvalid, 401, "webhook_signature_invalid"),
    (WebhookTimestampStale, 401, "webhook_timestamp_stale"),
    (WebhookRejected, 400, "webhook_malformed"),
    (IllegalTransition, 409, "illegal_transition"),
)
_RETRY_AFTER = {
    TooManyJobsInFlight: RETRY_AFTER_IN_FLIGHT,
    LedgerUnavailable: RETRY_AFTER_UNAVAILABLE,
    ResultStoreUnavailable: RETRY_AFTER_UNAVAILABLE,
}
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
_WEBHOOK_REASONS = (
    (WebhookSignatureInvalid, "signature"),
    (WebhookTimestampStale, "stale"),
    (WebhookRejected, "malformed"),
)

B = TypeVar("B", bound=BaseModel)
T = TypeVar("T")


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _refusal_for(exc: JoblineError) -> HttpRefusal | None:
    if isinstance(exc, HttpRefusal):
        return exc
    for kind, status, code in _ERRORS:
        if isinstance(exc, kind):
            headers: dict[str, str] = {}
            retry = _RETRY_AFTER.get(type(exc))
            if retry is not None:
                headers["Retry-After"] = str(retry)
            if isinstance(exc, Unauthorized):
                headers["WWW-Authenticate"] = 'Bearer realm="jobline"'
            return HttpRefusal(status, code, str(exc), headers)
    return None


async def _read_body(request: web.Request) -> bytes:
    """The request body, decoded: 413 past client_max_size, 400 if it cannot be decoded.

    An undecodable body (say, not the Content-Encoding it claims) leaves the rest of it
    in the connection, so the 400 closes the connection.
    """
    try:
        return await request.read()
    except web.RequestPayloadError as exc:
        encoding = request.headers.get("Content-Encoding", "identity")
        message = f"the body could not be read (Content-Encoding {encoding})"
        raise HttpRefusal(400, "bad_request", message, {"Connection": "close"}) from exc


def _bad_request(message: str) -> HttpRefusal:
    return HttpRefusal(400, "bad_request", message)


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or not value.isascii():
        return None
    return value


def key_hash(api_key: str) -> str:
    """What the ledger stores of an API key: its SHA-256, hex."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def request_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 of the body's canonical JSON: the same request gives the same hash."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _describe_validation(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _ledger_failure(exc: Exception) -> LedgerUnavailable:
    return LedgerUnavailable(f"{type(exc).__name__}: {exc}")


class _ProcessorCalls:
    """The coalesced calls to one vendor's processor."""

    def __init__(self, router: Router, vendor: str) -> None:
        self._router = router
        self.vendor = vendor
        self.dispatch: Coalescer[Job, None] = Coalescer(self._dispatch)
        self.webhooks: Coalescer[WebhookEvent, None] = Coalescer(self._webhooks)
        self.cancels: Coalescer[str, None] = Coalescer(self._cancel)

    async def _dispatch(self, jobs: list[Job]) -> list[None]:
        await self._router.processor(self.vendor).dispatch(jobs)
        return [None] * len(jobs)

    async def _webhooks(self, events: list[WebhookEvent]) -> list[None]:
        await self._router.processor(self.vendor).on_webhooks(events)
        return [None] * len(events)

    async def _cancel(self, job_ids: list[str]) -> list[None]:
        await self._router.processor(self.vendor).cancel_tasks(job_ids)
        return [None] * len(job_ids)


class _KeyCache:
    """API key hash -> account id, positive answers only (an account's key never changes)."""

    def __init__(self, capacity: int = KEY_CACHE_SIZE) -> None:
        self._capacity = capacity
        self._accounts: dict[str, str] = {}

    def get(self, hashed: str) -> str | None:
        return self._accounts.get(hashed)

    def put(self, hashed: str, account_id: str) -> None:
        if len(self._accounts) >= self._capacity:
            self._accounts.pop(next(iter(self._accounts)))  # the oldest entry
        self._accounts[hashed] = account_id


class Api:
    """The request handlers, bound to one GatewayContext."""

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
        self._ops: Coalescer[LedgerOp, Outcome] = Coalescer(self._execute_many)
        self._job_reads: Coalescer[str, Job | None] = Coalescer(self._get_jobs)
        self._processors: dict[str, _ProcessorCalls] = {}
        self._keys = _KeyCache()
        self._key_lookups: dict[str, asyncio.Future[str | None]] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._openapi = json.dumps(openapi_document(ctx.config), indent=1).encode()
        self.tracer = tracer_for(ctx.metrics.actor, ctx.config)
        _zero_series(ctx.metrics, list(ctx.webhook_parsers))

    def routes(self) -> list[web.RouteDef]:
        """Every route; /openapi.json documents each (a test holds the two together)."""
        return [
            web.post("/v1/accounts", self.create_account),
            web.post("/v1/accounts/{id}/credits", self.grant_credits),
            web.get("/v1/credits", self.get_credits, allow_head=False),
            web.get("/v1/credits/entries", self.get_credit_entries, allow_head=False),
            web.post("/v1/jobs", self.submit_job),
            web.get("/v1/jobs", self.list_jobs, allow_head=False),
            web.get("/v1/jobs/{id}", self.get_job, allow_head=False),
            web.get("/v1/jobs/{id}/events", self.job_events, allow_head=False),
            web.get("/v1/jobs/{id}/result", self.job_result, allow_head=False),
            web.post("/v1/jobs/{id}/cancel", self.cancel_job),
            web.post("/v1/webhooks/{vendor}", self.webhook),
            web.get("/v1/admin/dead-letters", self.list_dead_letters, allow_head=False),
            web.post("/v1/admin/dead-letters/{job_id}/redrive", self.redrive),
            web.get("/metrics", self.metrics, allow_head=False),
            web.get("/healthz", self.healthz, allow_head=False),
            web.get("/readyz", self.readyz, allow_head=False),
            web.get("/openapi.json", self.openapi, allow_head=False),
        ]

    # --- middleware ---------------------------------------------------------------------

    @web.middleware
    async def count_requests(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        stopwatch = Stopwatch()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            route = _route_label(request)
            metrics = self.ctx.metrics
            metrics.http_requests.labels(route, str(status)).inc()
            metrics.http_duration.labels(route).observe(stopwatch.elapsed())

    @web.middleware
    async def render_errors(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except JoblineError as exc:
            refusal = _refusal_for(exc)
            if refusal is None:
                return self._internal_error(request, exc)
            if refusal.status >= 500:
                log.warning("%s %s: %s", request.method, request.path, exc)
            response = error_response(refusal.status, refusal.code, str(refusal), refusal.headers)
            if refusal.headers.get("Connection") == "close":
                response.force_close()
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status, "bad_request" if exc.status < 500 else "error")
            headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
            message = exc.text if exc.status != 404 else f"no route {request.method} {request.path}"
            return error_response(exc.status, code, message or exc.reason, headers)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            return self._internal_error(request, exc)

    def _internal_error(self, request: web.Request, exc: BaseException) -> web.Response:
        log.error(
            "%s %s failed", request.method, request.path, exc_info=exc, extra={"error": repr(exc)}
        )
        return error_response(500, "internal_error", "internal error; the gateway logged it")

    # --- ledger access --------------------------------------------------------------------

    async def _execute_many(self, ops: list[LedgerOp]) -> list[Outcome]:
        try:
            return await self.ctx.ledger.execute_many(ops)
        except JoblineError:
            raise
        except Exception as exc:  # the ledger actor is gone or restarting
            raise _ledger_failure(exc) from exc

    async def _get_jobs(self, job_ids: list[str]) -> list[Job | None]:
        return await self._read(self.ctx.ledger.get_jobs(job_ids))

    async def _read(self, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, LEDGER_TIMEOUT)
        except JoblineError:
            raise
        except TimeoutError as exc:
            raise LedgerUnavailable(f"no answer within {LEDGER_TIMEOUT:.0f}s") from exc
        except Exception as exc:
            raise _ledger_failure(exc) from exc

    async def _execute(self, op: LedgerOp) -> Outcome:
        return await self._read(self._ops.call(op))

    async def _owned_job(self, job_id: str, account_id: str) -> Job:
        job = await self._read(self._job_reads.call(job_id))
        if job is None or job.account_id != account_id:
            raise JobNotFound(job_id)
        return job

    # --- processors (fire and forget) -----------------------------------------------------

    def _processor(self, vendor: str) -> _ProcessorCalls:
        calls = self._processors.get(vendor)
        if calls is None:
            calls = self._processors[vendor] = _ProcessorCalls(self.ctx.router, vendor)
        return calls

    def _in_background(self, call: Awaitable[None], what: str, job: Job | None = None) -> None:
        """Run ``call`` without making the client wait; a failure is logged, not raised."""

        async def run() -> None:
            try:
                await asyncio.wait_for(call, PROCESSOR_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                extra = {"error": repr(exc)}
                if job is not None:
                    extra |= {"job_id": job.id, "trace_id": job.trace_id, "vendor": job.vendor}
                log.warning(
                    "%s failed; the ledger keeps the job for the sweeper", what, extra=extra
                )

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _dispatch(self, job: Job) -> None:
        self._in_background(self._traced_dispatch(job), "dispatch", job)

    async def _traced_dispatch(self, job: Job) -> None:
        with self.tracer.span("dispatch", job.trace_id, job_id=job.id, vendor=job.vendor):
            await self._processor(job.vendor).dispatch.call(job)

    # --- request parts --------------------------------------------------------------------

    async def _account(self, request: web.Request) -> str:
        api_key = _bearer(request)
        if api_key is None:
            raise Unauthorized("send the API key as Authorization: Bearer <key>")
        hashed = key_hash(api_key)
        account_id = self._keys.get(hashed)
        if account_id is None:
            account_id = await self._lookup_key(hashed)
            if account_id is None:
                raise Unauthorized("unknown API key")
        return account_id

    async def _lookup_key(self, hashed: str) -> str | None:
        """One ledger read per key however many requests ask for it at once."""
        pending = self._key_lookups.get(hashed)
        if pending is None:
            pending = asyncio.ensure_future(self._read(self.ctx.ledger.account_for_key(hashed)))
            self._key_lookups[hashed] = pending
            pending.add_done_callback(lambda _: self._key_lookups.pop(hashed, None))
        account_id = await asyncio.shield(pending)
        if account_id is not None:
            self._keys.put(hashed, account_id)
        return account_id

    def _require_admin(self, request: web.Request) -> None:
        token = self.ctx.admin_token
        if not token:
            env = self.ctx.config.gateway.admin_token_env
            raise HttpRefusal(
                503, "admin_disabled", f"admin routes are off: no admin token is set ({env})"
            )
        given = _bearer(request)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("admin routes need the admin token as Authorization: Bearer")

    async def _json_body(self, request: web.Request, model: type[B]) -> tuple[B, dict[str, Any]]:
        ctype = request.content_type
        if ctype != "application/json" and not (
            ctype.startswith("application/") and ctype.endswith("+json")
        ):
            raise HttpRefusal(
                415, "unsupported_media_type", f"send application/json, not {ctype or 'nothing'}"
            )
        raw = await _read_body(request)
        if not raw:
            raise _bad_request("the request body is empty")
        try:
            data = json.loads(raw, parse_constant=_reject_constant)
            json.dumps(data, ensure_ascii=False).encode("utf-8")  # lone surrogates
        except (ValueError, RecursionError, UnicodeError) as exc:
            raise _bad_request(f"malformed JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _bad_request("the body must be a JSON object")
        try:
            return model.model_validate(data), data
        except ValidationError as exc:
            raise _bad_request(_describe_validation(exc)) from None

    def _idempotency_key(self, request: web.Request) -> str | None:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return None
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            raise _bad_request(
                "Idempotency-Key must be 1 to 255 printable ASCII characters "
                "(no leading or trailing space)"
            )
        return key

    def _model(self, name: str) -> ModelConfig:
        model = self.ctx.config.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.ctx.config.models))
            raise UnknownModel(f"unknown model {name!r} (known: {known})")
        return model

    def _validate_input(self, model: ModelConfig, value: dict[str, Any]) -> None:
        validator = self._validators.get(model.name)
        if validator is None:
            validator = jsonschema.Draft202012Validator(
                model.input_schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
            self._validators[model.name] = validator
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            path = "$.input" + error.json_path.removeprefix("$")
            reason = error.message if len(error.message) <= 300 else error.message[:300] + "…"
            raise InputInvalid(f"{path}: {reason}")

    # --- accounts and credits -------------------------------------------------------------

    async def create_account(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        body, _ = await self._json_body(request, CreateAccountBody)
        account_id = "acct_" + secrets.token_hex(12)
        api_key = "jl_" + secrets.token_urlsafe(32)
        (await self._execute(CreateAccount(account_id, key_hash(api_key), body.name))).unwrap()
        credits = 0
        if body.credits > 0:
            grant = Grant(account_id, body.credits, f"{account_id}:initial")
            credits = (await self._execute(grant)).unwrap().available
        log.info("account created", extra={"account_id": account_id})
        return web.json_response(
            {"account_id": account_id, "name": body.name, "api_key": api_key, "credits": credits},
            status=201,
        )

    async def grant_credits(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        account_id = request.match_info["id"]
        header_key = self._idempotency_key(request)
        body, _ = await self._json_body(request, GrantBody)
        grant_id = body.grant_id or header_key or secrets.token_hex(16)
        # Grant ids are unique across the ledger: scope them to the account.
        outcome = await self._execute(Grant(account_id, body.amount, f"{account_id}:{grant_id}"))
        balance = outcome.unwrap()
        return web.json_response(
            {"account_id": account_id, **balance.to_api(), "granted": outcome.changed}
        )

    async def get_credits(self, request: web.Request) -> web.Response:
        account_id = await self._account(request)
        balance = await self._read(self.ctx.ledger.balance(account_id))
        return web.json_response({"account_id": account_id, **balance.to_api()})

    async def get_credit_entries(self, request: web.Request) -> web.Response:
        account_id = await self._account(request)
        entries = await self._read(self.ctx.ledger.statement(account_id))
        return web.json_response(
            {"account_id": account_id, "entries": [entry.to_api() for entry in entries]}
        )

    # --- jobs -----------------------------------------------------------------------------

    async def submit_job(self, request: web.Request) -> web.Response:
        account_id = await self._account(request)
        idempotency_key = self._idempotency_key(request)
        body, raw = await self._json_body(request, SubmitJobBody)
        model = self._model(body.model)
        self._validate_input(model, body.input)
        config = self.ctx.config
        trace_id = new_trace_id()
        op = OpenJob(
            job_id="job_" + new_job_id().replace("-", ""),
            account_id=account_id,
            model=model.name,
            input=body.input,
            price=model.price,
            trace_id=trace_id,
            vendor=model.route[0].vendor,
            deadline=self.ctx.clock() + config.sweeper.job_deadline,
            idempotency_key=idempotency_key,
            request_hash=request_hash(raw),
            max_in_flight=config.gateway.max_jobs_in_flight_per_account,
        )
        with self.tracer.root("submit", trace_id, model=model.name) as span:
            outcome = await self._execute(op)
            job: Job = outcome.unwrap()
            span.set_attributes({"jobline.job_id": job.id, "jobline.replayed": not outcome.changed})
        headers = {"Location": f"/v1/jobs/{job.id}", TRACE_HEADER: job.trace_id}
        if outcome.changed:
            self.ctx.metrics.jobs_submitted.labels(job.model).inc()
            self.ctx.metrics.credits.labels("held").inc(job.cost)
            log.info("job opened", extra=_job_fields(job))
            self._dispatch(job)
        else:
            headers[REPLAYED_HEADER] = "true"
        return web.json_response(job.to_api(), status=202, headers=headers)

    async def get_job(self, request: web.Request) -> web.Response:
        account_id = await self._account(request)
        job = await self._owned_job(request.match_info["id"], account_id)
        return web.json_response(job.to_api(), headers={TRACE_HEADER: job.trace_id})

    async def list_jobs(self, request: web.Request) -> web.Response:
        account_id = await self._account(request)
        query = request.query
        status: JobStatus | None = None
        if "status" in query:
            try:
                status = JobStatus(query["status"])
            except ValueError:
                known = ", ".join(s.value for s in JobStatus)
                raise _bad_request(f"status must be one of {known}") from None
        limit = _int_param(query, "limit", DEFAULT_PAGE, MAX_PAGE)
        cursor = query.get("cursor")
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            raise _bad_request("cursor must be the next_cursor of an earlier page")
        page = await self._read(self.ctx.ledger.list_jobs(account_id, status, limit, cursor))
        return web.json_response(
            {"jobs": [job.to_api() for job in page.items], "next_cursor": page.next_cursor}
        )

    async def job_result(self, request: web.Request) -> web.StreamResponse:
        account_id = await self._account(request)
        job = await self._owned_job(request.match_info["id"], account_id)
        if job.status is not JobStatus.COMPLETED or job.result_key is None:
            raise HttpRefusal(
                409, "job_not_completed", f"job {job.id} is {job.status.value}, not completed"
            )
        try:
            return await result_response(
                request,
                self.ctx.results,
                job.result_key,
                redirect=self.ctx.config.storage.serve_by_redirect,
                headers={TRACE_HEADER: job.trace_id},
            )
        except ResultNotFound:
            log.error("result missing from the store", extra=_job_fields(job))
            raise

    async def cancel_job(self, request: web.Request) -> web.Response:
        account_id = await self._account(request)
        job_id = request.match_info["id"]
        outcome = await self._execute(Cancel(job_id, account_id))
        job: Job = outcome.unwrap()
        if outcome.changed:
            self.ctx.metrics.jobs.labels(job.model, job.vendor, job.status.value).inc()
            self.ctx.metrics.credits.labels("released").inc(job.cost)
            log.info("job canceled", extra=_job_fields(job))
            # Queued or processing: the processor drops it or cancels the vendor task.
            cancel = self._processor(job.vendor).cancels.call(job.id)
            self._in_background(cancel, "cancel_tasks", job)
        elif job.status is not JobStatus.CANCELED:
            raise HttpRefusal(409, "job_finished", f"job {job.id} is already {job.status.value}")
        return web.json_response(job.to_api(), headers={TRACE_HEADER: job.trace_id})

    # --- server-sent events ---------------------------------------------------------------

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        account_id = await self._account(request)
        job = await self._owned_job(request.match_info["id"], account_id)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                TRACE_HEADER: job.trace_id,
            }
        )
        await response.prepare(request)
        try:
            await self._stream_events(request, response, job, _last_event_id(request))
        except ConnectionError:
            pass  # the client went away
        except LedgerUnavailable as exc:
            log.warning("event stream ended: %s", exc, extra=_job_fields(job))
        return response

    async def _stream_events(
        self, request: web.Request, response: web.StreamResponse, job: Job, after_seq: int
    ) -> None:
        """Write every history entry after ``after_seq``; return after the terminal one.

        The job row is polled through the coalesced reader (shared by every stream on
        this gateway); the history is read only when the row changed.
        """
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + self.sse_heartbeat_interval
        seen: tuple[Any, ...] | None = None
        while True:
            if _change_marker(job) != seen:
                seen = _change_marker(job)
                entries = await self._read(self.ctx.ledger.history(job.id, after_seq))
                for entry in entries:
                    if entry.status.terminal:
                        latest = await self._read(self._job_reads.call(job.id))
                        await _send_event(response, entry, latest or job)
                        return
                    await _send_event(response, entry, None)
                    after_seq = entry.seq
                if job.terminal:  # resumed after the terminal event: nothing more to come
                    return
            if self._closing.is_set() or _gone(request):
                return
            if self.ctx.clock() > job.deadline + SSE_GRACE_AFTER_DEADLINE:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.sse_poll_interval)
            if loop.time() >= next_heartbeat:
                await response.write(b": heartbeat\n\n")
                next_heartbeat = loop.time() + self.sse_heartbeat_interval
            latest = await self._read(self._job_reads.call(job.id))
            if latest is None:
                return
            job = latest

    # --- webhooks -------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        vendor = request.match_info["vendor"]
        parser = self.ctx.webhook_parsers.get(vendor)
        if parser is None:
            raise HttpRefusal(404, "unknown_vendor", f"no vendor named {vendor!r}")
        body = await _read_body(request)
        headers = {name.lower(): value for name, value in request.headers.items()}
        metrics = self.ctx.metrics
        try:
            event = parser.parse_webhook(
                headers, body, self.ctx.clock(), self.ctx.config.gateway.webhook_tolerance
            )
        except WebhookRejected as exc:
            reason = next(r for kind, r in _WEBHOOK_REASONS if isinstance(exc, kind))
            metrics.webhook_rejections.labels(vendor, reason).inc()
            metrics.webhooks.labels(vendor, "rejected").inc()
            log.warning("webhook rejected (%s): %s", reason, exc, extra={"vendor": vendor})
            raise
        event = _with_reference(event, request.query)
        outcome = await self._execute(RecordWebhook(vendor, event.webhook_id))
        if not outcome.unwrap():
            metrics.webhooks.labels(vendor, "duplicate").inc()
            return web.json_response({"status": "duplicate"})
        metrics.webhooks.labels(vendor, "accepted").inc()
        # Vendors give a webhook a few seconds (then count it failed, and may retry: a
        # duplicate now); a processor that is restarting can take longer. So the answer
        # waits for the forward only that long, and the forward goes on without it.
        forward = asyncio.get_running_loop().create_task(self._forward_webhook(vendor, event))
        self._background.add(forward)
        forward.add_done_callback(self._background.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(forward), WEBHOOK_ANSWER_WITHIN)
        return web.json_response({"status": "accepted"})

    async def _forward_webhook(self, vendor: str, event: WebhookEvent) -> None:
        try:
            await asyncio.wait_for(self._processor(vendor).webhooks.call(event), PROCESSOR_TIMEOUT)
        except Exception as exc:  # recorded already: polling finds the task's end instead
            log.warning(
                "webhook not forwarded; polling will catch up",
                extra={"vendor": vendor, "task_id": event.task_id, "error": repr(exc)},
            )

    # --- admin: dead letters --------------------------------------------------------------

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        limit = _int_param(request.query, "limit", DEFAULT_DEAD_LETTERS, MAX_DEAD_LETTERS)
        include = _bool_param(request.query, "include_redriven")
        letters = await self._read(self.ctx.ledger.dead_letters(limit, include))
        return web.json_response({"dead_letters": [letter.to_api() for letter in letters]})

    async def redrive(self, request: web.Request) -> web.Response:
        self._require_admin(request)
        dead_job_id = request.match_info["job_id"]
        dead = (await self._get_jobs([dead_job_id]))[0]
        if dead is None:
            raise DeadLetterNotFound(dead_job_id)
        model = self.ctx.config.models.get(dead.model)
        trace_id = new_trace_id()
        op = Redrive(
            job_id=dead_job_id,
            new_job_id="job_" + new_job_id().replace("-", ""),
            trace_id=trace_id,
            deadline=self.ctx.clock() + self.ctx.config.sweeper.job_deadline,
            vendor=model.route[0].vendor if model else None,  # the route starts over
        )
        with self.tracer.root("redrive", trace_id, dead_job_id=dead_job_id) as span:
            outcome = await self._execute(op)
            job: Job = outcome.unwrap()
            span.set_attributes({"jobline.job_id": job.id, "jobline.replayed": not outcome.changed})
        headers = {"Location": f"/v1/jobs/{job.id}", TRACE_HEADER: job.trace_id}
        if outcome.changed:
            self.ctx.metrics.credits.labels("held").inc(job.cost)
            log.info("dead letter re-driven", extra={**_job_fields(job), "error": dead_job_id})
            self._dispatch(job)
        else:
            headers[REPLAYED_HEADER] = "true"
        return web.json_response(job.to_api(), status=202, headers=headers)

    # --- operations -----------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        own = self.ctx.metrics.collect()
        try:
            others = await self.ctx.collect_all_metrics()
        except Exception as exc:
            log.warning("collecting the other actors' metrics failed: %r", exc)
            others = []
        body = render([*_without_actor(others, self.ctx.metrics.actor), *own])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            ready = await asyncio.wait_for(self.ctx.is_ready(), READY_TIMEOUT)
        except Exception:
            ready = False
        if not ready:
            return error_response(503, "not_ready", "the gateway cannot serve yet")
        return web.json_response({"status": "ready"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    # --- lifecycle ------------------------------------------------------------------------

    async def on_shutdown(self, app: web.Application) -> None:
        self._closing.set()  # event streams end, so shutdown does not wait for them

    async def on_cleanup(self, app: web.Application) -> None:
        if self._background:
            _, pending = await asyncio.wait(list(self._background), timeout=2.0)
            for task in pending:  # the jobs are in the ledger; the sweeper has them
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


GATEWAY_API: web.AppKey[Api] = web.AppKey("jobline_api", Api)


def build_app(
    ctx: GatewayContext,
    *,
    sse_poll_interval: float = SSE_POLL_INTERVAL,
    sse_heartbeat_interval: float = SSE_HEARTBEAT_INTERVAL,
) -> web.Application:
    """The gateway's aiohttp application (DESIGN §5)."""
    api = Api(
        ctx, sse_poll_interval=sse_poll_interval, sse_heartbeat_interval=sse_heartbeat_interval
    )
    app = web.Application(
        middlewares=[api.count_requests, api.render_errors],
        client_max_size=ctx.config.gateway.max_body_bytes,
    )
    app.add_routes(api.routes())
    app.on_shutdown.append(api.on_shutdown)
    app.on_cleanup.append(api.on_cleanup)
    app[GATEWAY_API] = api
    return app


# --- small pieces -----------------------------------------------------------------------


def _job_fields(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "trace_id": job.trace_id,
        "vendor": job.vendor,
        "account_id": job.account_id,
    }


def _with_reference(event: WebhookEvent, query: Mapping[str, str]) -> WebhookEvent:
    """The event with the job and attempt its URL names; a malformed hint is dropped."""
    job_id = query.get(JOB_PARAM)
    attempt = query.get(ATTEMPT_PARAM, "")
    if not (0 < len(job_id or "") <= MAX_REFERENCE_LENGTH) or not (
        attempt.isascii() and attempt.isdigit() and len(attempt) <= 6
    ):
        return event
    return replace(event, job_id=job_id, attempt=int(attempt))


def _int_param(query: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    digits = raw.lstrip("0") or "0"
    # int() refuses more than 4300 digits (ValueError): parse only what can be in range.
    if (
        not raw.isascii()
        or not raw.isdigit()
        or len(digits) > len(str(maximum))
        or not 1 <= int(digits) <= maximum
    ):
        raise _bad_request(f"{name} must be an integer from 1 to {maximum}")
    return int(digits)


def _bool_param(query: Mapping[str, str], name: str) -> bool:
    raw = query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise _bad_request(f"{name} must be true or false")
    return raw in ("true", "1")


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID", "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else 0


def _change_marker(job: Job) -> tuple[Any, ...]:
    """Differs whenever the job's row changed (and so maybe its history)."""
    return (job.updated_at, job.status, job.attempts, job.vendor_task_id)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _send_event(
    response: web.StreamResponse, entry: JobHistoryEntry, terminal_job: Job | None
) -> None:
    data: dict[str, Any] = {
        "job_id": entry.job_id,
        "seq": entry.seq,
        "status": entry.status.value,
        "at": entry.at,
        "detail": entry.detail,
    }
    if terminal_job is not None:
        data["job"] = terminal_job.to_api()
    payload = json.dumps(data, separators=(",", ":"))
    await response.write(f"id: {entry.seq}\nevent: status\ndata: {payload}\n\n".encode())


def _zero_series(metrics: Metrics, vendors: list[str]) -> None:
    """Export the gateway's counters at 0 before their first event, so rate() sees it."""
    for kind in ("held", "released"):
        metrics.credits.labels(kind)
    for vendor in vendors:
        for _, reason in _WEBHOOK_REASONS:
            metrics.webhook_rejections.labels(vendor, reason)


def _without_actor(families: Iterable[Family], actor: str) -> list[Family]:
    """``families`` minus the samples of ``actor`` (this gateway adds its own, fresher)."""
    kept = []
    for family in families:
        samples = tuple(s for s in family.samples if dict(s.labels).get("actor") != actor)
        if samples:
            kept.append(
                Family(family.name, family.kind, family.help, samples)
                if len(samples) != len(family.samples)
                else family
            )
    return kept
