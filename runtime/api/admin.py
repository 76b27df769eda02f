"""The dead-letter queue (admin): list the dead letters, re-drive one as a new job."""

from __future__ import annotations

import re

from aiohttp import web

from runtime.api.bodies import (
    DEFAULT_DEAD_LETTERS,
    MAX_DEAD_LETTERS,
    REPLAYED_HEADER,
    TIME_CURSOR_PATTERN,
)
from runtime.api.context import Api, job_fields, log
from runtime.api.errors import bad_request, json_response
from runtime.api.params import bool_param, int_param, only_params
from runtime.errors import DeadLetterNotFound
from runtime.ledger import new_job_id
from runtime.models import Job, Redrive
from runtime.telemetry import TRACE_HEADER, new_trace_id

_CURSOR = re.compile(TIME_CURSOR_PATTERN)


class AdminRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/admin/dead-letters", self.list_dead_letters, allow_head=False),
            web.post("/v1/admin/dead-letters/{job_id}/redrive", self.redrive),
        ]

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        api = self.api
        await api.require_admin(request)
        query = only_params(request, "limit", "cursor", "include_redriven")
        limit = int_param(query, "limit", DEFAULT_DEAD_LETTERS, MAX_DEAD_LETTERS)
        include = bool_param(query, "include_redriven")
        cursor = query.get("cursor")
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            raise bad_request("cursor must be the next_cursor of an earlier page")
        page = await api.read(api.ctx.ledger.dead_letters(limit, include, cursor))
        return json_response(
            {
                "dead_letters": [letter.to_api() for letter in page.items],
                "next_cursor": page.next_cursor,
            }
        )

    async def redrive(self, request: web.Request) -> web.Response:
        api = self.api
        ctx = api.ctx
        await api.require_admin(request)
        dead_job_id = request.match_info["job_id"]
        dead = await api.job(dead_job_id)
        if dead is None:
            raise DeadLetterNotFound(dead_job_id)
        model = ctx.config.models.get(dead.model)
        now = ctx.clock.time()
        trace_id = new_trace_id(ctx.rng)
        # The route starts over, at its first vendor whose circuit is not open.
        position = api.circuits.route_position(model.route) if model else 0
        op = Redrive(
            job_id=dead_job_id,
            new_job_id="job_" + new_job_id(now, ctx.rng).replace("-", ""),
            trace_id=trace_id,
            deadline=now
            + (ctx.config.job_deadline(model) if model else ctx.config.sweeper.job_deadline),
            vendor=model.route[position].vendor if model else None,
            route_position=position,
        )
        with api.tracer.root("redrive", trace_id, dead_job_id=dead_job_id) as span:
            outcome = await api.execute(op)
            job: Job = outcome.unwrap()
            span.set_attributes({"jobline.job_id": job.id, "jobline.replayed": not outcome.changed})
        headers = {"Location": f"/v1/jobs/{job.id}", TRACE_HEADER: job.trace_id}
        if outcome.changed:
            ctx.metrics.credits.labels("held").inc(job.cost)
            log.info("dead letter re-driven", extra={**job_fields(job), "error": dead_job_id})
            api.dispatch(job)
        else:
            headers[REPLAYED_HEADER] = "true"
        return json_response(job.to_api(), status=202, headers=headers)
