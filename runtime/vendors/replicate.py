"""The replicate-shaped adapter, written from replicate's HTTP API reference and the
official ``replicate`` Python client (``replicate/prediction.py``, ``helpers.py``).

- A model is ``owner/name`` (``POST /v1/models/{owner}/{name}/predictions``),
  ``owner/name:version`` or a bare version id (``POST /v1/predictions`` with
  ``version``). ``Authorization: Bearer <token>``.
- Statuses ("Prediction lifecycle"): ``starting`` (queued; a cold boot keeps it there for
  minutes) -> PENDING, ``processing`` -> RUNNING, ``succeeded``, ``failed``, ``canceled``
  (by a user, or its ``Cancel-After`` deadline passed while it ran: billed) and
  ``aborted`` (the deadline passed before it started: not billed) -> FAILED, transient.
- Every prediction carries ``Cancel-After`` (the submit's ``cancel_after``, else the
  vendor's ``task_lifetime``): replicate ends it past that, whoever else forgot it.
- ``output`` is a URL string, a list of URLs, ``data:`` URIs (the sync API), a JSON
  object, or a list of strings to concatenate (language models): every one of them is
  an output (:func:`runtime.vendors.outputs.find_outputs`).
- A failed prediction is permanent (the job's) only when its error carries replicate's
  content-rejection code ``E005`` ("... flagged as sensitive ... (E005)"); every other
  failure (``... please retry (code: PA)``, out of memory, ...) is transient.
- Webhooks post the whole prediction (input and logs: often over 64 KiB) and are signed
  with Standard Webhooks (``runtime.webhooks.verify``); ``webhook-id`` deduplicates.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from runtime.config import VendorConfig
from runtime.errors import ConfigError
from runtime.vendors.base import TaskState, TaskStatus, WebhookEvent
from runtime.vendors.http import (
    ATTEMPT_HEADER,
    CANCEL_NOOP,
    JOB_ID_HEADER,
    MAX_OUTPUT_BYTES,
    WEBHOOK_BODY_ERRORS,
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
from runtime.webhooks import ID_HEADER, secret_key, verify

CANCEL_AFTER_HEADER = "Cancel-After"  # replicate: the prediction's own deadline
PERMANENT = re.compile(r"\bE005\b")  # "flagged as sensitive": content rejected


class ReplicateClient(HttpClient):
    """The replicate-shaped API: predictions, ``Authorization: Bearer``."""

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
        super().__init__(config, api_key, max_output_bytes=max_output_bytes, clock=clock)
        try:
            secret_key(webhook_secret)
        except ValueError as exc:
            raise ConfigError("environment", config.webhook_secret_env or "", str(exc)) from None
        self._webhook_secret = webhook_secret

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
        body: dict[str, Any] = {"input": input}
        name, colon, version = model.partition(":")
        if colon:
            segments(self._name, name, 2, 2)
            segments(self._name, version, 1, 1)
            path, body["version"] = "/v1/predictions", model
        elif "/" in model:
            owner, model_name = segments(self._name, model, 2, 2)
            path = f"/v1/models/{owner}/{model_name}/predictions"
        else:
            segments(self._name, model, 1, 1)
            path, body["version"] = "/v1/predictions", model
        if webhook_url is not None:
            body["webhook"] = webhook_url
            body["webhook_events_filter"] = ["completed"]
        lifetime = self.config.task_lifetime if cancel_after is None else cancel_after
        headers = {
            JOB_ID_HEADER: job_id,
            ATTEMPT_HEADER: str(attempt),
            # The vendor ends the prediction itself past this, so even a task jobline lost
            # track of (its answer lost, or jobline stopped) ends and frees its slot.
            CANCEL_AFTER_HEADER: f"{max(1, math.ceil(lifetime))}s",
        }
        return await self.call(
            "submit",
            "POST",
            self.url(path),
            lambda reply: string_field(json_object(reply.json()), "id"),
            trace_id=trace_id,
            headers=headers,
            json_body=body,
        )

    async def status(self, model: str, task_id: str, *, trace_id: str) -> TaskStatus:
        path = f"/v1/predictions/{task_path(self._name, task_id)}"

        def read(reply: Reply) -> TaskStatus:
            if reply.status == 404:
                return not_found(task_id)
            return prediction_status(json_object(reply.json()))

        return await self.call(
            "status", "GET", self.url(path), read, trace_id=trace_id, accept=frozenset({404})
        )

    async def cancel(self, model: str, task_id: str, *, trace_id: str | None = None) -> None:
        path = f"/v1/predictions/{task_path(self._name, task_id)}/cancel"
        await self.call(
            "cancel", "POST", self.url(path), ignore, trace_id=trace_id, accept=CANCEL_NOOP
        )

    async def parse_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float, tolerance: float
    ) -> WebhookEvent:
        verify(self._webhook_secret, headers, body, now, tolerance)
        webhook_id = next(value for key, value in headers.items() if key.lower() == ID_HEADER)
        try:
            data = json_object(json.loads(body))
            task_id, status = string_field(data, "id"), prediction_status(data)
        except WEBHOOK_BODY_ERRORS as exc:
            raise unreadable_webhook(self._name, exc) from None
        return WebhookEvent(self._name, webhook_id, task_id, status)


def prediction_status(prediction: dict[str, Any]) -> TaskStatus:
    """A prediction (as ``GET /v1/predictions/{id}`` or a webhook gives it) as a status."""
    status = prediction.get("status")
    if status == "starting":
        return TaskStatus(TaskState.PENDING)
    if status == "processing":
        return TaskStatus(TaskState.RUNNING)
    if status == "succeeded":
        output = prediction.get("output")
        outputs = find_outputs(output, "output") if output is not None else ()
        return TaskStatus(TaskState.SUCCEEDED, outputs=outputs)
    if status == "canceled":
        return TaskStatus(TaskState.CANCELED)
    if status in ("failed", "aborted"):
        error = prediction.get("error")
        if error:
            message = message_of(error)
        elif status == "aborted":
            message = "prediction aborted: its deadline passed before it started (not billed)"
        else:
            message = "prediction failed"
        return TaskStatus(
            TaskState.FAILED, error=message, permanent=bool(PERMANENT.search(message))
        )
    raise Malformed(f"unknown prediction status {status!r}")
