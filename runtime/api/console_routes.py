"""The API routes the console needs first: the model catalogue, the account-wide event
stream, and the operator's reads of vendors and accounts (DESIGN §5). They are plain API
routes (any client may use them), described in ``runtime.api.openapi_console``.

Theory of operation: the account-wide event stream
--------------------------------------------------
Every status change of a job is one row of ``job_history``, numbered by a global ``seq``
in commit order, and carries its job's account. ``GET /v1/events`` sends an account's
rows as events whose ``id`` is the seq made opaque for that account
(``runtime.api.event_ids``: a global seq would count every tenant's traffic), so
``Last-Event-ID`` resumes after any of them.

Streams do not poll the ledger each. One ``HistoryWatch`` per gateway runs while any
stream is open: each poll interval it reads the history's tail after the last seq it
saw (one bounded read, however many streams are open) and wakes the streams of the
accounts that changed. A woken stream reads its own account's rows after its last event
(index ``(account_id, seq)``, a page at a time) and the jobs they name (one read), and
writes them. An idle stream writes a heartbeat comment; a stream ends when its client
goes away or the gateway shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from runtime import strict_json
from runtime.api.context import Api
from runtime.api.errors import HttpRefusal, json_response
from runtime.api.event_ids import EventIds
from runtime.api.openapi_console import (
    ACCOUNT_CURSOR_PATTERN,
    DEFAULT_ACCOUNTS,
    MAX_ACCOUNTS,
)
from runtime.api.params import int_param, only_params
from runtime.errors import LedgerUnavailable
from runtime.models import Job, JobHistoryEntry
from runtime.telemetry import get_logger

log = get_logger("gateway")

EVENTS_PAGE = 500  # history rows per read of one account's stream
WATCH_PAGE = 5000  # history rows per read of the watcher
VENDOR_STATS_TIMEOUT = 2.0  # a processor slower than this is shown unreachable
MAX_EVENT_ID_CHARS = 64  # a longer Last-Event-ID is no id of ours

_ACCOUNT_CURSOR = re.compile(ACCOUNT_CURSOR_PATTERN)

ChangedAccounts = Callable[[int | None], Awaitable[tuple[int, list[str]]]]


class HistoryWatch:
    """Wakes the streams of accounts whose jobs changed; one ledger read per poll.

    ``changed(after_seq)`` is the ledger's ``accounts_changed``: with None it answers
    where the history ends now; otherwise the last seq it read and the accounts of the
    rows after ``after_seq``.
    """

    def __init__(self, changed: ChangedAccounts, poll_interval: float) -> None:
        self._changed = changed
        self._poll_interval = poll_interval
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._seq: int | None = None  # every row up to here has woken its streams
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def subscribe(self, account_id: str) -> tuple[int, asyncio.Event]:
        """(a seq to start after, an event set when the account may have new rows)."""
        wakeup = asyncio.Event()
        self._waiters.setdefault(account_id, set()).add(wakeup)
        if self._closed:
            wakeup.set()
        try:
            if self._seq is None:
                seq, _ = await self._changed(None)
                if self._seq is None:  # a concurrent subscriber may have set it first
                    self._seq = seq
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run())
        except BaseException:
            self.unsubscribe(account_id, wakeup)
            raise
        return self._seq, wakeup

    def unsubscribe(self, account_id: str, wakeup: asyncio.Event) -> None:
        waiters = self._waiters.get(account_id)
        if waiters is not None:
            waiters.discard(wakeup)
            if not waiters:
                del self._waiters[account_id]

    def close(self) -> None:
        """Wake every stream (they end) and stop watching."""
        self._closed = True
        for waiters in self._waiters.values():
            for wakeup in waiters:
                wakeup.set()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while self._waiters and not self._closed:
            full = False
            try:
                seq, accounts = await self._changed(self._seq)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the streams stay open; the next poll tries again
                log.warning("the event watcher could not read the history: %r", exc)
            else:
                full = self._seq is not None and seq - self._seq >= WATCH_PAGE
                self._seq = seq
                for account_id in accounts:
                    for wakeup in self._waiters.get(account_id, ()):
                        wakeup.set()
            if not full:
                await asyncio.sleep(self._poll_interval)
        # Not watching: the next subscriber reads the head again (rows written meanwhile
        # were for nobody).
        self._seq = None


class ConsoleRoutes:
    """The handlers, on top of the gateway's ``Api`` (its auth, ledger access, settings)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.ctx = api.ctx
        self.watch = HistoryWatch(
            lambda after: api.read(self.ctx.ledger.accounts_changed(after, WATCH_PAGE)),
            api.sse_poll_interval,
        )
        api.shutdown_hooks.append(self.watch.close)
        self.ids = EventIds(api.ctx.admin_token)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/models", self.list_models, allow_head=False),
            web.get("/v1/events", self.account_events, allow_head=False),
            web.get("/v1/admin/vendors", self.list_vendors, allow_head=False),
            web.get("/v1/admin/accounts", self.list_accounts, allow_head=False),
        ]

    # --- models ---------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        await self.api.account(request)
        models = [
            {"name": name, "price": model.price, "input_schema": model.input_schema}
            for name, model in sorted(self.ctx.config.models.items())
        ]
        return json_response({"models": models})

    # --- the account-wide event stream ----------------------------------------------------

    async def account_events(self, request: web.Request) -> web.StreamResponse:
        account_id = await self.api.account(request)
        with self.api.streams.stream(account_id):  # 429 past event_streams_per_account
            return await self._account_events(request, account_id)

    async def _account_events(self, request: web.Request, account_id: str) -> web.StreamResponse:
        head, wakeup = await self.watch.subscribe(account_id)
        try:
            sent = self.ids.decode(account_id, _last_id(request))
            after = head if sent is None else min(sent, head)  # never past the head
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            try:
                await self._stream(request, response, account_id, after, wakeup)
            except ConnectionError:
                pass  # the client went away
            except LedgerUnavailable as exc:  # the client reconnects with Last-Event-ID
                log.warning("account event stream ended: %s", exc, extra={"account_id": account_id})
            return response
        finally:
            self.watch.unsubscribe(account_id, wakeup)

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        account_id: str,
        after: int,
        wakeup: asyncio.Event,
    ) -> None:
        """Write the account's rows after ``after`` as they come, until the client leaves."""
        ids = self.ids
        start = ids.encode(account_id, after)
        ready = json.dumps({"event_id": start})
        await response.write(f"id: {start}\nevent: ready\ndata: {ready}\n\n".encode())
        loop = asyncio.get_running_loop()
        heartbeat = self.api.sse_heartbeat_interval
        next_heartbeat = loop.time() + heartbeat
        while True:
            wakeup.clear()
            async with self.api.bounded_read(account_id, refuse=False):
                entries = await self.api.read(
                    self.ctx.ledger.account_history(account_id, after, EVENTS_PAGE)
                )
                wanted = list(dict.fromkeys(e.job_id for e in entries))
                jobs = await self.api.read(self.ctx.ledger.get_jobs(wanted)) if wanted else []
            if entries:
                current = {job.id: job for job in jobs if job is not None}
                await response.write(
                    b"".join(
                        _event(e, ids.encode(account_id, e.seq), current.get(e.job_id))
                        for e in entries
                    )
                )
                after = entries[-1].seq
                if len(entries) == EVENTS_PAGE:
                    continue  # more to send before waiting
            if self.api.closing.is_set() or _gone(request):
                return
            # Until the account's next row or the heartbeat, looking every poll interval
            # whether the client is still there: a closed stream gives its place back
            # (gateway.event_streams_per_account) within that interval, not at a heartbeat.
            while not wakeup.is_set() and loop.time() < next_heartbeat:
                until_heartbeat = max(0.0, next_heartbeat - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        wakeup.wait(), min(until_heartbeat, self.api.sse_poll_interval)
                    )
                if self.api.closing.is_set() or _gone(request):
                    return
            if loop.time() >= next_heartbeat:
                await response.write(b": heartbeat\n\n")
                next_heartbeat = loop.time() + heartbeat

    # --- the operator's reads -------------------------------------------------------------

    async def list_vendors(self, request: web.Request) -> web.Response:
        await self.api.require_admin(request)
        names = sorted(self.ctx.config.vendors)
        stats = await asyncio.gather(*(self._vendor_stats(name) for name in names))
        return json_response({"vendors": stats})

    async def _vendor_stats(self, name: str) -> dict[str, Any]:
        vendor = self.ctx.config.vendors[name]
        shown: dict[str, Any] = {
            "vendor": name,
            "api": vendor.api,
            "limit": vendor.concurrency,
            "rate_limit": vendor.requests_per_second or None,
            "reachable": True,
            "error": None,
        }
        try:
            stats = await asyncio.wait_for(
                self.ctx.router.processor(name).stats(), VENDOR_STATS_TIMEOUT
            )
        except Exception as exc:  # a restarting processor: shown, not an error of the page
            stats = {}
            shown |= {"reachable": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        for key, field in _VENDOR_STATS:
            value = stats.get(key)
            shown[field] = value if isinstance(value, int | str) else None
        wasted = stats.get("wasted")
        counts = (
            [n for n in wasted.values() if isinstance(n, int)] if isinstance(wasted, dict) else None
        )
        shown["wasted"] = sum(counts) if counts is not None else None
        late = wasted.get("late_orphan") if isinstance(wasted, dict) else None
        shown["late_orphans"] = late if isinstance(late, int) else None
        return shown

    async def list_accounts(self, request: web.Request) -> web.Response:
        await self.api.require_admin(request)
        query = only_params(request, "limit", "cursor")
        limit = int_param(query, "limit", DEFAULT_ACCOUNTS, MAX_ACCOUNTS)
        cursor = query.get("cursor")
        if cursor is not None and not _ACCOUNT_CURSOR.fullmatch(cursor):
            raise HttpRefusal(
                400, "bad_request", "cursor must be the next_cursor of an earlier page"
            )
        page = await self.api.read(self.ctx.ledger.accounts(limit, cursor))
        return json_response(
            {
                "accounts": [summary.to_api() for summary in page.items],
                "next_cursor": page.next_cursor,
            }
        )


# (key in the processor's stats(), field in the answer)
_VENDOR_STATS = (
    ("inflight", "in_flight"),
    ("queued", "queued"),
    ("held", "held"),
    ("circuit", "circuit"),
    ("retries", "retries"),
    ("failovers", "failovers"),
    ("completed", "completed"),
    ("failed", "failed"),
)


def _last_id(request: web.Request) -> str:
    return request.headers.get("Last-Event-ID", "")[:MAX_EVENT_ID_CHARS]


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _event(entry: JobHistoryEntry, event_id: str, job: Job | None) -> bytes:
    data = {
        "job_id": entry.job_id,
        "event_id": event_id,
        "status": entry.status.value,
        "at": entry.at,
        "detail": entry.detail,
        "job": None if job is None else job.to_api(),
    }
    payload = strict_json.dumps(data, separators=(",", ":"))
    return f"id: {event_id}\nevent: status\ndata: {payload}\n\n".encode()
