"""The fal-shaped adapter, written from fal's documentation ("Queue", the Inference API
reference, "Webhooks") and the official ``fal-client`` (``fal_client/client.py``).

- Submit: ``POST {base}/{endpoint_id}[?fal_webhook=<url>]``, ``Authorization: Key``. An
  endpoint id is ``owner/app[/path]``, or ``namespace/owner/app[/path]`` under the
  ``workflows`` and ``comfy`` namespaces (fal-client's ``APP_NAMESPACES``), or a legacy
  ``<number>-<alias>``. The answer gives ``request_id``, ``status_url``,
  ``response_url`` and ``cancel_url``: the client keeps them and follows them (as
  fal-client's ``AsyncRequestHandle`` does).
- Where they are not known (another process, a restart: only the request id is in the
  ledger) they are built exactly as ``AsyncRequestHandle.from_request_id`` does:
  ``{base}/{namespace/}{owner}/{alias}/requests/{request_id}`` (+ ``/status``,
  ``/cancel``): the app only, never the endpoint's path (:func:`queue_base`).
- Status: ``IN_QUEUE`` (``queue_position``) -> PENDING, ``IN_PROGRESS`` -> RUNNING,
  ``COMPLETED`` with ``error``/``error_type`` -> failed, else the result from
  ``response_url``; outputs under any key (``images`` lists, ``video``, ``audio``, a
  model's own keys; ``data:`` URIs in ``sync_mode``; the whole JSON result too when it
  holds other values).
- A failure is permanent (the job's) when the result answered 422 (fal's status for
  model errors: validation, content policy) or the error type is
  ``content_policy_violation``; ``request_canceled`` is CANCELED; other request errors
  (``internal_server_error``, ``request_timeout``, ``runner_disconnected``, ...) are
  transient. A result answering 5xx without an error type is a failed read
  (``VendorUnavailable``: poll again), not a failed task.
- Webhooks: body ``{request_id, gateway_request_id, status: OK|ERROR, payload, error,
  payload_error}``. ``OK`` with ``payload: null`` and ``payload_error`` means fal could not
  serialize a result that exists: SUCCEEDED with ``result_pending`` (read it with
  :meth:`FalClient.status`), never a failure. Signed with ED25519, checked against the
  keys at the vendor's ``webhook_jwks_url`` (:class:`FalKeySet`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from runtime import strict_json
from runtime.config import VendorConfig
from runtime.errors import (
    VendorError,
    VendorModelInvalid,
    WebhookKeysUnavailable,
    WebhookRejected,
    WebhookSignatureInvalid,
)
from runtime.vendors.base import TaskState, TaskStatus, WebhookEvent
from runtime.vendors.http import (
    ATTEMPT_HEADER,
    CANCEL_NOOP,
    JOB_ID_HEADER,
    MAX_OUTPUT_BYTES,
    WEBHOOK_BODY_ERRORS,
    ErrorStatus,
    HttpClient,
    Malformed,
    Reply,
    ignore,
    json_object,
    message_of,
    not_found,
    segments,
    string_field,
    task_path,
    unreadable_webhook,
)
from runtime.vendors.outputs import find_outputs
from runtime.webhooks import (
    FalSigned,
    check_timestamp,
    fal_signature_valid,
    fal_signed,
    parse_jwks,
)

NAMESPACES = ("workflows", "comfy")  # fal-client: APP_NAMESPACES
PERMANENT_TYPES = frozenset({"content_policy_violation"})
CANCELED_TYPE = "request_canceled"
KNOWN_URLS = 10_000  # submit answers remembered per client
JWKS_MAX_AGE = 24 * 3600.0  # fal: "cache the JWKS for up to 24 hours"
JWKS_MIN_REFETCH = 10.0  # seconds between fetches forced by an unknown signature
_LEGACY_ID = re.compile(r"^([0-9]+)-([a-zA-Z0-9-]+)$")  # fal-client: _ensure_app_id_format
_STATUS_CODE = re.compile(r"status code:?\s*(\d{3})", re.IGNORECASE)
# Result answers that may describe the task rather than the read (see FalClient.status).
_RESULT_FAILURES = frozenset(range(400, 600)) - {401, 402, 403, 408, 425, 429}


@dataclass(frozen=True, slots=True)
class QueueUrls:
    status_url: URL
    response_url: URL
    cancel_url: URL


def queue_app(vendor: str, endpoint_id: str) -> str:
    """The app part of an endpoint id, as fal-client's ``AppId.from_endpoint_id`` reads
    it: ``owner/alias``, ``namespace/owner/alias``; ``VendorModelInvalid`` (a config
    error) if none."""
    match = _LEGACY_ID.match(endpoint_id)
    if match:
        endpoint_id = f"{match.group(1)}/{match.group(2)}"
    parts = segments(vendor, endpoint_id, 2, 8)
    if parts[0] in NAMESPACES:
        if len(parts) < 3:
            raise VendorModelInvalid(vendor, f"{endpoint_id!r}: {parts[0]}/ apps are owner/app")
        return "/".join(parts[:3])
    return "/".join(parts[:2])


def queue_base(base_url: str, vendor: str, endpoint_id: str, request_id: str) -> str:
    """``response_url`` built as fal-client's ``from_request_id`` builds it."""
    return f"{base_url}/{queue_app(vendor, endpoint_id)}/requests/{task_path(vendor, request_id)}"


class FalKeySet:
    """fal's webhook public keys: fetched from a JWKS URL, cached, and fetched again when
    no cached key matches a signature (keys rotate), at most every ``min_refetch``
    seconds (a stream of forgeries does not become a stream of fetches)."""

    def __init__(
        self,
        fetch: Callable[[], Any],
        *,
        max_age: float = JWKS_MAX_AGE,
        min_refetch: float = JWKS_MIN_REFETCH,
    ) -> None:
        self._fetch = fetch  # () -> awaitable JWKS document
        self._max_age = max_age
        self._min_refetch = min_refetch
        self._keys: list[Ed25519PublicKey] = []
        self._fetched_at: float | None = None  # of the last attempt, successful or not
        self._loaded_at: float | None = None  # of the keys we hold
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def verify(self, signed: FalSigned, now: float) -> None:
        """Accept ``signed`` or raise ``WebhookSignatureInvalid`` / ``WebhookKeysUnavailable``."""
        stale = self._loaded_at is None or now - self._loaded_at > self._max_age
        if stale:
            await self._refresh(now, force=True)
        if fal_signature_valid(self._keys, signed):
            return
        refreshed = not stale and await self._refresh(now, force=False)
        if refreshed and fal_signature_valid(self._keys, signed):
            return
        raise WebhookSignatureInvalid("no published fal key made this X-Fal-Webhook-Signature")

    async def _refresh(self, now: float, *, force: bool) -> bool:
        """Fetch the key set (single flight); False if rate-limited or it failed."""
        started = self._fetched_at
        async with self._lock:
            if self._fetched_at != started:  # another caller fetched meanwhile
                return self._loaded_at == self._fetched_at
            if not force and started is not None and now - started < self._min_refetch:
                return False
            self._fetched_at = now
            self.fetches += 1
            try:
                self._keys = parse_jwks(await self._fetch())
            except (VendorError, ValueError) as exc:
                if not self._keys:
                    raise WebhookKeysUnavailable(f"fal webhook keys unavailable: {exc}") from None
                return False  # keep the keys we had
            self._loaded_at = now
            return True


class FalClient(HttpClient):
    """The fal-shaped queue API (see the module docstring)."""

    auth_scheme = "Key"

    def __init__(
        self,
        config: VendorConfig,
        api_key: str,
        *,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        clock: Callable[[], float] = time.time,
        jwks_min_refetch: float = JWKS_MIN_REFETCH,
    ) -> None:
        super().__init__(config, api_key, max_output_bytes=max_output_bytes, clock=clock)
        self._urls: OrderedDict[str, QueueUrls] = OrderedDict()
        assert config.webhook_jwks_url is not None  # the config fills in fal's default
        self._jwks_url = URL(config.webhook_jwks_url)
        self.keys = FalKeySet(self._fetch_keys, min_refetch=jwks_min_refetch)

    async def submit(
        self,
        model: str,
        input: dict[str, Any],
        *,
        job_id: str,
        attempt: int,
        trace_id: str,
        webhook_url: str | None,
        cancel_after: float | None = None,
    ) -> str:
        """``cancel_after`` has no fal equivalent for a running request (an app's own
        request timeout ends it; configure ``max_task_time`` to match): it is not sent."""
        queue_app(self._name, model)
        url = self.url(f"/{model}")
        if webhook_url is not None:
            url = url.with_query(fal_webhook=webhook_url)
        headers = {JOB_ID_HEADER: job_id, ATTEMPT_HEADER: str(attempt)}
        return await self.call(
            "submit",
            "POST",
            url,
            self._read_submitted,
            trace_id=trace_id,
            headers=headers,
            json_body=input,
        )

    def _read_submitted(self, reply: Reply) -> str:
        answer = json_object(reply.json())
        request_id = string_field(answer, "request_id")
        urls = [answer.get(k) for k in ("status_url", "response_url", "cancel_url")]
        if all(isinstance(u, str) for u in urls):
            parsed = [URL(str(u)) for u in urls]
            if all(self._same_origin(u) for u in parsed):  # the key goes nowhere else
                self._urls[request_id] = QueueUrls(*parsed)
                while len(self._urls) > KNOWN_URLS:
                    self._urls.popitem(last=False)
        return request_id

    def queue_urls(self, model: str, request_id: str) -> QueueUrls:
        """The URLs fal returned for this request, or built the way fal-client builds them."""
        known = self._urls.get(request_id)
        if known is not None:
            return known
        base = queue_base(self.config.base_url, self._name, model, request_id)
        return QueueUrls(
            URL(f"{base}/status", encoded=True),
            URL(base, encoded=True),
            URL(f"{base}/cancel", encoded=True),
        )

    async def status(self, model: str, task_id: str, *, trace_id: str) -> TaskStatus:
        urls = self.queue_urls(model, task_id)

        def read_status(reply: Reply) -> TaskStatus | None:
            if reply.status == 404:
                return not_found(task_id)
            return queue_status(json_object(reply.json()))

        status = await self.call(
            "status",
            "GET",
            urls.status_url,
            read_status,
            trace_id=trace_id,
            accept=frozenset({404}),
        )
        if status is not None:
            return status
        return await self.call(  # COMPLETED without an error: the result holds the outputs
            "status",
            "GET",
            urls.response_url,
            lambda reply: self._read_result(reply, task_id),
            trace_id=trace_id,
            accept=_RESULT_FAILURES,
        )

    def _read_result(self, reply: Reply, task_id: str) -> TaskStatus:
        if reply.status == 404:
            return not_found(task_id)
        if reply.status >= 400:
            data = _json_or_none(reply.body)
            detail = data.get("detail") if isinstance(data, dict) else None
            error_type = (data.get("error_type") if isinstance(data, dict) else None) or (
                reply.headers.get("X-Fal-Error-Type")
            )
            if reply.status >= 500 and not error_type:
                raise ErrorStatus(reply)  # the read failed, not (we know) the task
            return failure(reply.status, error_type, detail or reply.detail())
        return TaskStatus(TaskState.SUCCEEDED, outputs=find_outputs(reply.json()))

    async def cancel(self, model: str, task_id: str, *, trace_id: str) -> None:
        url = self.queue_urls(model, task_id).cancel_url
        await self.call("cancel", "PUT", url, ignore, trace_id=trace_id, accept=CANCEL_NOOP)

    async def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float, tolerance: float
    ) -> WebhookEvent:
        signed = fal_signed(headers, body)
        await self.keys.verify(signed, now)
        check_timestamp(signed.timestamp, now, tolerance)
        try:
            data = json_object(strict_json.loads(body))
            task_id, status = webhook_status(data)
        except WEBHOOK_BODY_ERRORS as exc:
            raise unreadable_webhook(self._name, exc) from None
        if task_id != signed.request_id:
            raise WebhookRejected(
                f"{self._name}: the body names request {task_id}, the signature {signed.request_id}"
            )
        return WebhookEvent(self._name, task_id, task_id, status)  # one final webhook a request

    async def _fetch_keys(self) -> Any:
        return await self.call("keys", "GET", self._jwks_url, lambda r: r.json(), auth=False)


def queue_status(body: dict[str, Any]) -> TaskStatus | None:
    """The status endpoint's answer; None for COMPLETED without an error (read the result)."""
    status = body.get("status")
    if status == "IN_QUEUE":
        position = body.get("queue_position")
        return TaskStatus(
            TaskState.PENDING,
            queue_position=position if isinstance(position, int) else None,
        )
    if status == "IN_PROGRESS":
        return TaskStatus(TaskState.RUNNING)
    if status == "COMPLETED":
        error_type, error = body.get("error_type"), body.get("error")
        if error_type or error:
            return failure(None, error_type, error or error_type)
        return None
    raise Malformed(f"unknown request status {status!r}")


def webhook_status(data: dict[str, Any]) -> tuple[str, TaskStatus]:
    task_id = string_field(data, "request_id")
    payload = data.get("payload")
    outcome = data.get("status")
    if outcome == "OK":
        if payload is None:  # payload_error: the result exists, at response_url
            return task_id, TaskStatus(TaskState.SUCCEEDED, result_pending=True)
        return task_id, TaskStatus(TaskState.SUCCEEDED, outputs=find_outputs(payload))
    if outcome != "ERROR":
        raise Malformed(f"unknown webhook status {outcome!r}")
    error = data.get("error")
    code_match = _STATUS_CODE.search(error) if isinstance(error, str) else None
    code = int(code_match.group(1)) if code_match else None
    detail = payload.get("detail") if isinstance(payload, dict) else None
    error_type = payload.get("error_type") if isinstance(payload, dict) else None
    return task_id, failure(code, error_type, detail or error or "request failed")


def failure(code: int | None, error_type: Any, detail: Any) -> TaskStatus:
    """A fal request that ended badly (see the module docstring for the rule)."""
    types = {error_type} if isinstance(error_type, str) else set()
    if isinstance(detail, list):  # fal's typed errors: [{"type": "...", "msg": ...}, ...]
        types |= {
            item["type"]
            for item in detail
            if isinstance(item, dict) and isinstance(item.get("type"), str)
        }
    message = message_of(detail)
    if CANCELED_TYPE in types or (code == 400 and "cancel" in message.lower()):
        return TaskStatus(TaskState.CANCELED)
    permanent = code == 422 or bool(types & PERMANENT_TYPES)
    return TaskStatus(TaskState.FAILED, error=message, permanent=permanent)


def _json_or_none(body: bytes) -> Any:
    try:
        return strict_json.loads(body)
    except ValueError:
        return None
