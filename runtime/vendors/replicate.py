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
- A submit whose answer was lost is looked up in ``GET /v1/predictions`` (the account's
  predictions, newest first, ``{next, previous, results}``; the client's
  ``predictions.list``): each prediction carries the ``webhook`` URL it was created
  with, which names the job and attempt (:meth:`ReplicateClient.find_task`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from yarl import URL

from runtime import strict_json
from runtime.config import VendorConfig
from runtime.errors import ConfigError, VendorUnavailable
from runtime.vendors.base import FoundTask, TaskState, TaskStatus, WebhookEvent
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
from runtime.webhooks import ATTEMPT_PARAM, ID_HEADER, JOB_PARAM, secret_key, verify

CANCEL_AFTER_HEADER = "Cancel-After"  # replicate: the prediction's own deadline
PERMANENT = re.compile(r"\bE005\b")  # "flagged as sensitive": content rejected
MAX_LIST_PAGES = 20  # pages of GET /v1/predictions read to find one submit in doubt
# A page holds 100 predictions, each with its input and output: inputs sent as data URIs
# (an image to edit) and outputs given as data URIs make a page far larger than one
# answer (``MAX_API_BYTES``); at that limit a submit in doubt could never be looked up.
MAX_LIST_PAGE_BYTES = 64 * 1024 * 1024
LIST_CLOCK_SKEW = 60.0  # seconds: replicate's created_at against our clock


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

    @property
    def can_find_tasks(self) -> bool:
        return True

    async def find_task(
        self, model: str, *, job_id: str, attempt: int, created_after: float, trace_id: str
    ) -> FoundTask | None:
        """See ``VendorClient.find_task``: pages of ``GET /v1/predictions``, newest first,
        until a prediction created before ``created_after`` (less a clock skew) ends the
        search. ``VendorUnavailable`` if ``MAX_LIST_PAGES`` pages did not get that far."""
        url: URL | None = self.url("/v1/predictions")
        horizon = created_after - LIST_CLOCK_SKEW
        for _ in range(MAX_LIST_PAGES):
            if url is None:
                return None  # the whole list was read
            page = await self.call(
                "status", "GET", url, _read_page, trace_id=trace_id, limit=MAX_LIST_PAGE_BYTES
            )
            for prediction in page.get("results") or ():
                if not isinstance(prediction, dict):
                    continue
                if _names(prediction.get("webhook"), job_id, attempt):
                    task_id = string_field(prediction, "id")
                    return FoundTask(task_id, prediction_status(prediction))
                created = _created_at(prediction)
                if created is not None and created < horizon:
                    return None  # older than the submit: it created nothing
            url = self._next_page(page.get("next"))
        raise VendorUnavailable(self._name, f"no answer in {MAX_LIST_PAGES} pages of predictions")

    def _next_page(self, link: Any) -> URL | None:
        if not isinstance(link, str) or not link:
            return None
        url = URL(link)
        if not self._same_origin(url):  # the key goes nowhere else
            raise VendorUnavailable(self._name, f"a prediction page elsewhere: {link[:100]}")
        return url

    async def cancel(self, model: str, task_id: str, *, trace_id: str) -> None:
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
            data = json_object(strict_json.loads(body))
            task_id, status = string_field(data, "id"), prediction_status(data)
        except WEBHOOK_BODY_ERRORS as exc:
            raise unreadable_webhook(self._name, exc) from None
        return WebhookEvent(self._name, webhook_id, task_id, status)


def _read_page(reply: Reply) -> dict[str, Any]:
    page = json_object(reply.json())
    if not isinstance(page.get("results", []), list):
        raise Malformed("a prediction page without a results list")
    return page


def _names(webhook: Any, job_id: str, attempt: int) -> bool:
    """Does a prediction's ``webhook`` URL name this job and attempt?"""
    if not isinstance(webhook, str) or JOB_PARAM not in webhook:
        return False
    if job_id not in webhook and "%" not in webhook and "+" not in webhook:
        return False  # unescaped, a query names only what its text holds: another job's
    query = URL(webhook).query
    return query.get(JOB_PARAM) == job_id and query.get(ATTEMPT_PARAM) == str(attempt)


def _created_at(prediction: dict[str, Any]) -> float | None:
    text = prediction.get("created_at")
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


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
