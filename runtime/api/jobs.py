"""Jobs: submit (the hold and the queue in one ledger transaction), read, list, fetch the
result and each output, cancel.

A job is durable once ``OpenJob`` returns; the dispatch to its processor is sent
afterwards, in the background, and may fail: a restarted processor or the sweeper picks
the job up from the ledger. The same holds for the cancel sent to the processor.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
from aiohttp import web

from runtime.api.bodies import (
    CURSOR_PATTERN,
    DEFAULT_PAGE,
    MAX_PAGE,
    REPLAYED_HEADER,
    SubmitJobBody,
)
from runtime.api.context import Api, job_fields, log
from runtime.api.errors import HttpRefusal, bad_request, echo, json_response
from runtime.api.params import int_param, only_params
from runtime.config import ModelConfig
from runtime.errors import (
    AccountThrottled,
    InputInvalid,
    ResultNotFound,
    SubmitRateLimited,
    TooManyJobsInFlight,
    UnknownModel,
)
from runtime.ledger import new_job_id
from runtime.models import Cancel, Job, OpenJob
from runtime.results_http import result_response
from runtime.states import JobStatus
from runtime.telemetry import TRACE_HEADER, new_trace_id

_CURSOR = re.compile(CURSOR_PATTERN)


def request_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 of the body's canonical JSON: the same request gives the same hash."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class JobRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api
        self._validators: dict[str, jsonschema.protocols.Validator] = {}
        for kind in ("held", "released"):  # exported at 0 before the first event
            api.ctx.metrics.credits.labels(kind)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/jobs", self.submit_job),
            web.get("/v1/jobs", self.list_jobs, allow_head=False),
            web.get("/v1/jobs/{id}", self.get_job, allow_head=False),
            web.get("/v1/jobs/{id}/result", self.job_result, allow_head=False),
            web.get("/v1/jobs/{id}/outputs/{n}", self.job_output, allow_head=False),
            web.post("/v1/jobs/{id}/cancel", self.cancel_job),
        ]

    async def submit_job(self, request: web.Request) -> web.Response:
        api = self.api
        account_id = await api.account(request)
        refusals = api.refusals
        idempotency_key = api.idempotency_key(request)
        if idempotency_key is None:  # a keyed retry goes to the ledger: it may replay its job
            refusals.check(account_id, api.ctx.clock.time())  # refused a moment ago
        body, raw = await api.json_body(request, SubmitJobBody)
        model = self._model(body.model)
        self._validate_input(model, body.input)
        ctx = api.ctx
        now = ctx.clock.time()
        trace_id = new_trace_id(ctx.rng)
        position = api.circuits.route_position(model.route)
        op = OpenJob(
            job_id="job_" + new_job_id(now, ctx.rng).replace("-", ""),
            account_id=account_id,
            model=model.name,
            input=body.input,
            price=model.price,
            trace_id=trace_id,
            vendor=model.route[position].vendor,
            route_position=position,
            deadline=now + ctx.config.job_deadline(model),
            idempotency_key=idempotency_key,
            # Only a key's reuse is checked against the body; without a key, no hash.
            request_hash=None if idempotency_key is None else request_hash(raw),
            max_in_flight=ctx.config.gateway.max_jobs_in_flight_per_account,
            submits_per_second=ctx.config.gateway.submits_per_second_per_account,
            submit_burst=ctx.config.gateway.submit_burst_per_account,
        )
        with api.tracer.root("submit", trace_id, model=model.name) as span:
            outcome = await api.execute(op)
            try:
                job: Job = outcome.unwrap()
            except (TooManyJobsInFlight, SubmitRateLimited, AccountThrottled) as exc:
                refusals.remember(account_id, exc, ctx.clock.time())
                raise
            span.set_attributes({"jobline.job_id": job.id, "jobline.replayed": not outcome.changed})
        headers = {"Location": f"/v1/jobs/{job.id}", TRACE_HEADER: job.trace_id}
        if outcome.changed:
            ctx.metrics.jobs_submitted.labels(job.model).inc()
            ctx.metrics.credits.labels("held").inc(job.cost)
            log.info("job opened", extra=job_fields(job))
            api.dispatch(job)
        else:
            headers[REPLAYED_HEADER] = "true"
        return json_response(job.to_api(), status=202, headers=headers)

    async def get_job(self, request: web.Request) -> web.Response:
        account_id = await self.api.account(request)
        job = await self.api.owned_job(request.match_info["id"], account_id)
        headers = {TRACE_HEADER: job.trace_id}
        body = self.api.ended.body(job)  # an ended job's body is rendered once
        if body is None:
            return json_response(job.to_api(), headers=headers)
        return web.Response(
            body=body, content_type="application/json", charset="utf-8", headers=headers
        )

    async def list_jobs(self, request: web.Request) -> web.Response:
        account_id = await self.api.account(request)
        query = only_params(request, "status", "limit", "cursor")
        status: JobStatus | None = None
        if "status" in query:
            try:
                status = JobStatus(query["status"])
            except ValueError:
                known = ", ".join(s.value for s in JobStatus)
                raise bad_request(f"status must be one of {known}") from None
        limit = int_param(query, "limit", DEFAULT_PAGE, MAX_PAGE)
        cursor = query.get("cursor")
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            raise bad_request("cursor must be the next_cursor of an earlier page")
        ledger = self.api.ctx.ledger
        async with self.api.bounded_read(account_id):
            page = await self.api.read(ledger.list_jobs(account_id, status, limit, cursor))
        return json_response(
            {"jobs": [job.to_api() for job in page.items], "next_cursor": page.next_cursor}
        )

    async def job_result(self, request: web.Request) -> web.StreamResponse:
        """The first output (``/outputs/0``)."""
        return await self._serve_output(request, 0)

    async def job_output(self, request: web.Request) -> web.StreamResponse:
        n = request.match_info["n"]
        if not (n.isascii() and n.isdigit() and len(n) <= 4 and n == str(int(n))):
            raise HttpRefusal(404, "output_not_found", f"no output {n[:20]!r}: an index is 0, 1, …")
        return await self._serve_output(request, int(n))

    async def _serve_output(self, request: web.Request, index: int) -> web.StreamResponse:
        account_id = await self.api.account(request)
        job = await self.api.owned_job(request.match_info["id"], account_id)
        outputs = job.stored_outputs()
        if job.status is not JobStatus.COMPLETED or not outputs:
            raise HttpRefusal(
                409, "job_not_completed", f"job {job.id} is {job.status.value}, not completed"
            )
        if index >= len(outputs):
            raise HttpRefusal(
                404, "output_not_found", f"job {job.id} has {len(outputs)} outputs, no {index}"
            )
        output = outputs[index]
        try:
            return await result_response(
                request,
                self.api.ctx.results,
                output.key,
                redirect=self.api.ctx.config.storage.serve_by_redirect,
                headers={TRACE_HEADER: job.trace_id},
                content_type=output.content_type,
            )
        except ResultNotFound:
            log.error("result missing from the store", extra=job_fields(job))
            raise

    async def cancel_job(self, request: web.Request) -> web.Response:
        api = self.api
        account_id = await api.account(request)
        job_id = request.match_info["id"]
        outcome = await api.execute(Cancel(job_id, account_id))
        job: Job = outcome.unwrap()
        if outcome.changed:
            api.ctx.metrics.jobs.labels(job.model, job.vendor, job.status.value).inc()
            api.ctx.metrics.credits.labels("released").inc(job.cost)
            log.info("job canceled", extra=job_fields(job))
            # Queued or processing: the processor drops it or cancels the vendor task.
            cancel = api.processor(job.vendor).cancels.call(job.id)
            api.in_background(cancel, "cancel_tasks", job)
        elif job.status is not JobStatus.CANCELED:
            raise HttpRefusal(409, "job_finished", f"job {job.id} is already {job.status.value}")
        return json_response(job.to_api(), headers={TRACE_HEADER: job.trace_id})

    def _model(self, name: str) -> ModelConfig:
        model = self.api.ctx.config.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.api.ctx.config.models))
            raise UnknownModel(f"unknown model {echo(name)} (known: {known})")
        return model

    def _validate_input(self, model: ModelConfig, value: dict[str, Any]) -> None:
        validator = self._validators.get(model.name)
        if validator is None:
            validator = jsonschema.Draft202012Validator(
                model.input_schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
            )
            self._validators[model.name] = validator
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            path = "$.input" + error.json_path.removeprefix("$")
            # jsonschema quotes the value ("'aaa…' is too long"): quote only its start.
            reason = error.message.replace(repr(error.instance), echo(error.instance))
            raise InputInvalid(f"{path}: {reason[:300]}")
