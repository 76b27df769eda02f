"""Calls between roles on the same machine over a Unix socket, not a Ray actor call.

A Ray actor call costs 3-4 ms of CPU across caller, callee and Ray's threads on this kind
of machine, however small the message (issue 16: a call that does nothing costs its
receiver 1.5-3.3 ms); the same request and answer over a Unix socket cost tens of
microseconds each side. Roles call each other several times per job (dispatch, start,
record, complete), so where two roles share a machine their calls take the socket, and Ray
stays the way to every role elsewhere, and the fallback whenever the socket is not there.

- **Server.** Every ``RoleHost`` serves its role's calls (``NearbyServer``) on a socket in
  Linux's abstract namespace named after its Ray actor id: no file is left behind when the
  process dies, and a restarted actor (the same id) serves at the same name.
- **Who may call.** Both ends check the other's user with ``SO_PEERCRED``: only a process
  of the same user (as Ray's own sockets allow) is answered, and a caller only believes a
  server of its own user. The caller's first message names the actor id it means; a
  server of another id refuses it.
- **Not here.** When the socket cannot be reached (another machine, another network
  namespace such as another pod, the actor restarting, another user holding the name), the
  call raises ``NotNearby`` and the caller calls through Ray (``RemoteProxy``). The caller
  then looks again only after ``LOOK_AGAIN`` seconds.
- **Lost.** When the connection breaks with calls in flight, each raises ``CallLost``: the
  call may or may not have run. ``RemoteProxy`` sends such a call again through Ray where
  the role's calls are retried across restarts anyway (``max_task_retries``), as Ray would.
- **Errors** come back as ``ray_calls.forward``'s do: a ``JoblineError``, ``OSError`` or
  ``TimeoutError`` the method raised comes back as itself; anything else is logged by the
  server and comes back as ``ActorCallFailed``.

Messages are length-prefixed pickles (4 bytes, big-endian): the hello ``(MAGIC,
actor_id)`` and its answer ``(MAGIC, actor_id)``; a request ``(call_id, method, args,
kwargs)``; an answer ``(call_id, ok, value_or_error)``. Pickle is safe here because only
processes of the same user can connect, and those can read Ray's own pickles too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.errors import ActorCallFailed
from runtime.telemetry import get_logger

log = get_logger("nearby_calls")

MAGIC = "jobline-call/1"
LOOK_AGAIN = 2.0  # seconds before a caller that found no socket looks again
MAX_FRAME = 1 << 30  # bytes: a message longer than this is a broken connection
DRAIN_ABOVE = 1 << 20  # bytes buffered for the peer before a writer waits for it
_LENGTH = struct.Struct(">I")
_PEERCRED = struct.Struct("3i")  # pid, uid, gid (Linux's struct ucred)

# What one call of a role's method is: (method, args, kwargs) -> the method's answer.
Serve = Callable[..., Awaitable[Any]]
# The error a caller gets for what a method raised (``ray_calls.answerable``).
ErrorFor = Callable[[BaseException, str], BaseException]


class NotNearby(Exception):
    """No socket of this actor can be reached from here: call it through Ray."""


class CallLost(Exception):
    """The connection to the actor broke after the call was sent: it may or may not
    have run (as when a Ray actor dies during a call)."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(method, reason)
        self.method = method
        self.reason = reason

    def __str__(self) -> str:
        return f"the nearby call {self.method} was lost: {self.reason}"


def supported() -> bool:
    """Abstract Unix sockets and ``SO_PEERCRED`` are Linux's."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_PEERCRED")


def address(actor_id: str) -> str:
    """The abstract socket name of the actor ``actor_id`` (hex)."""
    return f"\0{MAGIC}/{actor_id}"


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        _, uid, _ = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except OSError:
        return None
    return int(uid)


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def _read(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ConnectionError(f"a message of {length} bytes")
    return pickle.loads(await reader.readexactly(length))


async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    if writer.transport.get_write_buffer_size() > DRAIN_ABOVE:
        await writer.drain()


class NearbyServer:
    """Serves one role's calls to callers on this machine (the module docstring).

    ``serve(method, *args, **kwargs)`` runs a call; ``error_for(exc, method)`` is the error
    the caller gets for what it raised.
    """

    def __init__(self, actor_id: str, serve: Serve, error_for: ErrorFor) -> None:
        self._actor_id = actor_id
        self._serve = serve
        self._error_for = error_for
        self._server: asyncio.AbstractServer | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.StreamWriter] = set()
        self.served = 0  # calls answered

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen; if the name cannot be had, callers find nothing and call through Ray."""
        if not supported():
            return
        try:
            self._server = await asyncio.start_unix_server(
                self._connection, address(self._actor_id)
            )
        except OSError as exc:  # the name is held (a process of this id still alive)
            log.warning("nearby calls not served: %s", exc)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.close()  # its caller's calls in flight are lost (``CallLost``)
        for task in list(self._calls):
            task.cancel()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            if _peer_uid(writer) != os.getuid():
                return
            hello = await _read(reader)
            if hello != (MAGIC, self._actor_id):
                return
            await _write(writer, _frame((MAGIC, self._actor_id)))
            while True:
                call_id, method, args, kwargs = await _read(reader)
                task = asyncio.create_task(self._answer(writer, call_id, method, args, kwargs))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError, ValueError):
            pass  # the caller went, or sent what is not a call: its calls are lost to it
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        call_id: int,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        try:
            answer: tuple[int, bool, Any] = (
                call_id,
                True,
                await self._serve(method, *args, **kwargs),
            )
        except Exception as exc:
            answer = (call_id, False, self._error_for(exc, method))
        try:
            data = _frame(answer)
        except Exception as exc:  # an answer pickle cannot carry (a bug in the role)
            log.error("the answer of %s cannot be sent: %r", method, exc)
            data = _frame((call_id, False, ActorCallFailed(method, "answer cannot be pickled")))
        if not writer.is_closing():
            with contextlib.suppress(ConnectionError):
                await _write(writer, data)
        self.served += 1


class NearbyClient:
    """A caller's connection to one actor's ``NearbyServer`` on this machine: opened on
    the first call, shared by every call of this process to that actor."""

    def __init__(self, actor_id: str, *, now: Callable[[], float] = time.monotonic) -> None:
        self._actor_id = actor_id
        self._now = now
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._look_again = 0.0  # no socket found: Ray until then
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._ids = itertools.count(1)
        self.calls = 0  # calls that went over the socket

    async def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``method(*args, **kwargs)`` on the actor: its answer, or what it raised.
        NotNearby: not sent (call through Ray); CallLost: sent, answer lost."""
        writer = self._writer if self._writer is not None else await self._connect()
        call_id = next(self._ids)
        try:
            data = _frame((call_id, method, args, kwargs))
        except Exception as exc:  # an argument pickle cannot carry; Ray's cloudpickle may
            raise NotNearby(f"arguments of {method}: {exc!r}") from None
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (method, waiter)
        try:
            await _write(writer, data)
            self.calls += 1
            return await waiter
        except ConnectionError as exc:
            raise CallLost(method, repr(exc)) from None
        finally:
            self._pending.pop(call_id, None)

    async def _connect(self) -> asyncio.StreamWriter:
        if self._now() < self._look_again or not supported():
            raise NotNearby(self._actor_id)
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            try:
                reader, writer = await asyncio.open_unix_connection(address(self._actor_id))
            except OSError as exc:  # nothing serves this id here
                self._look_again = self._now() + LOOK_AGAIN
                raise NotNearby(f"{self._actor_id}: {exc}") from None
            try:
                if _peer_uid(writer) != os.getuid():
                    raise ConnectionError("served by another user")
                await _write(writer, _frame((MAGIC, self._actor_id)))
                if await _read(reader) != (MAGIC, self._actor_id):
                    raise ConnectionError("served by another actor")
            except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
                writer.close()
                self._look_again = self._now() + LOOK_AGAIN
                raise NotNearby(f"{self._actor_id}: {exc!r}") from None
            self._writer = writer
            self._reading = asyncio.create_task(self._read_answers(reader, writer))
            return writer

    async def _read_answers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        reason = "closed"
        try:
            while True:
                call_id, ok, value = await _read(reader)
                pending = self._pending.get(call_id)
                if pending is None or pending[1].done():
                    continue  # its caller stopped waiting
                if ok:
                    pending[1].set_result(value)
                else:
                    pending[1].set_exception(value)
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            pickle.UnpicklingError,
            ValueError,
        ) as exc:
            reason = repr(exc)
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            for method, waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(CallLost(method, reason))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
