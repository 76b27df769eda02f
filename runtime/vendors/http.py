"""What both HTTP adapters share: the session, requests, downloads, and the one place
where lower-layer errors become jobline's ``VendorError`` tree.

Every request goes through :meth:`HttpClient.call`; everything it can raise is
translated by :func:`vendor_errors` (as httpx's ``map_httpcore_exceptions``)::

    asyncio / aiohttp timeout                       -> VendorTimeout
    connection refused, reset, server disconnected,
    truncated body, other aiohttp.ClientError       -> VendorUnavailable
    HTTP 429                                        -> VendorRateLimited(retry_after)
    HTTP 5xx, 425                                   -> VendorUnavailable(retry_after)
    on a submit: a timeout, a 5xx other than 503
    with Retry-After, a reset, disconnect or cut-off
    answer, a 2xx that is not the shape's JSON      -> VendorSubmitInDoubt
    HTTP 408                                        -> VendorTimeout
    HTTP 401                                        -> VendorAuthError        (vendor-wide)
    HTTP 402                                        -> VendorBillingError     (vendor-wide)
    HTTP 403 saying locked / balance / billing      -> VendorBillingError     (vendor-wide)
    other HTTP 403                                  -> VendorAuthError        (vendor-wide)
    HTTP 404, 410 on submit                         -> VendorModelGone        (vendor-wide)
    any other 4xx on submit (400, 422, ...)         -> VendorInputRejected    (the job's)
    404 / 410 on an output download                 -> VendorTaskFailed (the file is gone)
    any other 4xx                                   -> VendorPermanentError
    a 2xx body that is not the shape's JSON         -> VendorUnavailable
    a body over its size cap                        -> VendorOutputTooLarge (permanent)

``Retry-After`` of any form (seconds, an HTTP date, garbage, ``inf``, ``nan``, negative,
huge) becomes a number of seconds in ``[0, MAX_RETRY_AFTER]`` or None, and never raises
(:func:`retry_after_seconds`).

A submit whose answer was lost may have created the task: it raises
``VendorSubmitInDoubt``, which callers treat as *in doubt*, never as "nothing happened".
A submit that certainly created nothing (429, a 503 with ``Retry-After``: the vendor
refused it; the connection could not be opened) raises the plain transient error.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from runtime import strict_json
from runtime.config import VendorConfig
from runtime.errors import (
    MAX_RETRY_AFTER,
    OutputRefused,
    VendorAuthError,
    VendorBillingError,
    VendorError,
    VendorInputRejected,
    VendorModelGone,
    VendorModelInvalid,
    VendorOutputTooLarge,
    VendorPermanentError,
    VendorRateLimited,
    VendorSubmitInDoubt,
    VendorTaskFailed,
    VendorTimeout,
    VendorTransientError,
    VendorUnavailable,
    WebhookRejected,
)
from runtime.origins import refusal_of
from runtime.policies import ErrorClass, classify_http_status
from runtime.telemetry import get_logger
from runtime.vendors.base import Download, FoundTask, Output, TaskState, TaskStatus
from runtime.vendors.outputs import decode_data_uri

log = get_logger("vendors")

TRACE_HEADER = "X-Jobline-Trace-Id"
JOB_ID_HEADER = "X-Jobline-Job-Id"
ATTEMPT_HEADER = "X-Jobline-Attempt"
USER_AGENT = "jobline/0.1"

MAX_OUTPUT_BYTES = 50 * 1024 * 1024  # fetch_output's cap (VendorPermanentError past it)
MAX_API_BYTES = 4 * 1024 * 1024  # an API answer larger than this is not one we understand
MAX_REDIRECTS = 5  # an output's redirects followed, each checked against output_hosts
REDIRECTS = frozenset({301, 302, 303, 307, 308})
FETCH_TOTAL_TIMEOUT = 120.0  # fetch_output may take this long while bytes keep coming
CHUNK = 64 * 1024

Op = Literal["submit", "status", "cancel", "fetch", "keys"]
T = TypeVar("T")
_BILLING = re.compile(r"lock|balance|billing|credit|payment|quota", re.IGNORECASE)


# --- errors ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return strict_json.loads(self.body)
        except ValueError:
            raise Malformed(f"HTTP {self.status} body is not JSON: {self.body[:200]!r}") from None

    def detail(self) -> str:
        """A short message from an error body (problem JSON, fal's detail, or text)."""
        try:
            data = strict_json.loads(self.body)
        except ValueError:
            return self.body[:200].decode("utf-8", "replace").strip()
        if isinstance(data, dict):
            for field in ("detail", "error", "title", "message"):
                if data.get(field):
                    return message_of(data[field])
        return message_of(data)


class ErrorStatus(Exception):
    """An HTTP answer >= 400 the call did not accept; translated by vendor_errors."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class Malformed(Exception):
    """A 2xx answer that is not the JSON the shape promises."""


# What reading a signed webhook body of an unexpected shape can raise: the vendor signed
# it, but it is not what the vendor documents. Each becomes a 400 (``WebhookRejected``),
# never a 500; a shape that fails inside a parser (not as ``Malformed``) is logged.
WEBHOOK_BODY_ERRORS = (
    ValueError,
    Malformed,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RecursionError,
)


def unreadable_webhook(vendor: str, exc: BaseException) -> WebhookRejected:
    if isinstance(exc, strict_json.NotJson):  # NaN, 1e400, nested too deep: said plainly
        return WebhookRejected(f"{vendor}: unreadable webhook body: {exc}")
    if not isinstance(exc, ValueError | Malformed):
        log.error("%s webhook parser failed on a signed body", vendor, exc_info=exc)
    return WebhookRejected(f"{vendor}: unreadable webhook body: {type(exc).__name__}: {exc}")


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


@contextlib.contextmanager
def vendor_errors(
    vendor: str, op: Op, timeout: float, clock: Callable[[], float]
) -> Iterator[None]:
    """Translate everything a request can raise into jobline's ``VendorError`` tree."""
    try:
        yield
    except VendorError:
        raise
    except ErrorStatus as exc:
        raise status_error(vendor, op, exc.reply, clock()) from None
    except Malformed as exc:
        raise _lost(op, VendorUnavailable(vendor, f"{op}: unexpected answer: {exc}")) from None
    except TooLarge as exc:
        raise VendorOutputTooLarge(vendor, f"{op}: answer larger than {exc.limit} bytes") from None
    except TimeoutError as exc:  # asyncio.TimeoutError and aiohttp.ServerTimeoutError
        raise _lost(op, VendorTimeout(vendor, f"{op}: no answer within {timeout:g}s")) from exc
    except aiohttp.InvalidURL as exc:
        raise VendorPermanentError(vendor, f"{op}: invalid URL {exc}") from exc
    except aiohttp.ClientConnectorError as exc:  # nothing was sent: refused, no route
        raise VendorUnavailable(vendor, f"{op}: {_describe(exc)}") from exc
    except (aiohttp.ClientError, ConnectionError) as exc:  # reset, disconnected, cut off
        raise _lost(op, VendorUnavailable(vendor, f"{op}: {_describe(exc)}")) from exc


def _lost(op: Op, exc: VendorTransientError) -> VendorTransientError:
    """On a submit, an answer lost after the request went out: the submit is in doubt."""
    if op != "submit":
        return exc
    return VendorSubmitInDoubt(exc.vendor, f"{exc.message} (the task may exist)", exc.retry_after)


def status_error(vendor: str, op: Op, reply: Reply, now: float) -> VendorError:
    status = reply.status
    detail = reply.detail()
    message = f"{op}: HTTP {status}: {detail}"
    retry_after = retry_after_seconds(reply.headers.get("Retry-After"), now)
    if status == 401:
        return VendorAuthError(vendor, message)
    if status == 402 or (status == 403 and _BILLING.search(detail)):
        return VendorBillingError(vendor, message)
    if status == 403:
        return VendorAuthError(vendor, message)
    if status == 429:
        return VendorRateLimited(vendor, message, retry_after)
    if status == 408:
        return VendorTimeout(vendor, message, retry_after)
    if status == 503 and retry_after is not None:  # the vendor refused it: created nothing
        return VendorUnavailable(vendor, message, retry_after)
    if status >= 500:
        return _lost(op, VendorUnavailable(vendor, message, retry_after))
    if classify_http_status(status) is ErrorClass.TRANSIENT:
        return VendorUnavailable(vendor, message, retry_after)
    if op == "submit":
        if status in (404, 410):
            return VendorModelGone(vendor, message)
        return VendorInputRejected(vendor, message)
    if op == "fetch" and status in (404, 410):
        return VendorTaskFailed(vendor, f"output is gone: {message}")
    return VendorPermanentError(vendor, message)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3: delay-seconds or an HTTP date) in seconds,
    clamped to ``[0, MAX_RETRY_AFTER]``; None when absent or unreadable (garbage, ``inf``,
    ``nan``: no number of seconds, so no hint; the usual backoff applies). Never raises.

    Field case: ``Retry-After: inf`` was taken as infinity and crashed the attempt."""
    if not value:
        return None
    value = value.strip()
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _http_date_seconds(value, now)
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _http_date_seconds(value: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def message_of(value: Any) -> str:
    """A vendor's error value as one line: a string, or fal's list of typed errors."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "; ".join(message_of(item) for item in value)
    if isinstance(value, dict) and "msg" in value:
        return str(value["msg"])
    return json.dumps(value)[:500]


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise TooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise TooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


# --- small parsers both shapes use ----------------------------------------------------------

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
CANCEL_NOOP = frozenset({400, 404, 409, 410, 422})  # already ended, or unknown


def segments(vendor: str, model: str, low: int, high: int) -> list[str]:
    """A configured vendor model name's parts; ``VendorModelInvalid`` (a config error, not
    the job's input) when it is not ``low`` to ``high`` plain segments."""
    parts = model.split("/")
    if not low <= len(parts) <= high or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise VendorModelInvalid(vendor, f"not a valid model name for this vendor: {model!r}")
    return parts


def task_path(vendor: str, task_id: str) -> str:
    if not task_id or "/" in task_id or task_id in (".", ".."):
        raise VendorInputRejected(vendor, f"not a valid task id: {task_id!r}")
    return quote(task_id, safe="")


def json_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise Malformed(f"expected a JSON object, got {type(data).__name__}")
    return data


def string_field(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise Malformed(f"no {key!r} in {json.dumps(data)[:200]}")
    return value


def not_found(task_id: str) -> TaskStatus:
    return TaskStatus(TaskState.FAILED, error=f"the vendor has no task {task_id}")


def ignore(reply: Reply) -> None:
    return None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


# --- the client both shapes are ------------------------------------------------------------


class HttpClient:
    """A shape's adapter minus the shape: session, requests, downloads."""

    auth_scheme = "Bearer"

    def __init__(
        self,
        config: VendorConfig,
        api_key: str,
        *,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self._name = config.name or config.api
        self._api_key = api_key
        self._max_output_bytes = max_output_bytes
        self._clock = clock  # for Retry-After given as an HTTP date
        self._base = URL(config.base_url)
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def can_find_tasks(self) -> bool:
        return False

    async def find_task(
        self, model: str, *, job_id: str, attempt: int, created_after: float, trace_id: str
    ) -> FoundTask | None:
        """See ``VendorClient.find_task``: this shape lists no tasks."""
        raise VendorPermanentError(self._name, "this vendor lists no tasks to find one by")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, {self.config.base_url!r})"

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None and not http.closed and self._loop is asyncio.get_running_loop():
            await http.close()

    # --- downloads ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def download(
        self, output: Output, *, trace_id: str, max_bytes: int | None = None
    ) -> AsyncIterator[Download]:
        """See ``VendorClient.download``."""
        if output.kind != "url":
            content_type, data = self._inline(output)
            if max_bytes is not None and len(data) > max_bytes:
                raise VendorOutputTooLarge(self._name, f"output larger than {max_bytes} bytes")
            yield Download(content_type, len(data), _once(data))
            return
        seconds = self.config.poll_timeout
        timeout = aiohttp.ClientTimeout(sock_connect=seconds, sock_read=seconds)
        target = URL(output.value)
        async with contextlib.AsyncExitStack() as stack:
            with vendor_errors(self._name, "fetch", seconds, self._clock):
                for hop in range(MAX_REDIRECTS + 1):
                    response = await stack.enter_async_context(
                        self._session().get(
                            target,
                            headers=self._headers(trace_id, auth=self._same_origin(target)),
                            timeout=timeout,
                            allow_redirects=False,  # every hop is checked below
                        )
                    )
                    if response.status not in REDIRECTS:
                        break
                    response.release()
                    target = self._redirected(target, response, hop)
                if response.status >= 400:
                    body = await _read_body(response, MAX_API_BYTES)
                    raise ErrorStatus(Reply(response.status, response.headers, body))
                size = response.content_length
                if max_bytes is not None and size is not None and size > max_bytes:
                    raise TooLarge(max_bytes)
            declared = response.headers.get("Content-Type") or output.content_type
            yield Download(declared, size, self._chunks(response, max_bytes))

    def _redirected(self, url: URL, response: aiohttp.ClientResponse, hop: int) -> URL:
        """Where a redirect leads, if it may be followed: at most ``MAX_REDIRECTS`` hops,
        each to one of the vendor's output hosts (the same rule as the output's own URL,
        ``runtime.origins``); else ``OutputRefused`` and nothing is fetched from there."""
        location = response.headers.get("Location")
        if not location:
            raise VendorPermanentError(self._name, f"fetch: a {response.status} without Location")
        if hop >= MAX_REDIRECTS:
            raise OutputRefused(self._name, f"fetch: more than {MAX_REDIRECTS} redirects")
        try:
            target = url.join(URL(location))
        except ValueError:
            raise OutputRefused(self._name, f"fetch: redirect to {location[:80]!r}") from None
        reason = refusal_of(str(target), self.config.output_hosts or ())
        if reason is not None:
            raise OutputRefused(self._name, f"fetch: redirect refused: {reason}")
        return target

    async def _chunks(
        self, response: aiohttp.ClientResponse, max_bytes: int | None
    ) -> AsyncIterator[bytes]:
        size = 0
        with vendor_errors(self._name, "fetch", self.config.poll_timeout, self._clock):
            async for chunk in response.content.iter_chunked(CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(max_bytes)
                yield chunk

    def _inline(self, output: Output) -> tuple[str | None, bytes]:
        if output.kind == "data":
            try:
                return decode_data_uri(output.value)
            except ValueError as exc:
                raise VendorPermanentError(self._name, f"fetch: {exc}") from None
        return output.content_type, output.value.encode()

    async def fetch_output(self, url: str, *, trace_id: str) -> bytes:
        """See ``VendorClient.fetch_output``."""
        output = Output("data" if url.startswith("data:") else "url", url)
        chunks = []
        with vendor_errors(self._name, "fetch", FETCH_TOTAL_TIMEOUT, self._clock):
            async with asyncio.timeout(FETCH_TOTAL_TIMEOUT):
                async with self.download(
                    output, trace_id=trace_id, max_bytes=self._max_output_bytes
                ) as download:
                    async for chunk in download.chunks:
                        chunks.append(chunk)
        return b"".join(chunks)

    # --- requests -----------------------------------------------------------------------

    def _same_origin(self, url: URL) -> bool:
        """Send the API key only back to the API's own origin, never to a CDN."""
        return url.is_absolute() and url.origin() == self._base.origin()

    def _headers(
        self, trace_id: str | None, *, auth: bool, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        sent = dict(extra or {})
        if trace_id:
            sent[TRACE_HEADER] = trace_id
        if auth:
            sent["Authorization"] = f"{self.auth_scheme} {self._api_key}"
        return sent

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

    async def call(
        self,
        op: Op,
        method: str,
        url: URL,
        read: Callable[[Reply], T],
        *,
        trace_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        accept: frozenset[int] = frozenset(),
        auth: bool = True,
        limit: int = MAX_API_BYTES,
    ) -> T:
        """One request, its answer read by ``read``; every error is a ``VendorError``.

        A status >= 400 raises unless it is in ``accept`` (then ``read`` sees it); an
        answer over ``limit`` bytes raises ``VendorOutputTooLarge``.
        """
        seconds = self.config.submit_timeout if op == "submit" else self.config.poll_timeout
        with vendor_errors(self._name, op, seconds, self._clock):
            async with self._session().request(
                method,
                url,
                json=json_body,
                headers=self._headers(trace_id, auth=auth, extra=headers),
                timeout=aiohttp.ClientTimeout(total=seconds),
                allow_redirects=False,
            ) as response:
                body = await _read_body(response, limit)
                reply = Reply(response.status, response.headers, body)
            if reply.status >= 400 and reply.status not in accept:
                raise ErrorStatus(reply)
            return read(reply)

    def url(self, path: str) -> URL:
        return URL(f"{self.config.base_url}{path}", encoded=True)
