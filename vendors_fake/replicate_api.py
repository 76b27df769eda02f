"""The replicate-shaped routes (enough of them for the official ``replicate`` client),
written once for both hosts (:mod:`vendors_fake.calls`).

Routes::

    POST /v1/predictions                        {"version": ..., "input": {...},
                                                 "webhook": url, "webhook_events_filter": [...]}
    POST /v1/models/{owner}/{name}/predictions  {"input": {...}, "webhook": ...}
    POST /v1/deployments/{owner}/{name}/predictions
    GET  /v1/predictions                        the account's predictions, newest first
                                                (``{"next", "previous", "results"}``, 100 a page;
                                                without logs, as replicate's own example)
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
from collections import OrderedDict
from itertools import islice
from typing import Any

from vendors_fake.calls import Answer, Call, Route, created, identify, json_answer
from vendors_fake.core import Refused, VendorCore
from vendors_fake.replicate_shape import EVENTS, ReplicateShape, dumps, parse_duration
from vendors_fake.tasks import Phase, Task

MAX_WAIT = 60.0
PAGE = 100
LISTED_KEPT = 4 * PAGE  # list entries kept rendered: the newest pages are the ones read


class ReplicateRoutes:
    def __init__(self, core: VendorCore) -> None:
        self.core = core
        assert isinstance(core.shape, ReplicateShape)
        self.shape = core.shape
        # task id -> (the task, its phase, its list entry): a phase change renders it again
        self._listed: OrderedDict[str, tuple[Task, Phase, bytes]] = OrderedDict()

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/predictions", "predictions.create", "submit", self.create),
            Route(
                "POST",
                "/v1/models/{owner}/{name}/predictions",
                "models.predictions.create",
                "submit",
                self.create_for_model,
            ),
            Route(
                "POST",
                "/v1/deployments/{owner}/{name}/predictions",
                "deployments.predictions.create",
                "submit",
                self.create_for_model,
            ),
            Route("GET", "/v1/predictions", "predictions.list", "status", self.list),
            Route("GET", "/v1/predictions/{id}", "predictions.get", "status", self.get),
            Route(
                "POST", "/v1/predictions/{id}/cancel", "predictions.cancel", "cancel", self.cancel
            ),
        ]

    async def create(self, call: Call) -> Answer:
        body = self._body(call)
        version = body.get("version")
        if not isinstance(version, str) or not version:
            raise Refused(422, "version is required")
        model, _, version_id = version.rpartition(":")
        if not model:
            model = "fake/model"  # a bare version id names no model
        return await self._create(call, body, model, version_id)

    async def create_for_model(self, call: Call) -> Answer:
        body = self._body(call)
        model = f"{call.params['owner']}/{call.params['name']}"
        version_id = hashlib.sha256(model.encode()).hexdigest()
        return await self._create(call, body, model, version_id)

    async def list(self, call: Call) -> Answer:
        start = max(_int(call.query.get("cursor"), 0), 0)
        newest_first = reversed(self.core.tasks.values())
        page = list(islice(newest_first, start, start + PAGE + 1))
        more = len(page) > PAGE
        url = f"{self.core.base_url}/v1/predictions"
        link = f"{url}?cursor={start + PAGE}" if more else None
        parts = [b'{"previous":null,"next":', dumps(link), b',"results":[']
        for task in page[:PAGE]:
            parts += (self._entry(task), b",")
        if len(parts) > 3:
            parts.pop()  # the comma after the last entry
        parts.append(b"]}")
        return json_answer(b"".join(parts))  # one copy of a page (megabytes with data URIs)

    def _entry(self, task: Task) -> bytes:
        kept = self._listed.get(task.id)
        if kept is not None and kept[0] is task and kept[1] is task.phase:
            return kept[2]  # (the same id after a reset is another task)
        entry = self.shape.listed(task)
        self._listed[task.id] = (task, task.phase, entry)
        self._listed.move_to_end(task.id)
        if len(self._listed) > LISTED_KEPT:
            self._listed.popitem(last=False)
        return entry

    async def get(self, call: Call) -> Answer:
        task = self.core.task(call.params["id"])
        self.core.result_read(task)
        return json_answer(task.body)

    async def cancel(self, call: Call) -> Answer:
        task = self.core.task(call.params["id"])
        self.core.cancel(task)
        return json_answer(task.body)

    async def _create(self, call: Call, body: dict[str, Any], model: str, version: str) -> Answer:
        input = body.get("input")
        if not isinstance(input, dict):
            raise Refused(422, "input is required and must be an object")
        webhook = body.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            raise Refused(422, "webhook must be a URL")
        events = body.get("webhook_events_filter")
        if events is None:
            subscribed = EVENTS
        elif isinstance(events, list) and set(events) <= EVENTS:
            subscribed = frozenset(events)
        else:
            raise Refused(422, f"webhook_events_filter must be a subset of {EVENTS}")
        cancel_after = None
        if "Cancel-After" in call.headers:
            text = call.headers["Cancel-After"]
            cancel_after = parse_duration(text)
            if cancel_after is None:
                raise Refused(400, f"Cancel-After must be a duration like 5m, not {text!r}")
        task = self.core.create_task(
            model,
            version,
            input,
            webhook_url=webhook,
            webhook_events=subscribed,
            cancel_after=cancel_after,
            origin=identify(call, webhook),
        )
        wait = _prefer_wait(call.headers.get("Prefer"))
        if wait:
            await self.core.wait(task, wait)
            if task.fate.lost_answer is None:
                self.core.result_read(task)
        return created(task, task.body, 201)

    def _body(self, call: Call) -> dict[str, Any]:
        body = call.json()
        if not isinstance(body, dict):
            raise Refused(400, "The request body must be a JSON object")
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
