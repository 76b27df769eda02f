"""Vendor clients: the ``VendorClient`` protocol and one HTTP adapter per vendor API shape.

    make_client(vendor_config, api_key, webhook_secret) -> ReplicateClient | FalClient

A client submits a task, reads its status, cancels it, downloads its output and parses
the vendor's webhooks. Each client owns one ``aiohttp.ClientSession`` (one connection
pool), created lazily inside the running event loop; ``close()`` releases it. Every
request carries ``X-Jobline-Trace-Id`` (and a submit ``X-Jobline-Job-Id`` and
``X-Jobline-Attempt``), so one job can be followed through the vendor's logs.

Errors
------
Every request goes through ``_HttpClient._call``, and every lower-layer error is
translated in one place, :func:`_vendor_errors` (as httpx's ``map_httpcore_exceptions``):

    asyncio / aiohttp timeout                       -> VendorTimeout
    connection refused, reset, server disconnected,
    truncated body, other aiohttp.ClientError       -> VendorUnavailable
    HTTP 429                                        -> VendorRateLimited(retry_after=Retry-After)
    HTTP 5xx, 425                                   -> VendorUnavailable(retry_after=Retry-After)
    HTTP 408                                        -> VendorTimeout
    HTTP 401, 403                                   -> VendorAuthError
    any other 4xx on submit (400, 404, 422, ...)    -> VendorInputRejected
    404 / 410 on an output download                 -> VendorTaskFailed (output gone: rerun)
    any other 4xx                                   -> VendorPermanentError
    a 2xx body that is not the shape's JSON         -> VendorUnavailable
    a body over its size cap                        -> VendorPermanentError

A status read of a task the vendor does not know (404) is not an error: it returns
``FAILED`` (transient), so the job is submitted again. Canceling a task that already
ended, or that the vendor does not know, is not an error either.

Task failures
-------------
A task the vendor ran and that failed is not an exception: ``status()`` returns
``TaskStatus(FAILED, error=<the vendor's message>, permanent=...)``. It is
**permanent** (fail the job, refund; no retry, no failover) only when the vendor says
the input or the content was rejected, because the same input fails the same way
everywhere:

- replicate: the error carries Replicate's content-rejection code ``E005`` ("… flagged
  as sensitive … (E005)"); every other failure (``… please retry (code: PA)``, out of
  memory, …) is transient. A prediction ``aborted`` by the vendor is a transient failure.
- fal: the result (or webhook) answered HTTP 422 (fal's status for model errors:
  validation, content policy), or the error type is ``content_policy_violation``; fal's
  request errors (``internal_server_error``, ``request_timeout``,
  ``runner_disconnected``, …) are transient. ``request_canceled`` is ``CANCELED``.
  A result answering 5xx without an error type is a failed read (``VendorUnavailable``:
  poll again), not a failed task.

``vendors_fake`` fails tasks this way: ``REJECTED_ERROR`` (``…(E005)`` /
``content_policy_violation`` / 422) and ``TRANSIENT_ERROR`` (``internal_server_error`` /
500).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from runtime.config import VendorConfig
from runtime.errors import (
    ConfigError,
    VendorAuthError,
    VendorError,
    VendorInputRejected,
    VendorPermanentError,
    VendorRateLimited,
    VendorTaskFailed,
    VendorTimeout,
    VendorUnavailable,
    WebhookRejected,
)
from runtime.policies import ErrorClass, classify_http_status
from runtime.webhooks import ID_HEADER, secret_key, verify

TRACE_HEADER = "X-Jobline-Trace-Id"
JOB_ID_HEADER = "X-Jobline-Job-Id"
ATTEMPT_HEADER = "X-Jobline-Attempt"
CANCEL_AFTER_HEADER = "Cancel-After"  # replicate: the prediction's own deadline
USER_AGENT = "jobline/0.1"

MAX_OUTPUT_BYTES = 50 * 1024 * 1024  # a larger output fails the job (VendorPermanentError)
MAX_API_BYTES = 4 * 1024 * 1024  # an API answer larger than this is not one we understand
FETCH_TOTAL_TIMEOUT = 120.0  # a download may take this long while bytes keep coming

Op = Literal["submit", "status", "cancel", "fetch"]
T = TypeVar("T")


# --- values ---------------------------------------------------------------------------


class TaskState(enum.StrEnum):
    PENDING = "pending"  # queued at the vendor (replicate "starting", fal IN_QUEUE)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED})


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A vendor task as the vendor reports it."""

    state: TaskState
    output_url: str | None = None  # when SUCCEEDED
    error: str | None = None  # the vendor's message, when FAILED
    permanent: bool = False  # FAILED because the input/content was rejected: do not retry
    queue_position: int | None = None  # when PENDING, if the vendor says


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified vendor callback: which task, and its status at the event."""

    vendor: str
    webhook_id: str  # the Standard Webhooks ``webhook-id``: deduplicate on (vendor, it)
    task_id: str
    status: TaskStatus
    # The job and attempt the processor put in the webhook URL (not signed: a hint that
    # finds a task whose id was never recorded, see VendorProcessor.on_webhooks).
    job_id: str | None = None
    attempt: int | None = None


class VendorClient(Protocol):
    @property
    def name(self) -> str:
        """The vendor's name in jobline.toml."""
        ...

    async def submit(
        self,
        model: str,
        input: dict[str, Any],
        *,
        job_id: str,
        attempt: int,
        trace_id: str,
        webhook_url: str | None,
    ) -> str:
        """Start a task; returns the vendor's task id."""
        ...

    async def status(self, model: str, task_id: str, *, trace_id: str) -> TaskStatus: ...

    async def cancel(self, model: str, task_id: str, *, trace_id: str | None = None) -> None:
        """Cancel a task; one that already ended is not an error."""

    async def fetch_output(self, url: str, *, trace_id: str | None = None) -> bytes: ...

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float, tolerance: float
    ) -> WebhookEvent:
        """Verify (Standard Webhooks) and parse a callback; raises ``WebhookRejected``."""
        ...

    async def close(self) -> None: ...


def make_client(
    vendor_config: VendorConfig,
    api_key: str,
    webhook_secret: str,
    *,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> VendorClient:
    """The adapter for the vendor's API shape."""
    if vendor_config.api == "replicate":
        return ReplicateClient(
            vendor_config, api_key, webhook_secret, max_output_bytes=max_output_bytes
        )
    return FalClient(vendor_config, api_key, webhook_secret, max_output_bytes=max_output_bytes)


# --- the one place where lower-layer errors are translated ------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise _Malformed(f"HTTP {self.status} body is not JSON: {self.body[:200]!r}") from None

    def detail(self) -> str:
        """A short message from an error body (problem JSON, fal's detail, or text)."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return self.body[:200].decode("utf-8", "replace").strip()
        if isinstance(data, dict):
            for field in ("detail", "error", "title", "message"):
                if data.get(field):
                    return _message(data[field])
        return _message(data)


class _ErrorStatus(Exception):
    """An HTTP answer >= 400 the call did not accept; translated by _vendor_errors."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class _Malformed(Exception):
    """A 2xx answer that is not the JSON the shape promises."""


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


@contextlib.contextmanager
def _vendor_errors(
    vendor: str, op: Op, timeout: float, clock: Callable[[], float]
) -> Iterator[None]:
    """Translate everything a request can raise into jobline's ``VendorError`` tree."""
    try:
        yield
    except VendorError:
        raise
    except _ErrorStatus as exc:
        raise _status_error(vendor, op, exc.reply, clock()) from None
    except _Malformed as exc:
        raise VendorUnavailable(vendor, f"{op}: unexpected answer: {exc}") from None
    except _TooLarge as exc:
        raise VendorPermanentError(vendor, f"{op}: answer larger than {exc.limit} bytes") from None
    except TimeoutError as exc:  # asyncio.TimeoutError and aiohttp.ServerTimeoutError
        raise VendorTimeout(vendor, f"{op}: no answer within {timeout:g}s") from exc
    except aiohttp.InvalidURL as exc:
        raise VendorPermanentError(vendor, f"{op}: invalid URL {exc}") from exc
    except (aiohttp.ClientError, ConnectionError) as exc:  # refused, reset, disconnected
        raise VendorUnavailable(vendor, f"{op}: {_describe(exc)}") from exc


def _status_error(vendor: str, op: Op, reply: _Reply, now: float) -> VendorError:
    status = reply.status
    message = f"{op}: HTTP {status}: {reply.detail()}"
    retry_after = _retry_after(reply.headers.get("Retry-After"), now)
    if status in (401, 403):
        return VendorAuthError(vendor, message)
    if status == 429:
        return VendorRateLimited(vendor, message, retry_after)
    if status == 408:
        return VendorTimeout(vendor, message, retry_after)
    if status >= 500 or classify_http_status(status) is ErrorClass.TRANSIENT:
        return VendorUnavailable(vendor, message, retry_after)
    if op == "submit":
        return VendorInputRejected(vendor, message)
    if op == "fetch" and status in (404, 410):
        return VendorTaskFailed(vendor, f"output is gone: {message}")
    return VendorPermanentError(vendor, message)


def _retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _message(value: Any) -> str:
    """A vendor's error value as one line: a string, or fal's list of typed errors."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "; ".join(_message(item) for item in value)
    if isinstance(value, dict) and "msg" in value:
        return str(value["msg"])
    return json.dumps(value)[:500]


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise _TooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _TooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# --- what both shapes share -------------------------------------------------------------


class _HttpClient:
    """A shape's adapter minus the shape: session, requests, downloads, webhooks."""

    auth_scheme = "Bearer"

    def __init__(
        self,
        config: VendorConfig,
        api_key: str,
        webhook_secret: str,
        *,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._name = config.name or config.api
        try:
            secret_key(webhook_secret)
        except ValueError as exc:
            raise ConfigError("environment", config.webhook_secret_env, str(exc)) from None
        self._api_key = api_key
        self._webhook_secret = webhook_secret
        self._max_output_bytes = max_output_bytes
        self._clock = clock  # only for Retry-After given as an HTTP date
        self._base = URL(config.base_url)
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, {self.config.base_url!r})"

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None and not http.closed and self._loop is asyncio.get_running_loop():
            await http.close()

    async def fetch_output(self, url: str, *, trace_id: str | None = None) -> bytes:
        target = URL(url)
        # Send the API key only back to the API's own origin, never to a CDN.
        same_origin = target.origin() == self._base.origin() if target.is_absolute() else False
        reply = await self._call(
            "fetch",
            "GET",
            target,
            lambda reply: reply,
            trace_id=trace_id,
            auth=same_origin,
            limit=self._max_output_bytes,
        )
        return reply.body

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float, tolerance: float
    ) -> WebhookEvent:
        verify(self._webhook_secret, headers, body, now, tolerance)
        webhook_id = next(value for key, value in headers.items() if key.lower() == ID_HEADER)
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise _Malformed("the body is not a JSON object")
            task_id, status = self._webhook_status(data)
        except (ValueError, _Malformed) as exc:
            raise WebhookRejected(f"{self._name}: unreadable webhook body: {exc}") from None
        return WebhookEvent(self._name, webhook_id, task_id, status)

    def _webhook_status(self, data: dict[str, Any]) -> tuple[str, TaskStatus]:
        raise NotImplementedError

    # --- requests ---------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.closed or self._loop is not loop:
            # Status polls, submits and downloads of every in-flight task share the pool.
            connector = aiohttp.TCPConnector(limit=max(100, 3 * self.config.concurrency))
            self._http = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT}
            )
            self._loop = loop
        return self._http

    async def _call(
        self,
        op: Op,
        method: str,
        url: URL,
        read: Callable[[_Reply], T],
        *,
        trace_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        accept: frozenset[int] = frozenset(),
        auth: bool = True,
        limit: int = MAX_API_BYTES,
    ) -> T:
        """One request, its answer read by ``read``; every error is a ``VendorError``.

        A status >= 400 raises unless it is in ``accept`` (then ``read`` sees it).
        """
        if op == "fetch":
            seconds = self.config.poll_timeout
            timeout = aiohttp.ClientTimeout(
                total=FETCH_TOTAL_TIMEOUT, sock_connect=seconds, sock_read=seconds
            )
        else:
            seconds = self.config.submit_timeout if op == "submit" else self.config.poll_timeout
            timeout = aiohttp.ClientTimeout(total=seconds)
        sent = dict(headers or {})
        if trace_id:
            sent[TRACE_HEADER] = trace_id
        if auth:
            sent["Authorization"] = f"{self.auth_scheme} {self._api_key}"
        with _vendor_errors(self._name, op, seconds, self._clock):
            async with self._session().request(
                method,
                url,
                json=json_body,
                headers=sent,
                timeout=timeout,
                allow_redirects=op == "fetch",
            ) as response:
                body = await _read_body(response, limit)
                reply = _Reply(response.status, response.headers, body)
            if reply.status >= 400 and reply.status not in accept:
                raise _ErrorStatus(reply)
            return read(reply)

    def _url(self, path: str) -> URL:
        return URL(f"{self.config.base_url}{path}", encoded=True)


_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CANCEL_NOOP = frozenset({400, 404, 409, 410, 422})  # already ended, or unknown


def _segments(vendor: str, model: str, low: int, high: int) -> list[str]:
    parts = model.split("/")
    if not low <= len(parts) <= high or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise VendorInputRejected(vendor, f"not a valid model name for this vendor: {model!r}")
    return parts


def _task_path(vendor: str, task_id: str) -> str:
    if not task_id or "/" in task_id or task_id in (".", ".."):
        raise VendorInputRejected(vendor, f"not a valid task id: {task_id!r}")
    return quote(task_id, safe="")


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _Malformed(f"expected a JSON object, got {type(data).__name__}")
    return data


def _string(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _Malformed(f"no {key!r} in {json.dumps(data)[:200]}")
    return value


def _first_url(value: Any) -> str | None:
    """The first URL in an output: a string, a list of them, or ``{url}`` objects."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        return next((url for item in value if (url := _first_url(item))), None)
    if isinstance(value, dict):
        return _first_url(value.get("url"))
    return None


def _not_found(task_id: str) -> TaskStatus:
    return TaskStatus(TaskState.FAILED, error=f"the vendor has no task {task_id}")


# --- replicate --------------------------------------------------------------------------

REPLICATE_PERMANENT = re.compile(r"\bE005\b")  # "flagged as sensitive": content rejected


class ReplicateClient(_HttpClient):
    """The replicate-shaped API: predictions, ``Authorization: Bearer``.

    A model is ``owner/name`` (``POST /v1/models/owner/name/predictions``),
    ``owner/name:version`` or a bare version id (``POST /v1/predictions`` with
    ``version``). Every prediction carries ``Cancel-After`` (the vendor's
    ``max_task_time``): replicate cancels it past that, whoever else forgot it.
    """

    auth_scheme = "Bearer"

    async def submit(
        self,
        model: str,
        input: dict[str, Any],
        *,
        job_id: str,
        attempt: int,
        trace_id: str,
        webhook_url: str | None,
    ) -> str:
        body: dict[str, Any] = {"input": input}
        name, colon, version = model.partition(":")
        if colon:
            _segments(self._name, name, 2, 2)
            _segments(self._name, version, 1, 1)
            path, body["version"] = "/v1/predictions", model
        elif "/" in model:
            owner, model_name = _segments(self._name, model, 2, 2)
            path = f"/v1/models/{owner}/{model_name}/predictions"
        else:
            _segments(self._name, model, 1, 1)
            path, body["version"] = "/v1/predictions", model
        if webhook_url is not None:
            body["webhook"] = webhook_url
            body["webhook_events_filter"] = ["completed"]
        headers = {
            JOB_ID_HEADER: job_id,
            ATTEMPT_HEADER: str(attempt),
            # The vendor cancels the prediction itself past this, so even a task jobline
            # lost track of ends (and frees its slot) by then.
            CANCEL_AFTER_HEADER: f"{self.config.task_lifetime}s",
        }
        return await self._call(
            "submit",
            "POST",
            self._url(path),
            lambda reply: _string(_object(reply.json()), "id"),
            trace_id=trace_id,
            headers=headers,
            json_body=body,
        )

    async def status(self, model: str, task_id: str, *, trace_id: str) -> TaskStatus:
        path = f"/v1/predictions/{_task_path(self._name, task_id)}"

        def read(reply: _Reply) -> TaskStatus:
            if reply.status == 404:
                return _not_found(task_id)
            return _prediction_status(_object(reply.json()))

        return await self._call(
            "status", "GET", self._url(path), read, trace_id=trace_id, accept=frozenset({404})
        )

    async def cancel(self, model: str, task_id: str, *, trace_id: str | None = None) -> None:
        path = f"/v1/predictions/{_task_path(self._name, task_id)}/cancel"
        await self._call(
            "cancel", "POST", self._url(path), _ignore, trace_id=trace_id, accept=_CANCEL_NOOP
        )

    def _webhook_status(self, data: dict[str, Any]) -> tuple[str, TaskStatus]:
        return _string(data, "id"), _prediction_status(data)


def _prediction_status(prediction: dict[str, Any]) -> TaskStatus:
    status = prediction.get("status")
    if status == "starting":
        return TaskStatus(TaskState.PENDING)
    if status == "processing":
        return TaskStatus(TaskState.RUNNING)
    if status == "succeeded":
        return TaskStatus(TaskState.SUCCEEDED, output_url=_first_url(prediction.get("output")))
    if status == "canceled":
        return TaskStatus(TaskState.CANCELED)
    if status in ("failed", "aborted"):
        error = prediction.get("error")
        message = _message(error) if error else f"prediction {status}"
        permanent = bool(REPLICATE_PERMANENT.search(message))
        return TaskStatus(TaskState.FAILED, error=message, permanent=permanent)
    raise _Malformed(f"unknown prediction status {status!r}")


def _ignore(reply: _Reply) -> None:
    return None


# --- fal --------------------------------------------------------------------------------

FAL_PERMANENT_TYPES = frozenset({"content_policy_violation"})
FAL_CANCELED_TYPE = "request_canceled"
_FAL_STATUS_CODE = re.compile(r"status code:?\s*(\d{3})", re.IGNORECASE)
# Result answers that may describe the task rather than the read (see FalClient.status).
_FAL_RESULT_FAILURES = frozenset(range(400, 600)) - {401, 403, 408, 425, 429}


class FalClient(_HttpClient):
    """The fal-shaped queue API: ``POST /{model_id}``, ``Authorization: Key``.

    Status, result and cancel URLs name the app: the model id's first two segments
    (``fal-ai/flux/dev`` -> ``/fal-ai/flux/requests/{id}``), as fal's own client does.
    """

    auth_scheme = "Key"

    async def submit(
        self,
        model: str,
        input: dict[str, Any],
        *,
        job_id: str,
        attempt: int,
        trace_id: str,
        webhook_url: str | None,
    ) -> str:
        _segments(self._name, model, 2, 8)
        url = self._url(f"/{model}")
        if webhook_url is not None:
            url = url.with_query(fal_webhook=webhook_url)
        headers = {JOB_ID_HEADER: job_id, ATTEMPT_HEADER: str(attempt)}
        return await self._call(
            "submit",
            "POST",
            url,
            lambda reply: _string(_object(reply.json()), "request_id"),
            trace_id=trace_id,
            headers=headers,
            json_body=input,
        )

    async def status(self, model: str, task_id: str, *, trace_id: str) -> TaskStatus:
        base = self._request_path(model, task_id)

        def read_status(reply: _Reply) -> TaskStatus | None:
            if reply.status == 404:
                return _not_found(task_id)
            return _fal_queue_status(_object(reply.json()))

        status = await self._call(
            "status",
            "GET",
            self._url(f"{base}/status"),
            read_status,
            trace_id=trace_id,
            accept=frozenset({404}),
        )
        if status is not None:
            return status

        def read_result(reply: _Reply) -> TaskStatus:
            if reply.status == 404:
                return _not_found(task_id)
            if reply.status >= 400:
                data = _json_or_none(reply.body)
                detail = data.get("detail") if isinstance(data, dict) else None
                error_type = (data.get("error_type") if isinstance(data, dict) else None) or (
                    reply.headers.get("X-Fal-Error-Type")
                )
                if reply.status >= 500 and not error_type:
                    raise _ErrorStatus(reply)  # the read failed, not (we know) the task
                return _fal_failure(reply.status, error_type, detail or reply.detail())
            return _fal_success(_object(reply.json()))

        # COMPLETED without an error: the result says where the output is.
        return await self._call(
            "status",
            "GET",
            self._url(base),
            read_result,
            trace_id=trace_id,
            accept=_FAL_RESULT_FAILURES,
        )

    async def cancel(self, model: str, task_id: str, *, trace_id: str | None = None) -> None:
        url = self._url(f"{self._request_path(model, task_id)}/cancel")
        await self._call("cancel", "PUT", url, _ignore, trace_id=trace_id, accept=_CANCEL_NOOP)

    def _request_path(self, model: str, task_id: str) -> str:
        app = "/".join(_segments(self._name, model, 2, 8)[:2])
        return f"/{app}/requests/{_task_path(self._name, task_id)}"

    def _webhook_status(self, data: dict[str, Any]) -> tuple[str, TaskStatus]:
        task_id = _string(data, "request_id")
        payload = data.get("payload")
        outcome = data.get("status")
        if outcome == "OK":
            return task_id, _fal_success(payload if isinstance(payload, dict) else {})
        if outcome != "ERROR":
            raise _Malformed(f"unknown webhook status {outcome!r}")
        error = data.get("error")
        code_match = _FAL_STATUS_CODE.search(error) if isinstance(error, str) else None
        code = int(code_match.group(1)) if code_match else None
        detail = payload.get("detail") if isinstance(payload, dict) else None
        error_type = payload.get("error_type") if isinstance(payload, dict) else None
        return task_id, _fal_failure(code, error_type, detail or error or "request failed")


def _fal_queue_status(body: dict[str, Any]) -> TaskStatus | None:
    """The status endpoint's answer; None for COMPLETED without an error (read the result)."""
    status = body.get("status")
    if status == "IN_QUEUE":
        position = body.get("queue_position")
        return TaskStatus(
            TaskState.PENDING, queue_position=position if isinstance(position, int) else None
        )
    if status == "IN_PROGRESS":
        return TaskStatus(TaskState.RUNNING)
    if status == "COMPLETED":
        error_type, error = body.get("error_type"), body.get("error")
        if error_type or error:
            return _fal_failure(None, error_type, error or error_type)
        return None
    raise _Malformed(f"unknown request status {status!r}")


def _fal_success(result: dict[str, Any]) -> TaskStatus:
    for key in ("images", "image", "video", "audio", "file", "output"):
        url = _first_url(result.get(key))
        if url:
            return TaskStatus(TaskState.SUCCEEDED, output_url=url)
    return TaskStatus(TaskState.SUCCEEDED)


def _fal_failure(code: int | None, error_type: Any, detail: Any) -> TaskStatus:
    """A fal request that ended badly (see the module docstring for the rule)."""
    types = {error_type} if isinstance(error_type, str) else set()
    if isinstance(detail, list):
        types |= {item["type"] for item in detail if isinstance(item, dict) and "type" in item}
    message = _message(detail)
    if FAL_CANCELED_TYPE in types or (code == 400 and "cancel" in message.lower()):
        return TaskStatus(TaskState.CANCELED)
    permanent = code == 422 or bool(types & FAL_PERMANENT_TYPES)
    return TaskStatus(TaskState.FAILED, error=message, permanent=permanent)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
