"""The fake vendor server: one aiohttp app speaking one API shape, misbehaving on command.

Theory of operation
-------------------
A request to a vendor route passes one gate before its handler (:meth:`FakeVendor._route`):

1. outage window open        -> 503 + Retry-After (nothing else is drawn)
2. one draw from the request stream for the route group's faults: a hang (the request is
   held, unanswered, until the client gives up or ``hang_for`` passes, then the
   connection is aborted) or a reset (the connection is aborted with an RST) act now;
3. ``Authorization`` checked  -> 401
4. a drawn 429 (with Retry-After) or 5xx is answered now;
5. the handler runs; a submit past the concurrency limit gets 429 + Retry-After.

A task's fate is drawn at creation from the task stream (:mod:`vendors_fake.tasks`). Its
phases change on ``loop.call_later`` timers, and at each change the shape re-renders the
task's status JSON once, so a status poll only looks the task up and returns stored bytes.
Webhooks are sent at phase changes, with their drawn faults applied; one task's webhooks
leave in the order of its events (a delayed one holds back those after it), except the
out-of-order fault, which withholds the progress event until after the final one.

Both random streams are ``random.Random`` instances seeded from ``(name, seed)``; nothing
reads the global ``random``. ``POST /_control/reset`` reseeds both and clears tasks and
stats, so a run can be repeated.

Control endpoints (no auth, no faults, not counted)::

    GET  /_control/profile            the profile as JSON
    POST /_control/profile            partial update (nested tables merged); ?replace=1 for a
                                      full document; ?preset=flaky to load a preset
    POST /_control/reset              {"seed": 7}: reseed, clear tasks and stats (seed optional)
    POST /_control/outage             {"duration": 30}: 503 for that long from now (0 ends it)
    GET  /_control/stats              see vendors_fake.stats
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from runtime.webhooks import signed_headers
from vendors_fake.png import expected_png
from vendors_fake.profile import FaultProfile, RouteFaults, merge_profile, preset
from vendors_fake.stats import FakeStats
from vendors_fake.tasks import (
    CLEAN_DELIVERY,
    Outcome,
    Phase,
    RequestFault,
    Task,
    WebhookFate,
    draw_latency,
    draw_out_of_order,
    draw_outcome,
    draw_request_fault,
    draw_webhook_fate,
)

Shape = Literal["replicate", "fal"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteGroup = Literal["submit", "status", "cancel", "download"]

TRACE_HEADER = "X-Jobline-Trace-Id"
JOB_ID_HEADER = "X-Jobline-Job-Id"
ATTEMPT_HEADER = "X-Jobline-Attempt"
JOB_ID_PARAM = "jobline_job_id"
ATTEMPT_PARAM = "jobline_attempt"

DEV_API_KEY = "dev-key"
# base64 of b"fake-vendor-dev-webhook-secret" and of b"forged-by-a-stranger"
DEV_WEBHOOK_SECRET = "whsec_ZmFrZS12ZW5kb3ItZGV2LXdlYmhvb2stc2VjcmV0"
FORGED_WEBHOOK_SECRET = "whsec_Zm9yZ2VkLWJ5LWEtc3RyYW5nZXI="

_JSON = "application/json"
_HEADERS_JSON = {"Content-Type": _JSON}


class Reply(Exception):
    """Raised by a handler or the gate to answer at once with ``response``."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def json_response(
    body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    if headers:
        return web.Response(body=body, status=status, headers={**_HEADERS_JSON, **headers})
    return web.Response(body=body, status=status, headers=_HEADERS_JSON)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class ApiShape(Protocol):
    """What one vendor API shape adds to the core: routes, and the JSON of its tasks."""

    name: str
    emitted_events: frozenset[str]  # the webhook events the fake actually sends
    progress_event: str | None  # the non-final event sent when a task starts running

    def routes(self) -> list[tuple[str, str, str, RouteGroup, Handler]]:
        """(method, path, route name for stats, fault group, handler) for each route."""
        ...

    def render(self, task: Task) -> bytes:
        """The task's status JSON in its current phase."""
        ...

    def webhook_body(self, task: Task, event: str) -> bytes: ...

    def error_body(self, status: int, message: str) -> bytes: ...


class FakeVendor:
    """One fake vendor server. Independent of jobline's config: give it a shape, a profile,
    the API key it accepts, the secret it signs webhooks with, and a seed."""

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
        self.shape_name: Shape = shape
        self.name = name or shape
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.wall_clock = wall_clock
        self.stats = FakeStats()
        self.tasks: dict[str, Task] = {}
        self._profile = profile or FaultProfile()
        self._auth = ("Key " if shape == "fal" else "Bearer ") + api_key
        self._seed = seed
        self._task_rng = random.Random()
        self._request_rng = random.Random()
        self._queue: list[int] = []  # queue_seq of queued tasks, ascending
        self._next_seq = 0
        self._epoch = 0.0  # loop time of start / reset; periodic outages count from it
        self._manual_outage_until = 0.0
        self._gates: dict[str, RouteFaults | None] = {}
        self._outage_possible = False
        self._deliveries: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._url = ""
        self.shape = _make_shape(shape, self)
        self.app = self._build_app()
        self._reseed(seed)
        self._apply_profile(self._profile)

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234``; set by :meth:`start`."""
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._epoch = asyncio.get_running_loop().time()
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=1024).start()
        bound = self._runner.addresses[0][1]
        self._url = f"http://{host}:{bound}"
        return self._url

    async def stop(self) -> None:
        self._stopping.set()  # ends hung requests
        pending = self._cancel_pending()
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

    # --- control -------------------------------------------------------------------------

    @property
    def profile(self) -> FaultProfile:
        return self._profile

    @property
    def seed(self) -> int:
        return self._seed

    def set_profile(self, profile: FaultProfile) -> None:
        self._apply_profile(profile)

    def update_profile(self, patch: Mapping[str, Any]) -> FaultProfile:
        self._apply_profile(merge_profile(self._profile, patch))
        return self._profile

    def reset(self, seed: int | None = None) -> None:
        """Forget every task and count, and restart both random streams."""
        self._cancel_pending()
        self.tasks.clear()
        self.stats.clear()
        self._queue.clear()
        self._next_seq = 0
        self._manual_outage_until = 0.0
        with contextlib.suppress(RuntimeError):
            self._epoch = asyncio.get_running_loop().time()
        self._reseed(self._seed if seed is None else seed)
        self._apply_profile(self._profile)

    def start_outage(self, duration: float) -> None:
        """Answer every vendor request with 503 for ``duration`` seconds from now."""
        self._manual_outage_until = asyncio.get_running_loop().time() + duration
        self._apply_profile(self._profile)

    def outage_remaining(self) -> float:
        now = asyncio.get_running_loop().time()
        if now < self._manual_outage_until:
            return self._manual_outage_until - now
        elapsed = now - self._epoch
        end = self._profile.outage.active_until(elapsed)
        return 0.0 if end is None else end - elapsed

    @property
    def pending_webhooks(self) -> int:
        """Webhook deliveries not finished yet (waiting, delayed, or in the air)."""
        return len(self._deliveries)

    def snapshot(self) -> dict[str, Any]:
        stats = self.stats.snapshot(self.tasks)
        stats["webhooks"]["pending"] = self.pending_webhooks
        remaining = self.outage_remaining() if self._url else 0.0
        stats["outage"] = {"active": remaining > 0, "remaining": round(remaining, 3)}
        stats["concurrency_limit"] = self._profile.concurrency_limit
        stats["seed"] = self._seed
        stats["shape"] = self.shape_name
        with contextlib.suppress(RuntimeError):
            stats["uptime"] = round(asyncio.get_running_loop().time() - self._epoch, 3)
        return stats

    def _cancel_pending(self) -> list[asyncio.Task[None]]:
        """Stop every timer and webhook delivery; answer every `Prefer: wait` request."""
        for task in self.tasks.values():
            if task.timer is not None:
                task.timer.cancel()
            for waiter in task.waiters or ():
                if not waiter.done():
                    waiter.set_result(None)
        deliveries = list(self._deliveries)
        for delivery in deliveries:
            delivery.cancel()
        return deliveries

    def _reseed(self, seed: int) -> None:
        self._seed = seed
        self._task_rng.seed(f"{self.name}:{seed}:tasks")
        self._request_rng.seed(f"{self.name}:{seed}:requests")

    def _apply_profile(self, profile: FaultProfile) -> None:
        self._profile = profile
        self._gates = {
            group: faults if faults.any else None
            for group, faults in (
                ("submit", profile.submit),
                ("status", profile.status),
                ("cancel", profile.cancel),
                ("download", profile.download),
            )
        }
        outage = profile.outage
        self._outage_possible = bool(outage.every and outage.duration) or (
            self._manual_outage_until > 0
        )

    # --- the app -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        control = [
            web.get("/_control/profile", self._get_profile),
            web.post("/_control/profile", self._post_profile),
            web.post("/_control/reset", self._post_reset),
            web.post("/_control/outage", self._post_outage),
            web.get("/_control/stats", self._get_stats),
        ]
        app.add_routes(control)
        app.router.add_get(
            "/files/{task_id}/{filename}",
            self._route("files.get", "download", self._get_file, auth=False),
        )
        for method, path, route, group, handler in self.shape.routes():
            app.router.add_route(method, path, self._route(route, group, handler))
        return app

    def _route(self, route: str, group: RouteGroup, handler: Handler, auth: bool = True) -> Handler:
        """Wrap a vendor handler in the gate (see the module docstring) and count it."""
        codes = self.stats.route_counter(route)
        missing_trace = self.stats.trace_id_missing
        stats_faults = self.stats.faults

        async def guarded(request: web.Request) -> web.StreamResponse:
            headers = request.headers
            if TRACE_HEADER not in headers:
                missing_trace[route] += 1
            try:
                if self._outage_possible:
                    self._check_outage()
                faults = self._gates[group]
                drawn = draw_request_fault(faults, self._request_rng) if faults else None
                if drawn is not None and drawn[0] is RequestFault.HANG:
                    stats_faults["hang"] += 1
                    codes["hang"] += 1
                    return await self._hang(request)
                if drawn is not None and drawn[0] is RequestFault.RESET:
                    stats_faults["reset"] += 1
                    codes["reset"] += 1
                    return _reset(request)
                if auth and headers.get("Authorization") != self._auth:
                    raise self.reply(401, "You did not pass a valid authentication token")
                if drawn is not None:
                    assert faults is not None
                    raise self._drawn_error(drawn[0], drawn[1], faults)
                response = await handler(request)
            except Reply as reply:
                response = reply.response
            codes[str(response.status)] += 1
            return response

        return guarded

    def reply(self, status: int, message: str, retry_after: float | None = None) -> Reply:
        headers = None if retry_after is None else {"Retry-After": _retry_after(retry_after)}
        return Reply(json_response(self.shape.error_body(status, message), status, headers))

    def _check_outage(self) -> None:
        remaining = self.outage_remaining()
        if remaining > 0:
            self.stats.faults["outage"] += 1
            retry_after = self._profile.outage.retry_after
            raise self.reply(
                503,
                "Service unavailable: outage in progress",
                remaining if retry_after is None else retry_after,
            )

    def _drawn_error(self, fault: RequestFault, status: int, faults: RouteFaults) -> Reply:
        self.stats.faults[fault.value] += 1
        if fault is RequestFault.RATE_LIMITED:
            return self.reply(429, "Request was throttled", faults.retry_after)
        return self.reply(status, "Internal server error (injected)")

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._profile.hang_for)
        return _reset(request)

    # --- tasks: what the shapes call ------------------------------------------------------

    def new_task(
        self,
        request: web.Request,
        model: str,
        version: str,
        input: dict[str, Any],
        webhook_url: str | None,
        webhook_events: frozenset[str],
        cancel_after: float | None = None,
    ) -> Task:
        """Create and schedule a task, or raise a 429 Reply past the concurrency limit.

        A task ends at its deadline if it has not ended before: canceled ``cancel_after``
        seconds after creation (replicate's ``Cancel-After``), or failed once it is older
        than the profile's ``max_task_time``, whichever comes first.
        """
        profile = self._profile
        limit = profile.concurrency_limit
        if limit is not None and self.stats.in_flight >= limit:
            self.stats.faults["concurrency_limited"] += 1
            raise self.reply(
                429,
                f"Too many tasks in flight (limit {limit})",
                profile.concurrency_retry_after,
            )
        rng = self._task_rng
        index = self.stats.tasks["created"]
        task = Task(
            id=self._new_id(rng),
            index=index,
            model=model,
            version=version,
            input=input,
            outcome=draw_outcome(profile, rng),
            queue_delay=draw_latency(profile.queue_delay, rng),
            run_time=draw_latency(profile.run_time, rng),
            created_at=self.wall_clock(),
        )
        if webhook_url:
            task.webhook_url = webhook_url
            task.webhook_events = webhook_events
            faults = profile.webhooks
            for event in sorted(webhook_events & self.shape.emitted_events):
                task.webhook_fates[event] = draw_webhook_fate(faults, rng)
            if self.shape.progress_event is not None:
                task.out_of_order = draw_out_of_order(faults, rng)
        self._identify(task, request, webhook_url)
        self.tasks[task.id] = task
        self.stats.task_created(task)
        if task.outcome is Outcome.NEVER_FINISH:
            self.stats.tasks["never_finish"] += 1
        task.queue_seq = self._next_seq
        self._next_seq += 1
        self._queue.append(task.queue_seq)
        task.body = self.shape.render(task)
        loop = asyncio.get_running_loop()
        task.timer = loop.call_later(task.queue_delay, self._start_running, task)
        deadlines = [(cancel_after, Phase.CANCELED), (profile.max_task_time, Phase.FAILED)]
        set_deadlines = [(after, phase) for after, phase in deadlines if after is not None]
        if set_deadlines:
            after, phase = min(set_deadlines, key=lambda deadline: deadline[0])
            task.deadline_timer = loop.call_later(after, self._expire, task, phase)
        return task

    def task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise self.reply(404, f"Task {task_id} not found")
        return task

    def cancel(self, task: Task) -> bool:
        """Cancel a task that has not ended; False if it had."""
        if task.phase.ended:
            return False
        if task.timer is not None:
            task.timer.cancel()
        if task.phase is Phase.QUEUED:
            self._leave_queue(task)
        self._end(task, Phase.CANCELED)
        return True

    def _expire(self, task: Task, phase: Phase) -> None:
        task.deadline_timer = None
        if task.phase.ended:
            return
        self.stats.tasks["expired"] += 1
        if task.timer is not None:
            task.timer.cancel()
        if task.phase is Phase.QUEUED:
            self._leave_queue(task)
        self._end(task, phase)

    def queue_position(self, task: Task) -> int:
        return bisect.bisect_left(self._queue, task.queue_seq)

    def output_url(self, task: Task) -> str:
        return f"{self._url}/files/{task.id}/output.png"

    async def wait(self, task: Task, at_most: float) -> None:
        """Until the task ends, or ``at_most`` seconds."""
        if task.phase.ended:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if task.waiters is None:
            task.waiters = []
        task.waiters.append(future)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, at_most)

    def _new_id(self, rng: random.Random) -> str:
        bits = rng.getrandbits(128)
        if self.shape_name == "fal":
            h = f"{bits:032x}"
            return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        alphabet = "abcdefghijklmnopqrstuvwxyz234567"  # replicate ids: 26 chars of base32
        return "".join(alphabet[(bits >> (5 * i)) & 31] for i in range(26))

    @staticmethod
    def _identify(task: Task, request: web.Request, webhook_url: str | None) -> None:
        headers = request.headers
        task.trace_id = headers.get(TRACE_HEADER)
        task.job_id = headers.get(JOB_ID_HEADER)
        task.attempt = headers.get(ATTEMPT_HEADER)
        if task.job_id is None and webhook_url:
            query = URL(webhook_url).query
            task.job_id = query.get(JOB_ID_PARAM)
            task.attempt = task.attempt or query.get(ATTEMPT_PARAM)

    def _leave_queue(self, task: Task) -> None:
        i = bisect.bisect_left(self._queue, task.queue_seq)
        if i < len(self._queue) and self._queue[i] == task.queue_seq:
            del self._queue[i]

    def _start_running(self, task: Task) -> None:
        self._leave_queue(task)
        task.phase = Phase.RUNNING
        task.started_at = self.wall_clock()
        task.body = self.shape.render(task)
        progress = self.shape.progress_event
        if progress is not None and not task.out_of_order:
            self._emit(task, progress)
        if task.outcome is Outcome.NEVER_FINISH:
            task.timer = None
            return
        phase = Phase.SUCCEEDED if task.outcome is Outcome.SUCCEED else Phase.FAILED
        task.timer = asyncio.get_running_loop().call_later(task.run_time, self._end, task, phase)

    def _end(self, task: Task, phase: Phase) -> None:
        task.timer = None
        if task.deadline_timer is not None:
            task.deadline_timer.cancel()
            task.deadline_timer = None
        stale_body = task.body
        task.phase = phase
        task.completed_at = self.wall_clock()
        if phase is Phase.FAILED:
            task.error = REJECTED_ERROR if task.outcome is Outcome.REJECT else TRANSIENT_ERROR
        task.body = self.shape.render(task)
        self.stats.task_ended(
            phase, rejected=phase is Phase.FAILED and task.outcome is Outcome.REJECT
        )
        self._emit(task, "completed", stale_after=stale_body if task.out_of_order else None)
        if task.waiters:
            for waiter in task.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            task.waiters = None

    # --- webhooks ------------------------------------------------------------------------

    def _emit(self, task: Task, event: str, stale_after: bytes | None = None) -> None:
        """Send one event's webhook with its drawn faults; then, for an out-of-order task,
        the withheld progress event (``stale_after``)."""
        url = task.webhook_url
        if url is None:
            return
        subscribed = event in task.webhook_events
        if not subscribed and stale_after is None:
            return
        fate = task.webhook_fates.get(event, CLEAN_DELIVERY)
        if subscribed:
            self.stats.webhooks["events"] += 1
        for fault in fate.faults:
            self.stats.webhook_faults[fault] += 1
        if stale_after is not None:
            self.stats.webhook_faults["out_of_order"] += 1
        body = self.shape.webhook_body(task, event) if subscribed else None
        msg_id = f"msg_{task.id}_{event}"
        stale = None
        if stale_after is not None:
            stale = (f"msg_{task.id}_{self.shape.progress_event}", stale_after)
        delivery = asyncio.get_running_loop().create_task(
            self._deliver(task.last_delivery, url, task.id, msg_id, body, fate, stale)
        )
        task.last_delivery = delivery
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._deliveries.discard)

    async def _deliver(
        self,
        previous: asyncio.Task[None] | None,
        url: str,
        task_id: str,
        msg_id: str,
        body: bytes | None,
        fate: WebhookFate,
        stale: tuple[str, bytes] | None,
    ) -> None:
        if previous is not None:  # a task's webhooks leave in the order of its events
            await asyncio.wait([previous])
        if fate.delay:
            await asyncio.sleep(fate.delay)
        if body is not None and not fate.lost:
            await self._post(url, task_id, msg_id, body, fate)
            if fate.duplicated:
                await self._post(url, task_id, msg_id, body, fate)
        if stale is not None:
            await self._post(url, task_id, stale[0], stale[1], CLEAN_DELIVERY)

    async def _post(
        self, url: str, task_id: str, msg_id: str, body: bytes, fate: WebhookFate
    ) -> None:
        assert self._session is not None
        faults = self._profile.webhooks
        timestamp = int(self.wall_clock() - (faults.stale_by if fate.stale else 0))
        secret = FORGED_WEBHOOK_SECRET if fate.bad_signature else self.webhook_secret
        headers = signed_headers(secret, msg_id, timestamp, body)
        headers["Content-Type"] = _JSON
        headers["User-Agent"] = f"jobline-fake-vendor/{self.shape_name}"
        if self.shape_name == "fal":
            headers["X-Fal-Webhook-Request-Id"] = task_id
        timeout = aiohttp.ClientTimeout(total=faults.timeout)
        for attempt in range(faults.retries + 1):
            if attempt:
                await asyncio.sleep(min(faults.retry_backoff * 2 ** (attempt - 1), 10.0))
            self.stats.webhooks["sent"] += 1
            try:
                async with self._session.post(
                    url, data=body, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    if response.status < 300:
                        self.stats.webhooks["delivered"] += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.stats.webhooks["failed"] += 1

    # --- files and control -----------------------------------------------------------------

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        task = self.task(request.match_info["task_id"])
        if task.phase is not Phase.SUCCEEDED or request.match_info["filename"] != "output.png":
            raise self.reply(404, "No such file")
        return web.Response(body=expected_png(task.input), content_type="image/png")

    async def _get_profile(self, request: web.Request) -> web.StreamResponse:
        return json_response(self._profile.model_dump_json().encode())

    async def _post_profile(self, request: web.Request) -> web.StreamResponse:
        try:
            if "preset" in request.query:
                profile = preset(request.query["preset"])
            else:
                patch = await request.json() if request.can_read_body else {}
                if not isinstance(patch, dict):
                    raise ValueError("the body must be a JSON object")
                if request.query.get("replace") in ("1", "true"):
                    profile = FaultProfile.model_validate(patch)
                else:
                    profile = merge_profile(self._profile, patch)
        except (ValueError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
            return json_response(dumps({"error": str(exc)}), 422)
        self._apply_profile(profile)
        return json_response(profile.model_dump_json().encode())

    async def _post_reset(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else {}
        seed = body.get("seed") if isinstance(body, dict) else None
        if seed is not None and not isinstance(seed, int):
            return json_response(dumps({"error": "seed must be an integer"}), 422)
        self.reset(seed)
        return json_response(dumps({"seed": self._seed}))

    async def _post_outage(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else {}
        duration = body.get("duration") if isinstance(body, dict) else None
        if not isinstance(duration, int | float) or duration < 0:
            return json_response(dumps({"error": "duration must be a number >= 0"}), 422)
        self.start_outage(float(duration))
        return json_response(dumps({"outage_remaining": duration}))

    async def _get_stats(self, request: web.Request) -> web.StreamResponse:
        return json_response(dumps(self.snapshot()))


TRANSIENT_ERROR = "Prediction interrupted; please retry (code: PA)"
REJECTED_ERROR = (
    "Content rejected: the input or output was flagged as sensitive. "
    "Please try again with different inputs. (E005)"
)


def _retry_after(seconds: float) -> str:
    return str(max(math.ceil(seconds), 0))


def _reset(request: web.Request) -> web.StreamResponse:
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


def _make_shape(shape: Shape, vendor: FakeVendor) -> ApiShape:
    # Imported here: the shapes import this module for FakeVendor, Reply and helpers.
    if shape == "replicate":
        from vendors_fake.replicate_api import ReplicateApi

        return ReplicateApi(vendor)
    if shape == "fal":
        from vendors_fake.fal_api import FalApi

        return FalApi(vendor)
    raise ValueError(f"unknown API shape {shape!r}: expected 'replicate' or 'fal'")
