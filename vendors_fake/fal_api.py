"""The fal-shaped queue API over HTTP (enough of it for the official ``fal-client``).

Routes (an endpoint id has two segments and an optional path, ``fal-ai/flux/dev``, or
three under ``workflows/`` and ``comfy/``)::

    POST /{endpoint_id}[?fal_webhook=<url>]   body: the input -> {request_id, status_url,
                                              response_url, cancel_url, status, queue_position}
    GET  /{app_id}/requests/{id}/status       202 IN_QUEUE (queue_position) | IN_PROGRESS,
                                              200 COMPLETED (metrics; error, error_type)
    GET  /{app_id}/requests/{id}              the result (see fal_shape), or its error
    PUT  /{app_id}/requests/{id}/cancel       202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED
    GET  /.well-known/jwks.json               the webhook keys (served by the host)

``app_id`` is the app only (``fal-ai/flux``, ``workflows/acme/flow``), as in the URLs a
submit returns: a request asked for under another prefix (the endpoint's path added, a
namespace dropped) is not found (404), as fal's documentation warns. ``Authorization:
Key <key>``. An input with ``"sync_mode": true`` gets its files back as data URIs.
Webhooks go to ``fal_webhook`` when the request ends, signed with ED25519.
"""

from __future__ import annotations

from aiohttp import web

from vendors_fake.core import RouteGroup
from vendors_fake.fal_shape import NAMESPACES, FalShape, app_id
from vendors_fake.replicate_shape import dumps
from vendors_fake.server import FakeVendor, Handler, json_response
from vendors_fake.tasks import Task

EVENTS = frozenset({"completed"})


class FalRoutes:
    def __init__(self, vendor: FakeVendor) -> None:
        self.vendor = vendor
        self.core = vendor.core
        assert isinstance(vendor.core.shape, FalShape)
        self.shape = vendor.core.shape

    def routes(self) -> list[tuple[str, str, str, RouteGroup, Handler]]:
        requests = "/{app:.+}/requests/{id}"
        return [
            ("GET", requests + "/status", "requests.status", "status", self.status),
            ("PUT", requests + "/cancel", "requests.cancel", "cancel", self.cancel),
            ("GET", requests, "requests.result", "status", self.result),
            ("POST", "/{model_id:.+}", "submit", "submit", self.submit),
        ]

    async def submit(self, request: web.Request) -> web.StreamResponse:
        input = await self.vendor.json_body(request)
        if not isinstance(input, dict):
            raise self.vendor.reply(422, "The request body must be a JSON object")
        model = request.match_info["model_id"]
        parts = model.split("/")
        if len(parts) < (3 if parts[0] in NAMESPACES else 2) or not all(parts):
            raise self.vendor.reply(404, f"Application '{model}' not found")
        webhook = request.query.get("fal_webhook")
        task = self.core.create_task(
            model,
            "",
            input,
            webhook_url=webhook,
            webhook_events=EVENTS,
            data_uri=input.get("sync_mode") is True,
            origin=self.vendor.identify(request, webhook),
        )
        body = self.shape.submitted(task)
        return await self.vendor.answer_created(request, task, body, 200)

    async def status(self, request: web.Request) -> web.StreamResponse:
        status, body = self.shape.status(self._task(request))
        return json_response(body, status)

    async def result(self, request: web.Request) -> web.StreamResponse:
        task = self._task(request)
        if not task.phase.ended:
            raise self.vendor.reply(400, "Request is still in progress")
        status, payload = self.shape.result(task)
        if status == 200:
            self.core.result_read(task)
        return json_response(dumps(payload), status)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        task = self._task(request)
        if self.core.cancel(task):
            return json_response(dumps({"status": "CANCELLATION_REQUESTED"}), 202)
        return json_response(dumps({"status": "ALREADY_COMPLETED"}), 400)

    def _task(self, request: web.Request) -> Task:
        task = self.core.task(request.match_info["id"])
        if request.match_info["app"] != app_id(task.model):
            raise self.vendor.reply(404, f"Request {task.id} not found")
        return task
