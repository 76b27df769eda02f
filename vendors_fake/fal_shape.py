"""The fal shape without HTTP: queue statuses, results, webhooks, errors as JSON.

Written from fal's documentation ("Queue", the Inference API reference, "Webhooks") and
the official ``fal-client`` (``AppId.from_endpoint_id``, ``_BaseRequestHandle``):

- an endpoint id names an owner, an app and an optional path (``fal-ai/flux/dev``); apps
  under the ``workflows/`` and ``comfy/`` namespaces have three segments before the path
  (``workflows/acme/my-flow``). A submit goes to the whole endpoint id; its status,
  result and cancel URLs name only the app (:func:`app_id`), and the submit answer gives
  them as ``status_url``, ``response_url`` and ``cancel_url``;
- status ``IN_QUEUE`` (with ``queue_position``), ``IN_PROGRESS``, ``COMPLETED`` (with
  ``error`` and ``error_type`` when it failed); 202 until completed, then 200;
- the result, at ``response_url``: files as ``{url, content_type, file_name, file_size}``
  objects under model-specific keys (``images`` lists, ``video``, ``audio``, others), or
  a plain JSON result; ``url`` is a ``data:`` URI in ``sync_mode``;
- webhook body ``{request_id, gateway_request_id, status: OK|ERROR, payload, error}``;
  when fal cannot serialize the result, ``payload`` is null and ``payload_error`` says
  why (the result is still at ``response_url``);
- errors are ``{"detail": ...}``; an account locked for an exhausted balance answers
  403 "User is locked. Reason: Exhausted balance. ..." (fal-ai/fal issues #1112, #1147).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vendors_fake.outputs import inline_result
from vendors_fake.replicate_shape import dumps
from vendors_fake.tasks import Outcome, Phase, Task

if TYPE_CHECKING:
    from vendors_fake.core import VendorCore

NAMESPACES = ("workflows", "comfy")
DEFAULT_KEYS = {"image": "images", "video": "video", "audio": "audio"}
PAYLOAD_ERROR = (
    "Failed to serialize the response payload as JSON: the result is available at the "
    "request's response_url"
)
REFUSALS = {
    401: "Authentication is required to access this application.",
    402: "Payment required: add a payment method at fal.ai/dashboard/billing.",
    403: (
        "User is locked. Reason: Exhausted balance. "
        "Top up your balance at fal.ai/dashboard/billing."
    ),
    404: "Application '{model}' not found",
}


def app_id(endpoint_id: str) -> str:
    """The app part of an endpoint id: ``owner/alias``, or ``namespace/owner/alias``."""
    parts = endpoint_id.split("/")
    n = 3 if parts[0] in NAMESPACES else 2
    return "/".join(parts[:n])


class FalShape:
    name = "fal"
    emitted_events = frozenset({"completed"})
    progress_event: str | None = None  # fal sends no webhook before the end
    final_event = "completed"

    def __init__(self, core: VendorCore) -> None:
        self.core = core

    def new_id(self, bits: int) -> str:
        h = f"{bits:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def urls(self, task: Task) -> dict[str, str]:
        base = f"{self.core.base_url}/{app_id(task.model)}/requests/{task.id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def submitted(self, task: Task) -> bytes:
        return dumps(
            {
                "status": "IN_QUEUE",
                "request_id": task.id,
                "gateway_request_id": task.id,
                **self.urls(task),
                "queue_position": self.core.queue_position(task),
            }
        )

    def status(self, task: Task) -> tuple[int, bytes]:
        """(HTTP status, body) of the status endpoint."""
        if task.phase is Phase.QUEUED:
            position = self.core.queue_position(task)
            body = {"status": "IN_QUEUE", "request_id": task.id, "queue_position": position}
            return 202, dumps({**body, **self.urls(task)})
        return (200 if task.phase.ended else 202), task.body

    def render(self, task: Task) -> bytes:
        if task.phase is Phase.QUEUED:
            return b""  # computed per read: the queue position changes
        body: dict[str, Any] = {
            "status": "COMPLETED" if task.phase.ended else "IN_PROGRESS",
            "request_id": task.id,
            **self.urls(task),
            "logs": None,
        }
        if task.phase.ended:
            body["metrics"] = {"inference_time": round(task.fate.run_time, 6)}
            error_type = _error_type(task)
            if error_type is not None:
                body["error"] = _error_message(task)
                body["error_type"] = error_type
        return dumps(body)

    def result(self, task: Task) -> tuple[int, Any]:
        """The status code and JSON of a finished request's result."""
        if task.phase is Phase.SUCCEEDED:
            return 200, self._payload(task)
        if task.phase in (Phase.CANCELED, Phase.ABORTED):
            return 400, {"detail": "Request was canceled"}
        if task.outcome is Outcome.REJECT:
            detail = [
                {
                    "loc": ["body", "prompt"],
                    "msg": _error_message(task),
                    "type": "content_policy_violation",
                }
            ]
            return 422, {"detail": detail}
        return 500, {"detail": _error_message(task)}

    def _payload(self, task: Task) -> Any:
        spec = task.spec
        if spec.kind == "json":
            return inline_result(task.input, "json")
        if spec.kind == "text":
            return {"output": inline_result(task.input, "text"), "partial": False}
        files = [
            {
                "url": self.core.file_ref(task, file),
                "content_type": file.content_type,
                "file_name": file.name,
                "file_size": file.size,
                **({"width": 8, "height": 8} if file.kind == "image" else {}),
            }
            for file in task.files.values()
        ]
        key = spec.key or DEFAULT_KEYS[spec.kind]
        payload: dict[str, Any] = {key: files if spec.kind == "image" else files[0]}
        if spec.kind == "image":
            payload["has_nsfw_concepts"] = [False] * len(files)
            payload["prompt"] = task.input.get("prompt")
        payload["seed"] = task.index
        payload["timings"] = {"inference": round(task.fate.run_time, 6)}
        return payload

    def webhook_body(self, task: Task, event: str) -> bytes:
        status, payload = self.result(task)
        ok = status == 200
        body: dict[str, Any] = {
            "request_id": task.id,
            "gateway_request_id": task.id,
            "status": "OK" if ok else "ERROR",
            "payload": payload,
            "error": None if ok else f"Invalid status code: {status}",
        }
        if ok and self.core.payload_error(task):
            body["payload"] = None
            body["payload_error"] = PAYLOAD_ERROR
        return dumps(body)

    def error_body(self, status: int, message: str) -> bytes:
        return dumps({"detail": message})

    def refusal_message(self, status: int, model: str) -> str:
        return REFUSALS[status].format(model=model)


def _error_type(task: Task) -> str | None:
    if task.phase in (Phase.CANCELED, Phase.ABORTED):
        return "request_canceled"
    if task.phase is Phase.FAILED:
        return (
            "content_policy_violation"
            if task.outcome is Outcome.REJECT
            else "internal_server_error"
        )
    return None


def _error_message(task: Task) -> str:
    return task.error or "Request was canceled"
