"""Operations: ``/metrics`` (every actor's), ``/healthz``, ``/readyz``, ``/openapi.json``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from runtime.api.context import Api, log
from runtime.api.errors import error_response
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
        ctx = self.api.ctx
        own = ctx.metrics.collect()
        try:
            others = await ctx.collect_all_metrics()
        except Exception as exc:
            log.warning("collecting the other actors' metrics failed: %r", exc)
            others = []
        body = render([*_without_actor(others, ctx.metrics.actor), *own])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            ready = await asyncio.wait_for(self.api.ctx.is_ready(), READY_TIMEOUT)
        except Exception:
            ready = False
        if not ready:
            return error_response(503, "not_ready", "the gateway cannot serve yet")
        return web.json_response({"status": "ready"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")


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
