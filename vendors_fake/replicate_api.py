"""The replicate-shaped HTTP routes (enough of them for the official ``replicate`` client).

Routes::

    POST /v1/predictions                        {"version": ..., "input": {...},
                                                 "webhook": url, "webhook_events_filter": [...]}
    POST /v1/models/{owner}/{name}/predictions  {"input": {...}, "webhook": ...}
    POST /v1/deployments/{owner}/{name}/predictions
    GET  /v1/predictions                        the account's predictions, newest first
                                                (``{"next", "previous", "results"}``, 100 a page)
    GET  /v1/predictions/{id}
    POST /v1/predictions/{id}/cancel

``Authorization: Bearer <key>``. Creates answer 201 with the prediction; ``Prefer: wait``
(or ``wait=N``, at most 60 s) holds the answer until the prediction ends or N seconds
pass. ``Cancel-After: 5m`` (ms, s, m, h; ``1h30m``) ends a prediction that has not ended
that long after its creation: ``canceled`` if it ran (billed), ``aborted`` if it had not
started. The JSON itself is :mod:`vendors_fake.replicate_shape`'s.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from vendors_fake.core import RouteGroup
from vendors_fake.replicate_shape import EVENTS, ReplicateShape, dumps, parse_duration
from vendors_fake.server import FakeVendor, Handler, json_response

MAX_WAIT = 60.0
PAGE = 100


class ReplicateRoutes:
    def __init__(self, vendor: FakeVendor) -> None:
        self.vendor = vendor
        self.core = vendor.core
        assert isinstance(vendor.core.shape, ReplicateShape)
        self.shape = vendor.core.shape

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
            ("GET", "/v1/predictions", "predictions.list", "status", self.list),
            ("GET", "/v1/predictions/{id}", "predictions.get", "status", self.get),
            ("POST", "/v1/predictions/{id}/cancel", "predictions.cancel", "cancel", self.cancel),
        ]

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

    async def list(self, request: web.Request) -> web.StreamResponse:
        tasks = list(self.core.tasks.values())[::-1]
        start = _int(request.query.get("cursor"), 0)
        page = tasks[start : start + PAGE]
        more = start + PAGE < len(tasks)
        url = f"{self.core.base_url}/v1/predictions"
        answer = {
            "previous": None,
            "next": f"{url}?cursor={start + PAGE}" if more else None,
            "results": [self.shape.prediction(task) for task in page],
        }
        return json_response(dumps(answer))

    async def get(self, request: web.Request) -> web.StreamResponse:
        task = self.core.task(request.match_info["id"])
        self.core.result_read(task)
        return json_response(task.body)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        task = self.core.task(request.match_info["id"])
        self.core.cancel(task)
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
        cancel_after = None
        if "Cancel-After" in request.headers:
            text = request.headers["Cancel-After"]
            cancel_after = parse_duration(text)
            if cancel_after is None:
                message = f"Cancel-After must be a duration like 5m, not {text!r}"
                raise self.vendor.reply(400, message)
        task = self.core.create_task(
            model,
            version,
            input,
            webhook_url=webhook,
            webhook_events=subscribed,
            cancel_after=cancel_after,
            origin=self.vendor.identify(request, webhook),
        )
        wait = _prefer_wait(request.headers.get("Prefer"))
        if wait:
            await self.core.wait(task, wait)
            if task.fate.lost_answer is None:
                self.core.result_read(task)
        return await self.vendor.answer_created(request, task, task.body, 201)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await self.vendor.json_body(request)
        if not isinstance(body, dict):
            raise self.vendor.reply(400, "The request body must be a JSON object")
        return body


def _int(text: str | None, default: int) -> int:
    try:
        return max(int(text or default), 0)
    except ValueError:
        return default


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
