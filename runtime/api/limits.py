"""Bounds on what one client can cost the others: expensive reads per account, and slow
connections.

``AccountReads`` lets each account have at most ``reads_in_flight_per_account``
statement or job-list reads running on this replica; more wait their turn, up to four
times as many, and past that are refused with 429. The ledger answers reads on one
thread in arrival order, so without this one account's 16 concurrent statement reads
would sit in front of every other account's balance read.

``AccountStreams`` lets each account hold at most ``event_streams_per_account`` event
streams open on this replica (429 past that): each stream reads the ledger on every
wake-up, so 300 of one account's streams slowed every other account's reads 25-fold.

``SlowClientGuard`` closes connections whose request headers trickle in. aiohttp closes a
connection idle for its ``keepalive_timeout`` (also one that never sends a byte) and
bounds a handler's unread body with its lingering time, but a request head sent a byte
at a time counts from the last answer, not from its first byte. The guard wraps each
connection's protocol: the first byte of a request head starts a ``header_timeout``
timer, and the request reaching a handler (the ``request_started`` middleware) stops it.
Bodies are read under ``body_timeout`` by ``runtime.api.errors.read_body``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from runtime.api.errors import HttpRefusal

WAITING_PER_RUNNING = 4  # reads that may wait, per read an account may run at once
RETRY_AFTER_READS = 1  # seconds, for the 429
RETRY_AFTER_STREAMS = 5  # seconds, for the 429 of one stream too many
TIMER_SLACK = 0.001  # seconds: a timer asyncio runs this early counts as on time

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AccountReads:
    """At most ``per_account`` expensive reads per account at once on this replica."""

    def __init__(self, per_account: int) -> None:
        self._per_account = per_account
        self._running: dict[str, int] = {}
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, account_id: str, *, refuse: bool = True) -> AsyncIterator[None]:
        """Hold one of the account's read slots; 429 if too many already wait (unless not
        ``refuse``: an event stream, bounded by ``AccountStreams``, waits its turn)."""
        if self._running.get(account_id, 0) >= self._per_account:
            waiting = self._waiting.setdefault(account_id, [])
            if refuse and len(waiting) >= self._per_account * WAITING_PER_RUNNING:
                raise HttpRefusal(
                    429,
                    "too_many_reads",
                    f"this account already has {self._per_account} reads running and "
                    f"{len(waiting)} waiting on this gateway "
                    "(gateway.reads_in_flight_per_account); retry after Retry-After seconds",
                    {"Retry-After": str(RETRY_AFTER_READS)},
                )
            turn = asyncio.get_running_loop().create_future()
            waiting.append(turn)
            try:
                await turn  # the slot is handed over by the read that ends (see _release)
            except BaseException:
                if turn in waiting:
                    waiting.remove(turn)
                elif turn.done() and not turn.cancelled():
                    self._release(account_id)  # handed over, but we are gone: pass it on
                raise
        else:
            self._running[account_id] = self._running.get(account_id, 0) + 1
        try:
            yield
        finally:
            self._release(account_id)

    def _release(self, account_id: str) -> None:
        waiting = self._waiting.get(account_id)
        while waiting:
            turn = waiting.pop(0)
            if not turn.done():
                turn.set_result(None)  # the slot passes to it: running stays as it is
                return
        self._waiting.pop(account_id, None)
        running = self._running.get(account_id, 0) - 1
        if running > 0:
            self._running[account_id] = running
        else:
            self._running.pop(account_id, None)

    def running(self, account_id: str) -> int:
        return self._running.get(account_id, 0)


class AccountStreams:
    """At most ``per_account`` open event streams per account on this replica."""

    def __init__(self, per_account: int) -> None:
        self._per_account = per_account
        self._open: dict[str, int] = {}

    @contextlib.contextmanager
    def stream(self, account_id: str) -> Iterator[None]:
        """Count one open stream of the account while inside; 429 if it has too many."""
        if self._open.get(account_id, 0) >= self._per_account:
            raise HttpRefusal(
                429,
                "too_many_streams",
                f"this account already has {self._per_account} event streams open on this "
                "gateway (gateway.event_streams_per_account): close one (the account-wide "
                "GET /v1/events carries every job's changes), or retry after Retry-After "
                "seconds",
                {"Retry-After": str(RETRY_AFTER_STREAMS)},
            )
        self._open[account_id] = self._open.get(account_id, 0) + 1
        try:
            yield
        finally:
            left = self._open[account_id] - 1
            if left:
                self._open[account_id] = left
            else:
                del self._open[account_id]

    def open(self, account_id: str) -> int:
        return self._open.get(account_id, 0)


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with a timer for a request head.

    The timer is lazy: a head's first byte notes the time, and the connection's one timer
    (armed if none is) looks at the head it finds when it fires, closing the connection
    if that head is ``header_timeout`` old, else waiting for the rest of its time. So a
    busy keep-alive connection arms a timer about once per ``header_timeout``, not once
    per request."""

    def __init__(self, guard: SlowClientGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None  # loop time of the waiting head's first byte
        self.busy = False  # a request of this connection is in a handler
        self.closed_slow = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._guard.connections[transport] = self
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self._head_since is None:
            loop = asyncio.get_running_loop()
            self._head_since = loop.time()
            if self._timer is None:
                self._timer = loop.call_at(
                    self._head_since + self._guard.header_timeout, self._look
                )
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._transport is not None:
            self._guard.connections.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_started(self) -> None:
        self.busy = True
        self._head_since = None  # the timer, if armed, finds no head waiting

    def request_ended(self) -> None:
        self.busy = False  # the next request's first byte notes a new head

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _look(self) -> None:
        self._timer = None
        since = self._head_since
        if self.busy or since is None or self._transport is None:
            return  # no head waiting: the next one arms the timer again
        due = since + self._guard.header_timeout
        loop = asyncio.get_running_loop()
        if due - loop.time() > TIMER_SLACK:  # a later head than the timer was armed for
            self._timer = loop.call_at(due, self._look)
            return
        self.closed_slow = True
        self._guard.closed += 1
        self._transport.close()


class SlowClientGuard:
    """Wraps a server's protocol factory (see the module docstring)."""

    def __init__(self, header_timeout: float) -> None:
        self.header_timeout = header_timeout
        self.connections: dict[Any, _GuardedConnection] = {}
        self.closed = 0  # connections closed for a slow request head

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedConnection(self, factory())

    def middleware(self) -> Middleware:
        @web.middleware
        async def request_started(request: web.Request, handler: Handler) -> web.StreamResponse:
            connection = self.connections.get(request.transport)
            if connection is None:  # not served through this guard (a test server)
                return await handler(request)
            connection.request_started()
            try:
                return await handler(request)
            finally:
                connection.request_ended()

        return request_started


class GuardedSite(web.BaseSite):
    """aiohttp's TCP site with every connection behind a ``SlowClientGuard``, on a port
    replicas share (``SO_REUSEPORT``)."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: SlowClientGuard
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.wrap(server), self._host, self._port, reuse_port=True
        )
