"""Operations: ``/metrics`` (every actor's), ``/healthz``, ``/readyz``, ``/openapi.json``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from runtime.api.context import Api, log
from runtime.api.errors import echo, error_response, json_response
from runtime.api.openapi import openapi_document
from runtime.telemetry import Family, render

READY_TIMEOUT = 2.0


class OperationRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api
        self._openapi = json.dumps(openapi_document(api.ctx.config), indent=1).encode()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.metrics, allow_head=False),
            web.get("/healthz", self.healthz, allow_head=False),
            web.get("/readyz", self.readyz, allow_head=False),
            web.get("/openapi.json", self.openapi, allow_head=False),
        ]

    async def metrics(self, request: web.Request) -> web.Response:
        """Every actor's metrics; ``?actor=ROLE``: only that role's (a cluster's Prometheus
        scrapes each role as its own target, ``deploy/prometheus-cluster.yml``)."""
        ctx = self.api.ctx
        own = ctx.metrics.collect()
        actor = request.query.get("actor")
        if actor is not None and actor != ctx.metrics.actor:
            return await self._metrics_of(actor)
        if actor is not None:
            return _exposition(own)
        try:
            others = await ctx.collect_all_metrics()
        except Exception as exc:
            log.warning("collecting the other actors' metrics failed: %r", exc)
            others = []
        return _exposition([*_without_actor(others, ctx.metrics.actor), *own])

    async def _metrics_of(self, actor: str) -> web.Response:
        collect = self.api.ctx.collect_metrics_of
        families = None if collect is None else await collect(actor)
        if families is None:
            return error_response(404, "not_found", f"no role named {echo(actor)}")
        return _exposition(families)

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            ready = await asyncio.wait_for(self.api.ctx.is_ready(), READY_TIMEOUT)
        except Exception:
            ready = False
        if not ready:
            return error_response(503, "not_ready", "the gateway cannot serve yet")
        return json_response({"status": "ready"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")


def _exposition(families: Iterable[Family]) -> web.Response:
    return web.Response(body=render(families), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


def _without_actor(families: Iterable[Family], actor: str) -> list[Family]:
    """``families`` minus the samples of ``actor`` (this gateway adds its own, fresher)."""
    kept = []
    for family in families:
        samples = tuple(s for s in family.samples if dict(s.labels).get("actor") != actor)
        if samples:
            kept.append(
                Family(family.name, family.kind, family.help, samples)
                if len(samples) != len(family.samples)
                else family
            )
    return kept
