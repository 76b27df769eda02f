"""The fake vendor's HTTP host: one aiohttp app serving one :class:`VendorCore`.

Every vendor route (:mod:`vendors_fake.calls`, the same routes the in-memory host
serves) becomes an aiohttp handler: the request is read into a ``Call``, the gate and the
route answer, and what the answer asks the host to act out is acted out here: a drawn
hang holds the request unanswered until the client gives up or ``hang_for`` passes (then
the connection is aborted), a reset aborts it with a TCP RST at once, and a submit whose
answer the task's fate says is lost (after the task was created) is held and dropped,
answered 5xx, or cut off mid-body.

Output files are served at ``/files/{task_id}/{name}`` (no key, as a CDN would), streamed
in chunks with their real content type and length; a download that reaches its end
counts as delivered. A fal fake serves its webhook keys at ``/.well-known/jwks.json``.

Control endpoints (no auth, no faults, not counted)::

    GET  /_control/profile            the profile as JSON
    POST /_control/profile            partial update (nested tables merged); ?replace=1 for a
                                      full document; ?preset=flaky to load a preset
    POST /_control/reset              {"seed": 7}: reseed, clear tasks and stats (seed optional)
    POST /_control/outage             {"duration": 30}: 503 for that long from now (0 ends it)
    POST /_control/rotate-key         {"keep_old": true}: fal signs with a new key from now on
    GET  /_control/stats              see vendors_fake.stats
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from vendors_fake.calls import Answer, Call, Route, serve, vendor_routes
from vendors_fake.core import (
    REJECTED_ERROR,
    TRANSIENT_ERROR,
    RouteGroup,
    RunningLoop,
    Shape,
    VendorCore,
)
from vendors_fake.fal_api import JWKS_PATH
from vendors_fake.profile import FaultProfile, merge_profile, preset, validate_profile
from vendors_fake.signing import DEV_WEBHOOK_SECRET
from vendors_fake.tasks import Task

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEV_API_KEY = "dev-key"
MAX_BODY = 16 * 1024 * 1024

_JSON = "application/json"
_HEADERS_JSON = {"Content-Type": _JSON}

__all__ = [
    "DEV_API_KEY",
    "DEV_WEBHOOK_SECRET",
    "REJECTED_ERROR",
    "TRANSIENT_ERROR",
    "FakeVendor",
    "Handler",
    "RouteGroup",
    "Shape",
]


def json_response(
    body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(body=body, status=status, headers={**_HEADERS_JSON, **(headers or {})})


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class FakeVendor:
    """One fake vendor server. Independent of jobline's config: give it a shape, a profile,
    the API key it accepts, the secret it signs replicate webhooks with, and a seed (fal
    webhooks are signed with ED25519 keys derived from its name)."""

    def __init__(
        self,
        shape: Shape,
        profile: FaultProfile | None = None,
        api_key: str = DEV_API_KEY,
        webhook_secret: str = DEV_WEBHOOK_SECRET,
        seed: int = 0,
        *,
        name: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = VendorCore(
            shape,
            profile,
            name=name,
            seed=seed,
            api_key=api_key,
            webhook_secret=webhook_secret,
            scheduler=RunningLoop(),
            wall_clock=wall_clock,
            post_webhook=self._post_webhook,
        )
        self.shape_name: Shape = shape
        self.name = self.core.name
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self._auth = ("Key " if shape == "fal" else "Bearer ") + api_key
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._url = ""
        self.app = self._build_app()

    # --- what the core holds, for tests and harnesses ------------------------------------

    @property
    def stats(self) -> Any:
        return self.core.stats

    @property
    def tasks(self) -> dict[str, Task]:
        return self.core.tasks

    @property
    def profile(self) -> FaultProfile:
        return self.core.profile

    @property
    def seed(self) -> int:
        return self.core.seed

    @property
    def pending_webhooks(self) -> int:
        return self.core.pending_webhooks

    def set_profile(self, profile: FaultProfile) -> None:
        self.core.set_profile(profile)

    def update_profile(self, patch: Mapping[str, Any]) -> FaultProfile:
        return self.core.update_profile(patch)

    def reset(self, seed: int | None = None) -> None:
        self.core.reset(seed)

    def start_outage(self, duration: float) -> None:
        self.core.start_outage(duration)

    def cancel(self, task: Task) -> bool:
        return self.core.cancel(task)

    def snapshot(self) -> dict[str, Any]:
        return self.core.snapshot()

    def signed_webhook(self, task: Task, **kwargs: Any) -> tuple[dict[str, str], bytes]:
        """See :meth:`VendorCore.signed_webhook`."""
        return self.core.signed_webhook(task, **kwargs)

    def rotate_key(self, keep_old: bool = True) -> str:
        return self.core.rotate_key(keep_old)

    @property
    def jwks_url(self) -> str:
        """fal: where this fake publishes its webhook keys."""
        return f"{self._url}{JWKS_PATH}"

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234``; set by :meth:`start`."""
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.core.reset(self.core.seed)  # periodic outages count from now
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=1024).start()
        bound = self._runner.addresses[0][1]
        self._url = self.core.base_url = f"http://{host}:{bound}"
        return self._url

    async def stop(self) -> None:
        self._stopping.set()  # ends hung requests
        pending = self.core.stop_pending()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> FakeVendor:
        if not self._url:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _post_webhook(
        self, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> int | None:
        if self._session is None:
            return None
        sent = {**headers, "Content-Type": _JSON, "User-Agent": f"fake-vendor/{self.shape_name}"}
        try:
            async with self._session.post(
                url, data=body, headers=sent, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    # --- the app -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes(
            [
                web.get("/_control/profile", self._get_profile),
                web.post("/_control/profile", self._post_profile),
                web.post("/_control/reset", self._post_reset),
                web.post("/_control/outage", self._post_outage),
                web.post("/_control/rotate-key", self._post_rotate_key),
                web.get("/_control/stats", self._get_stats),
            ]
        )
        for route in vendor_routes(self.core):
            app.router.add_route(route.method, route.path, self._handler(route))
        return app

    def _handler(self, route: Route) -> Handler:
        """The route as an aiohttp handler (see the module docstring)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            call = Call(request.match_info, request.query, request.headers, await request.read())
            answer = await serve(self.core, route, call, self._auth)
            return await self._act_out(request, answer)

        return handle

    async def _act_out(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        if answer.drop == "hang":
            return await self.hang(request)
        if answer.drop == "reset":
            return reset_connection(request)
        if answer.drop == "cut_off":
            body = answer.body
            headers = {**answer.headers, "Content-Length": str(len(body))}
            response = web.StreamResponse(status=answer.status, headers=headers)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            reset_connection(request)
            return response
        if answer.file is not None:
            task, file = answer.file
            response = web.StreamResponse(status=answer.status, headers=answer.headers)
            await response.prepare(request)
            for chunk in file.chunks():
                await response.write(chunk)
            await response.write_eof()
            self.core.file_downloaded(task, file.name)
            return response
        return web.Response(body=answer.body, status=answer.status, headers=answer.headers)

    async def hang(self, request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.core.profile.hang_for)
        return reset_connection(request)

    # --- files, keys and control ----------------------------------------------------------

    async def _get_profile(self, request: web.Request) -> web.StreamResponse:
        return json_response(self.core.profile.model_dump_json().encode())

    async def _post_profile(self, request: web.Request) -> web.StreamResponse:
        try:
            if "preset" in request.query:
                profile = preset(request.query["preset"])
            else:
                patch = await request.json() if request.can_read_body else {}
                if not isinstance(patch, dict):
                    raise ValueError("the body must be a JSON object")
                if request.query.get("replace") in ("1", "true"):
                    profile = validate_profile(patch)
                else:
                    profile = merge_profile(self.core.profile, patch)
        except (ValueError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
            return json_response(dumps({"error": str(exc)}), 422)
        self.core.set_profile(profile)
        return json_response(profile.model_dump_json().encode())

    async def _post_reset(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else {}
        seed = body.get("seed") if isinstance(body, dict) else None
        if seed is not None and not isinstance(seed, int):
            return json_response(dumps({"error": "seed must be an integer"}), 422)
        self.core.reset(seed)
        return json_response(dumps({"seed": self.core.seed}))

    async def _post_outage(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else {}
        duration = body.get("duration") if isinstance(body, dict) else None
        if not isinstance(duration, int | float) or duration < 0:
            return json_response(dumps({"error": "duration must be a number >= 0"}), 422)
        self.core.start_outage(float(duration))
        return json_response(dumps({"outage_remaining": duration}))

    async def _post_rotate_key(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else {}
        keep_old = body.get("keep_old", True) if isinstance(body, dict) else True
        kid = self.core.rotate_key(bool(keep_old))
        return json_response(dumps({"kid": kid}))

    async def _get_stats(self, request: web.Request) -> web.StreamResponse:
        return json_response(dumps(self.snapshot()))


def reset_connection(request: web.Request) -> web.StreamResponse:
    """Abort the connection with a TCP RST; the client sees 'connection reset by peer'."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # Never sent: aiohttp finds the transport closed and drops the response quietly.
    return web.Response(status=400)
