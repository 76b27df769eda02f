"""The fal-shaped queue API (enough of it for the official ``fal-client``), written once
for both hosts (:mod:`vendors_fake.calls`).

Routes (an endpoint id has two segments and an optional path, ``fal-ai/flux/dev``, or
three under ``workflows/`` and ``comfy/``)::

    POST /{endpoint_id}[?fal_webhook=<url>]   body: the input -> {request_id, status_url,
                                              response_url, cancel_url, status, queue_position}
    GET  /{app_id}/requests/{id}/status       202 IN_QUEUE (queue_position) | IN_PROGRESS,
                                              200 COMPLETED (metrics; error, error_type)
    GET  /{app_id}/requests/{id}              the result (see fal_shape), or its error
    PUT  /{app_id}/requests/{id}/cancel       202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED
    GET  /.well-known/jwks.json               the webhook keys (no key needed)

``app_id`` is the app only (``fal-ai/flux``, ``workflows/acme/flow``), as in the URLs a
submit returns: a request asked for under another prefix (the endpoint's path added, a
namespace dropped) is not found (404), as fal's documentation warns. ``Authorization:
Key <key>``. An input with ``"sync_mode": true`` gets its files back as data URIs.
Webhooks go to ``fal_webhook`` when the request ends, signed with ED25519.
"""

from __future__ import annotations

from vendors_fake.calls import Answer, Call, Route, created, identify, json_answer
from vendors_fake.core import Refused, VendorCore
from vendors_fake.fal_shape import NAMESPACES, FalShape, app_id
from vendors_fake.replicate_shape import dumps
from vendors_fake.tasks import Task

EVENTS = frozenset({"completed"})
JWKS_PATH = "/.well-known/jwks.json"


class FalRoutes:
    def __init__(self, core: VendorCore) -> None:
        self.core = core
        assert isinstance(core.shape, FalShape)
        self.shape = core.shape

    def routes(self) -> list[Route]:
        requests = "/{app:.+}/requests/{id}"
        return [
            Route("GET", JWKS_PATH, "jwks", "jwks", self.jwks, auth=False),
            Route("GET", requests + "/status", "requests.status", "status", self.status),
            Route("PUT", requests + "/cancel", "requests.cancel", "cancel", self.cancel),
            Route("GET", requests, "requests.result", "status", self.result),
            Route("POST", "/{model_id:.+}", "submit", "submit", self.submit),
        ]

    async def submit(self, call: Call) -> Answer:
        input = call.json()
        if not isinstance(input, dict):
            raise Refused(422, "The request body must be a JSON object")
        model = call.params["model_id"]
        parts = model.split("/")
        if len(parts) < (3 if parts[0] in NAMESPACES else 2) or not all(parts):
            raise Refused(404, f"Application '{model}' not found")
        webhook = call.query.get("fal_webhook")
        task = self.core.create_task(
            model,
            "",
            input,
            webhook_url=webhook,
            webhook_events=EVENTS,
            data_uri=input.get("sync_mode") is True,
            origin=identify(call, webhook),
        )
        return created(task, self.shape.submitted(task), 200)

    async def status(self, call: Call) -> Answer:
        status, body = self.shape.status(self._task(call))
        return json_answer(body, status)

    async def result(self, call: Call) -> Answer:
        task = self._task(call)
        if not task.phase.ended:
            raise Refused(400, "Request is still in progress")
        status, payload = self.shape.result(task)
        if status == 200:
            self.core.result_read(task)
        return json_answer(dumps(payload), status)

    async def cancel(self, call: Call) -> Answer:
        task = self._task(call)
        if self.core.cancel(task):
            return json_answer(dumps({"status": "CANCELLATION_REQUESTED"}), 202)
        return json_answer(dumps({"status": "ALREADY_COMPLETED"}), 400)

    async def jwks(self, call: Call) -> Answer:
        return json_answer(dumps(self.core.fal_signer.jwks()))

    def _task(self, call: Call) -> Task:
        task = self.core.task(call.params["id"])
        if call.params["app"] != app_id(task.model):
            raise Refused(404, f"Request {task.id} not found")
        return task
