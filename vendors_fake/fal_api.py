"""The fal-shaped queue API.

Routes (``model_id`` may contain slashes, e.g. ``fal-ai/flux/dev``)::

    POST /{model_id}[?fal_webhook=<url>]      body: the input -> {request_id, status_url,
                                              response_url, cancel_url, status, queue_position}
    GET  /{app}/requests/{id}/status          202 {"status": "IN_QUEUE", "queue_position": n}
                                              202 {"status": "IN_PROGRESS", "logs": null}
                                              200 {"status": "COMPLETED", "logs": null, "metrics",
                                                   "error"?, "error_type"?}
    GET  /{app}/requests/{id}                 the result: {"images": [{"url", "content_type":
                                              "image/png", "width", "height"}], "seed", "timings",
                                              "has_nsfw_concepts", "prompt"}
    PUT  /{app}/requests/{id}/cancel          202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED

Like fal, the URLs returned by a submit name the app (the model id's first two segments:
``fal-ai/flux/dev`` -> ``fal-ai/flux/requests/{id}``); the fake accepts any prefix before
``/requests/{id}``, so the full model id works too. ``Authorization: Key <key>``.

A failed request is ``COMPLETED`` with ``error`` and ``error_type``:
``content_policy_violation`` (permanent; its result answers 422) or
``internal_server_error`` (transient; its result answers 500). A canceled one is
``COMPLETED`` with ``error_type`` ``request_canceled`` and its result answers 400.

Webhooks go to ``fal_webhook`` when the request ends, with body ``{request_id,
gateway_request_id, status: "OK" | "ERROR", payload, error}``. Real fal signs webhooks
with ED25519 (``X-Fal-Webhook-Signature`` and a public JWKS); **this fake signs them
with the Standard Webhooks HMAC headers instead** (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``, the vendor's ``whsec_`` secret), so jobline verifies both shapes
one way. Errors are ``{"detail": message}``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from vendors_fake.png import SIDE
from vendors_fake.server import FakeVendor, Handler, RouteGroup, dumps, json_response
from vendors_fake.tasks import Outcome, Phase, Task

EVENTS = frozenset({"completed"})


class FalApi:
    name = "fal"
    emitted_events = EVENTS
    progress_event: str | None = None  # fal sends no webhook before the end

    def __init__(self, vendor: FakeVendor) -> None:
        self.vendor = vendor

    def routes(self) -> list[tuple[str, str, str, RouteGroup, Handler]]:
        requests = "/{app:.+}/requests/{id}"
        return [
            ("GET", requests + "/status", "requests.status", "status", self.status),
            ("PUT", requests + "/cancel", "requests.cancel", "cancel", self.cancel),
            ("GET", requests, "requests.result", "status", self.result),
            ("POST", "/{model_id:.+}", "submit", "submit", self.submit),
        ]

    # --- handlers ------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.StreamResponse:
        try:
            input = await request.json()
        except ValueError:
            raise self.vendor.reply(400, "The request body is not valid JSON") from None
        if not isinstance(input, dict):
            raise self.vendor.reply(422, "The request body must be a JSON object")
        model = request.match_info["model_id"]
        webhook = request.query.get("fal_webhook")
        task = self.vendor.new_task(request, model, "", input, webhook, EVENTS)
        urls = self._urls(task)
        answer = {
            "status": "IN_QUEUE",
            "request_id": task.id,
            **urls,
            "queue_position": self.vendor.queue_position(task),
        }
        return json_response(dumps(answer))

    async def status(self, request: web.Request) -> web.StreamResponse:
        task = self.vendor.task(request.match_info["id"])
        if task.phase is Phase.QUEUED:
            position = self.vendor.queue_position(task)
            return json_response(
                dumps({"status": "IN_QUEUE", "queue_position": position, **self._urls(task)}),
                202,
            )
        return json_response(task.body, 200 if task.phase.ended else 202)

    async def result(self, request: web.Request) -> web.StreamResponse:
        task = self.vendor.task(request.match_info["id"])
        if not task.phase.ended:
            raise self.vendor.reply(400, "Request is still in progress")
        status, payload = self._result(task)
        return json_response(dumps(payload), status)

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        task = self.vendor.task(request.match_info["id"])
        if self.vendor.cancel(task):
            return json_response(dumps({"status": "CANCELLATION_REQUESTED"}), 202)
        return json_response(dumps({"status": "ALREADY_COMPLETED"}), 400)

    # --- JSON ----------------------------------------------------------------------------

    def render(self, task: Task) -> bytes:
        if task.phase is Phase.QUEUED:
            return b""  # computed per read: the queue position changes
        body: dict[str, Any] = {
            "status": "COMPLETED" if task.phase.ended else "IN_PROGRESS",
            "request_id": task.id,
            **self._urls(task),
            "logs": None,
        }
        if task.phase.ended:
            body["metrics"] = {"inference_time": round(task.run_time, 6)}
            error_type = _error_type(task)
            if error_type is not None:
                body["error"] = _error_message(task)
                body["error_type"] = error_type
        return dumps(body)

    def webhook_body(self, task: Task, event: str) -> bytes:
        status, payload = self._result(task)
        ok = status == 200
        return dumps(
            {
                "request_id": task.id,
                "gateway_request_id": task.id,
                "status": "OK" if ok else "ERROR",
                "payload": payload,
                "error": None if ok else f"Invalid status code: {status}",
            }
        )

    def error_body(self, status: int, message: str) -> bytes:
        return dumps({"detail": message})

    def _result(self, task: Task) -> tuple[int, dict[str, Any]]:
        """The status code and JSON of a finished request's result."""
        if task.phase is Phase.SUCCEEDED:
            return 200, {
                "images": [
                    {
                        "url": self.vendor.output_url(task),
                        "width": SIDE,
                        "height": SIDE,
                        "content_type": "image/png",
                    }
                ],
                "timings": {"inference": round(task.run_time, 6)},
                "seed": task.index,
                "has_nsfw_concepts": [False],
                "prompt": task.input.get("prompt"),
            }
        if task.phase is Phase.CANCELED:
            return 400, {"detail": "Request was canceled"}
        if task.outcome is Outcome.REJECT:
            return 422, {
                "detail": [
                    {
                        "loc": ["body", "prompt"],
                        "msg": _error_message(task),
                        "type": "content_policy_violation",
                    }
                ]
            }
        return 500, {"detail": _error_message(task)}

    def _urls(self, task: Task) -> dict[str, str]:
        app = "/".join(task.model.split("/")[:2])
        base = f"{self.vendor.url}/{app}/requests/{task.id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }


def _error_type(task: Task) -> str | None:
    if task.phase is Phase.CANCELED:
        return "request_canceled"
    if task.phase is Phase.FAILED:
        return (
            "content_policy_violation"
            if task.outcome is Outcome.REJECT
            else ("internal_server_error")
        )
    return None


def _error_message(task: Task) -> str:
    return task.error or "Request was canceled"
