"""Vendor callbacks (``POST /v1/webhooks/{vendor}``): verified, deduplicated, applied.

A webhook is verified by its vendor's client, then offered to the vendor's processor
(``take_webhooks``). The usual webhook is about a task the processor is following: it
takes it, keeps its id (a repeat is answered ``duplicate``), and its receipt is written
in the same ledger call and transaction as the write it brings about (the job's
Complete, ScheduleRetry or Fail), so it costs no ledger call of its own. Any other
webhook (a task the processor does not follow: not yet recorded, in doubt, an orphan,
ended, or the processor restarting or slow to answer) is recorded in the ledger
(``RecordWebhook``) before it is forwarded (``on_webhooks``). Either way a webhook id is
applied at most once, and a repeat is acknowledged and dropped; a processor that
restarts forgets the ids it took but not written yet, and a repeat of one is applied
again, which changes nothing (a pushed end is idempotent, terminal states absorb).

Its body has its own limit, ``gateway.max_webhook_body_bytes`` (replicate posts the whole
prediction, input and logs; fal the whole result, data URIs in sync mode: several MB),
apart from the API's ``max_body_bytes``. Every rejection is counted in
``jobline_webhook_rejections_total{vendor,reason}``: ``signature``, ``stale``,
``keys_unavailable``, ``malformed``, ``too_large`` (413), ``unreadable`` (a body that
cannot be decoded), and ``unknown_vendor`` (counted under ``vendor="unknown"``).
Anyone may post here, so rejections are logged through ``QuietLog``: the first per
source address and reason, then one line a minute counting the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

from aiohttp import web

from runtime.api.context import PROCESSOR_TIMEOUT, Api, log
from runtime.api.errors import HttpRefusal, json_response
from runtime.api.quiet_log import QuietLog
from runtime.errors import (
    WebhookKeysUnavailable,
    WebhookRejected,
    WebhookSignatureInvalid,
    WebhookTimestampStale,
)
from runtime.models import RecordWebhook
from runtime.vendors import WebhookEvent
from runtime.webhooks import ATTEMPT_PARAM, JOB_PARAM

WEBHOOK_ANSWER_WITHIN = 2.0  # a vendor's webhook is answered by then, forwarded or not
WEBHOOK_OFFER_WITHIN = 0.5  # the processor's answer to an offer; after that, the ledger
MAX_REFERENCE_LENGTH = 128  # a job id in a webhook URL; longer is not one of ours
WEBHOOK_REASONS = (
    (WebhookSignatureInvalid, "signature"),
    (WebhookTimestampStale, "stale"),
    (WebhookKeysUnavailable, "keys_unavailable"),
    (WebhookRejected, "malformed"),
)
BODY_REASONS = {413: "too_large", 400: "unreadable", 408: "too_slow"}
UNKNOWN_VENDOR = "unknown"  # the label of webhooks for a vendor jobline does not have
CHUNK = 64 * 1024


class WebhookRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api
        reasons = [reason for _, reason in WEBHOOK_REASONS] + list(BODY_REASONS.values())
        for vendor in api.ctx.webhook_parsers:  # exported at 0 before the first rejection
            for reason in reasons:
                api.ctx.metrics.webhook_rejections.labels(vendor, reason)
        api.ctx.metrics.webhook_rejections.labels(UNKNOWN_VENDOR, "unknown_vendor")
        self._quiet = QuietLog()

    def _log_rejection(
        self, request: web.Request, vendor: str, reason: str, error: Exception
    ) -> None:
        source = request.remote or "unknown"
        count = self._quiet.note(source, f"{vendor}/{reason}", self.api.ctx.clock.time())
        if count == 1:
            log.warning(
                "webhook rejected (%s) from %s: %s", reason, source, error,
                extra={"vendor": vendor},
            )  # fmt: skip
        elif count > 1:
            log.warning(
                "webhook rejected (%s) from %s %d times since its last line; the last: %s",
                reason, source, count, error, extra={"vendor": vendor},
            )  # fmt: skip

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/webhooks/{vendor}", self.webhook)]

    async def webhook(self, request: web.Request) -> web.Response:
        api = self.api
        vendor = request.match_info["vendor"]
        parser = api.ctx.webhook_parsers.get(vendor)
        metrics = api.ctx.metrics
        if parser is None:
            metrics.webhook_rejections.labels(UNKNOWN_VENDOR, "unknown_vendor").inc()
            raise HttpRefusal(404, "unknown_vendor", f"no vendor named {vendor[:64]!r}")
        gateway = api.ctx.config.gateway
        try:
            body = await read_webhook_body(
                request, gateway.max_webhook_body_bytes, gateway.body_timeout
            )
        except HttpRefusal as refusal:
            reason = BODY_REASONS.get(refusal.status, "unreadable")
            metrics.webhook_rejections.labels(vendor, reason).inc()
            metrics.webhooks.labels(vendor, "rejected").inc()
            self._log_rejection(request, vendor, reason, refusal)
            raise
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            event = await parser.parse_webhook(
                headers, body, api.ctx.clock.time(), api.ctx.config.gateway.webhook_tolerance
            )
        except WebhookRejected as exc:
            reason = next(r for kind, r in WEBHOOK_REASONS if isinstance(exc, kind))
            metrics.webhook_rejections.labels(vendor, reason).inc()
            metrics.webhooks.labels(vendor, "rejected").inc()
            self._log_rejection(request, vendor, reason, exc)
            raise
        event = with_reference(event, request.query)
        taken = await self._offer(vendor, event)
        if taken:
            metrics.webhooks.labels(vendor, taken).inc()
            return json_response({"status": taken})
        outcome = await api.execute(RecordWebhook(vendor, event.webhook_id))
        if not outcome.unwrap():
            metrics.webhooks.labels(vendor, "duplicate").inc()
            return json_response({"status": "duplicate"})
        metrics.webhooks.labels(vendor, "accepted").inc()
        # Vendors give a webhook a few seconds (then count it failed, and may retry: a
        # duplicate now); a processor that is restarting can take longer. So the answer
        # waits for the forward only that long, and the forward goes on without it.
        forward = api.spawn(self._forward_webhook(vendor, event))
        await asyncio.wait([forward], timeout=WEBHOOK_ANSWER_WITHIN)  # never cancels it
        return json_response({"status": "accepted"})

    async def _offer(self, vendor: str, event: WebhookEvent) -> str:
        """``"accepted"`` or ``"duplicate"`` if the processor follows the event's task;
        ``""`` if it does not, or did not answer in time (the ledger records it then)."""
        try:
            async with asyncio.timeout(WEBHOOK_OFFER_WITHIN):  # a timer, not a task per offer
                answer = await self.api.processor(vendor).take.call(event)
        except Exception as exc:
            log.info(
                "webhook not taken by the processor; recording it",
                extra={"vendor": vendor, "task_id": event.task_id, "error": repr(exc)},
            )
            return ""
        return {"taken": "accepted", "duplicate": "duplicate"}.get(answer, "")

    async def _forward_webhook(self, vendor: str, event: WebhookEvent) -> None:
        try:
            async with asyncio.timeout(PROCESSOR_TIMEOUT):
                await self.api.processor(vendor).webhooks.call(event)
        except Exception as exc:  # recorded already: polling finds the task's end instead
            log.warning(
                "webhook not forwarded; polling will catch up",
                extra={"vendor": vendor, "task_id": event.task_id, "error": repr(exc)},
            )


async def read_webhook_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The webhook's body, decoded, up to ``limit`` bytes (the API's ``client_max_size``
    does not apply: it is read from the stream). 413 past the limit, 400 if it cannot be
    decoded, 408 if it has not arrived within ``timeout`` seconds; each closes the
    connection (the rest of the body is left unread)."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    stream = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        if stream.is_eof():  # it came whole with the head: no timer, no chunk at a time
            body = stream.read_nowait()
            if len(body) > limit:
                raise _too_large(limit)
            return body
        async with asyncio.timeout(timeout):
            async for chunk in stream.iter_chunked(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except web.RequestPayloadError as exc:
        encoding = request.headers.get("Content-Encoding", "identity")
        message = f"the body could not be read (Content-Encoding {encoding})"
        raise HttpRefusal(400, "bad_request", message, {"Connection": "close"}) from exc
    except TimeoutError:
        message = f"the body did not arrive within {timeout:g}s (gateway.body_timeout)"
        raise HttpRefusal(408, "request_timeout", message, {"Connection": "close"}) from None
    return b"".join(chunks)


def _too_large(limit: int) -> HttpRefusal:
    return HttpRefusal(
        413,
        "payload_too_large",
        f"webhook body larger than gateway.max_webhook_body_bytes ({limit} bytes)",
        {"Connection": "close"},
    )


def with_reference(event: WebhookEvent, query: Mapping[str, str]) -> WebhookEvent:
    """The event with the job and attempt its URL names; a malformed hint is dropped."""
    job_id = query.get(JOB_PARAM)
    attempt = query.get(ATTEMPT_PARAM, "")
    if not (0 < len(job_id or "") <= MAX_REFERENCE_LENGTH) or not (
        attempt.isascii() and attempt.isdigit() and len(attempt) <= 6
    ):
        return event
    return replace(event, job_id=job_id, attempt=int(attempt))
