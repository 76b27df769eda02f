"""The gateway's aiohttp application: the route modules on one ``Api`` core.

``build_app`` registers every module of ``ROUTE_MODULES``: each is a class built from
the ``Api`` core, whose ``routes()`` lists its routes (``/openapi.json`` documents each;
a test holds the two together). A new resource is a new module added there. Two
middlewares wrap every handler: one turns every exception into ``{"error": {"code",
"message"}}`` with a fitting status (``runtime.api.errors``), the other counts requests
by route template and status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_middlewares import normalize_path_middleware

from runtime.api.accounts import AccountRoutes
from runtime.api.admin import AdminRoutes
from runtime.api.console_routes import ConsoleRoutes
from runtime.api.context import (
    SSE_HEARTBEAT_INTERVAL,
    SSE_POLL_INTERVAL,
    Api,
    GatewayContext,
    log,
)
from runtime.api.errors import HTTP_CODES, error_response, refusal_for
from runtime.api.events import EventRoutes
from runtime.api.jobs import JobRoutes
from runtime.api.keys import KeyRoutes
from runtime.api.limits import SlowClientGuard
from runtime.api.operations import OperationRoutes
from runtime.api.webhooks import WebhookRoutes
from runtime.console import console_routes
from runtime.errors import JoblineError

UNMATCHED_ROUTE = "unmatched"  # the metrics label of requests no route matched

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RouteModule(Protocol):
    def routes(self) -> list[web.RouteDef]: ...


ROUTE_MODULES: tuple[Callable[[Api], RouteModule], ...] = (
    AccountRoutes,
    KeyRoutes,
    JobRoutes,
    EventRoutes,
    WebhookRoutes,
    AdminRoutes,
    OperationRoutes,
    ConsoleRoutes,
)

GATEWAY_API: web.AppKey[Api] = web.AppKey("jobline_api", Api)


def build_app(
    ctx: GatewayContext,
    *,
    sse_poll_interval: float = SSE_POLL_INTERVAL,
    sse_heartbeat_interval: float = SSE_HEARTBEAT_INTERVAL,
    guard: SlowClientGuard | None = None,
) -> web.Application:
    """The gateway's aiohttp application (DESIGN §5); ``guard``: the slow-client guard of
    the site that serves it (``runtime.api.limits``)."""
    api = Api(
        ctx, sse_poll_interval=sse_poll_interval, sse_heartbeat_interval=sse_heartbeat_interval
    )
    # The path with a trailing slash (or doubled slashes) redirects to the route's own
    # (/console/ -> /console): aiohttp's normalize_path_middleware, innermost, so that
    # the redirect is counted and only a path that no route matches is redirected.
    middlewares: list[Middleware] = [
        _count_requests(api),
        _render_errors,
        normalize_path_middleware(remove_slash=True, append_slash=False),
    ]
    if guard is not None:
        middlewares.insert(0, guard.middleware())
    app = web.Application(
        middlewares=middlewares,
        client_max_size=ctx.config.gateway.max_body_bytes,
    )
    for module in ROUTE_MODULES:
        app.add_routes(module(api).routes())
    app.add_routes(console_routes(ctx.config))  # the console's pages and assets, /docs
    app.on_shutdown.append(api.on_shutdown)
    app.on_cleanup.append(api.on_cleanup)
    app[GATEWAY_API] = api
    return app


def _count_requests(api: Api) -> Middleware:
    metrics = api.ctx.metrics
    # Each series' child, looked up once: ``labels()`` takes a lock and builds a key per
    # call. Both are bounded (route templates times the statuses they answer).
    counts: dict[tuple[str, int], Any] = {}
    durations: dict[str, Any] = {}

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            route = _route_label(request)
            count = counts.get((route, status))
            if count is None:
                count = counts[route, status] = metrics.http_requests.labels(route, str(status))
            count.inc()
            duration = durations.get(route)
            if duration is None:
                duration = durations[route] = metrics.http_duration.labels(route)
            duration.observe(time.perf_counter() - started)

    return count_requests


@web.middleware
async def _render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except JoblineError as exc:
        return _refusal(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        return _internal_error(request, exc)


def _refusal(request: web.Request, exc: JoblineError) -> web.Response:
    refusal = refusal_for(exc)
    if refusal is None:
        return _internal_error(request, exc)
    if refusal.status >= 500:
        log.warning("%s %s: %s", request.method, request.path, exc)
    response = error_response(refusal.status, refusal.code, str(refusal), refusal.headers)
    if refusal.headers.get("Connection") == "close":
        response.force_close()
    return response


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) in our shape."""
    code = HTTP_CODES.get(exc.status, "bad_request" if exc.status < 500 else "error")
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    message = exc.text if exc.status != 404 else f"no route {request.method} {request.path}"
    if exc.status == 413:
        message = f"{message} (gateway.max_body_bytes)"
    return error_response(exc.status, code, message or exc.reason, headers)


def _internal_error(request: web.Request, exc: BaseException) -> web.Response:
    log.error(
        "%s %s failed", request.method, request.path, exc_info=exc, extra={"error": repr(exc)}
    )
    return error_response(500, "internal_error", "internal error; the gateway logged it")


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE
