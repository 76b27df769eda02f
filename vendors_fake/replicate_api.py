"""The replicate-shaped API (enough of it for the official ``replicate`` client).

Routes::

    POST /v1/predictions                        {"version": ..., "input": {...},
                                                 "webhook": url, "webhook_events_filter": [...]}
    POST /v1/models/{owner}/{name}/predictions  {"input": {...}, "webhook": ...}
    POST /v1/deployments/{owner}/{name}/predictions
    GET  /v1/predictions/{id}
    POST /v1/predictions/{id}/cancel

``Authorization: Bearer <key>``. Creates answer 201 with the prediction; ``Prefer: wait``
(or ``wait=N``, at most 60 s) holds the answer until the prediction ends or N seconds pass.
``Cancel-After: 5m`` (ms, s, m, h; ``1h30m``) cancels a prediction that has not ended
that long after its creation.

A prediction is ``starting`` while queued, ``processing`` while it runs, then
``succeeded`` (``output`` is the URL of a PNG served by the fake), ``failed`` (``error``
is ``TRANSIENT_ERROR``, or ``REJECTED_ERROR`` which contains "(E005)" for content
rejected: permanent) or ``canceled``. Webhook events: ``start`` (when it starts
processing) and ``completed``; ``output`` and ``logs`` are accepted in the filter and
never sent. Errors are problem JSON: ``{"title", "detail", "status"}``.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from vendors_fake.server import FakeVendor, Handler, RouteGroup, dumps, json_response
from vendors_fake.tasks import Phase, Task

EVENTS = frozenset({"start", "output", "logs", "completed"})
_STATUS = {
    Phase.QUEUED: "starting",
    Phase.RUNNING: "processing",
    Phase.SUCCEEDED: "succeeded",
    Phase.FAILED: "failed",
    Phase.CANCELED: "canceled",
}
_TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    404: "Not found",
    422: "Input validation failed",
    429: "Request was throttled",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
}
MAX_WAIT = 60.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ReplicateApi:
    name = "replicate"
    emitted_events = frozenset({"start", "completed"})
    progress_event: str | None = "start"

    def __init__(self, vendor: FakeVendor) -> None:
        self.vendor = vendor

    def routes(self) -> list[tuple[str, str, str, RouteGroup, Handler]]:
        return [
            ("POST", "/v1/predictions", "predictions.create", "submit", self.create),
            (
                "POST",
                "/v1/models/{owner}/{name}/predictions",
                "models.predictions.create",
                "submit",
                self.create_for_model,
            ),
            (
                "POST",
                "/v1/deployments/{owner}/{name}/predictions",
                "deployments.predictions.create",
                "submit",
                self.create_for_model,
            ),
            ("GET", "/v1/predictions/{id}", "predictions.get", "status", self.get),
            ("POST", "/v1/predictions/{id}/cancel", "predictions.cancel", "cancel", self.cancel),
        ]

    # --- handlers ------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        version = body.get("version")
        if not isinstance(version, str) or not version:
            raise self.vendor.reply(422, "version is required")
        model, _, version_id = version.rpartition(":")
        if not model:
            model = "fake/model"  # a bare version id names no model
        return await self._create(request, body, model, version_id)

    async def create_for_model(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        version_id = hashlib.sha256(model.encode()).hexdigest()
        return await self._create(request, body, model, version_id)

    async def get(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.vendor.task(request.match_info["id"]).body)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        task = self.vendor.task(request.match_info["id"])
        self.vendor.cancel(task)
        return json_response(task.body)

    async def _create(
        self, request: web.Request, body: dict[str, Any], model: str, version: str
    ) -> web.StreamResponse:
        input = body.get("input")
        if not isinstance(input, dict):
            raise self.vendor.reply(422, "input is required and must be an object")
        webhook = body.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            raise self.vendor.reply(422, "webhook must be a URL")
        events = body.get("webhook_events_filter")
        if events is None:
            subscribed = EVENTS
        elif isinstance(events, list) and set(events) <= EVENTS:
            subscribed = frozenset(events)
        else:
            raise self.vendor.reply(422, f"webhook_events_filter must be a subset of {EVENTS}")
        cancel_after = request.headers.get("Cancel-After")
        task = self.vendor.new_task(
            request,
            model,
            version,
            input,
            webhook,
            subscribed,
            cancel_after=None if cancel_after is None else self._duration(cancel_after),
        )
        wait = _prefer_wait(request.headers.get("Prefer"))
        if wait:
            await self.vendor.wait(task, wait)
        return json_response(task.body, 201)

    def _duration(self, text: str) -> float:
        """``Cancel-After``: a duration such as ``90s``, ``5m`` or ``1h30m`` (ms, s, m, h)."""
        if not _DURATION.fullmatch(text):
            raise self.vendor.reply(400, f"Cancel-After must be a duration like 5m, not {text!r}")
        return sum(
            float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(text)
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise self.vendor.reply(400, "The request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise self.vendor.reply(400, "The request body must be a JSON object")
        return body

    # --- JSON ----------------------------------------------------------------------------

    def render(self, task: Task) -> bytes:
        url = f"{self.vendor.url}/v1/predictions/{task.id}"
        prediction: dict[str, Any] = {
            "id": task.id,
            "model": task.model,
            "version": task.version,
            "input": task.input,
            "logs": "",
            "output": self.vendor.output_url(task) if task.phase is Phase.SUCCEEDED else None,
            "data_removed": False,
            "error": task.error,
            "status": _STATUS[task.phase],
            "created_at": _iso(task.created_at),
            "started_at": _iso(task.started_at),
            "completed_at": _iso(task.completed_at),
            "urls": {"get": url, "cancel": f"{url}/cancel"},
            "metrics": (
                {"predict_time": round(task.run_time, 6)} if task.phase is Phase.SUCCEEDED else {}
            ),
        }
        if task.webhook_url is not None:
            prediction["webhook"] = task.webhook_url
            prediction["webhook_events_filter"] = sorted(task.webhook_events)
        return dumps(prediction)

    def webhook_body(self, task: Task, event: str) -> bytes:
        return task.body  # replicate posts the prediction as it is at the event

    def error_body(self, status: int, message: str) -> bytes:
        return dumps({"title": _TITLES.get(status, "Error"), "detail": message, "status": status})


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _prefer_wait(prefer: str | None) -> float:
    """Seconds to hold a create for, from ``Prefer: wait`` / ``Prefer: wait=N``."""
    if not prefer:
        return 0.0
    for part in prefer.split(","):
        key, _, value = part.strip().partition("=")
        if key == "wait":
            try:
                return min(float(value), MAX_WAIT) if value else MAX_WAIT
            except ValueError:
                return MAX_WAIT
    return 0.0
