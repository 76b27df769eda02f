"""Virtual time: an asyncio event loop whose clock jumps to the next timer whenever every
task is waiting, and the ``Clock`` the roles read from it.

The loop is ``looptime``'s (PyPI: "fast-forward asyncio event loop time"): a mixin over
asyncio's own selector loop that keeps the loop's time as an integer count of
microseconds and, instead of sleeping in ``select()``, moves that count to the next
scheduled handle. Everything that waits on the loop runs on it unchanged: ``asyncio.sleep``,
``wait_for`` timeouts, ``call_later``, so the processors' backoff, token buckets, circuit
cooldowns, polling, the sweeper's interval, the fake vendors' latencies and every
deadline. Nothing else is patched: the simulation never opens a socket or a thread, so
the loop's only events are its own timers and ready callbacks, in an order that depends on
nothing but the program and the seed.

``noop_cycles=0``: looptime by default lets 42 idle loop turns pass before it moves time,
to give threads and sockets a chance to answer first. A simulation has neither, and one
turn is enough. For the same reason the loop polls no file descriptors: its selector
(:class:`NoSockets`) answers "nothing ready" without a system call, which was a tenth of
the run's time with epoll.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import looptime

T = TypeVar("T")

EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: what the simulated wall clock starts at


class VirtualClock:
    """The roles' ``runtime.clock.Clock`` on the virtual-time loop it was made on: seconds
    since the epoch (starting at ``EPOCH``), and sleeps that cost no wall time."""

    def __init__(self, epoch: float = EPOCH) -> None:
        self.epoch = epoch
        self._loop_time = asyncio.get_running_loop().time

    def time(self) -> float:
        return self.epoch + self._loop_time()

    def elapsed(self) -> float:
        """Virtual seconds since the run started."""
        return self._loop_time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def __repr__(self) -> str:
        return f"VirtualClock(epoch={self.epoch})"


class NoSockets(selectors.BaseSelector):
    """A selector for a loop that waits on no file descriptor: registering one is kept
    (asyncio registers its self-pipe), and nothing is ever ready."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, _fd(fileobj), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a fresh virtual-time loop starting at 0."""
    base = asyncio.SelectorEventLoop(NoSockets())
    loop = looptime.patch_event_loop(base, start=0.0, noop_cycles=0)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftovers(loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    # Cancelled in creation order (a WeakSet's order is the memory's): a seed's run ends
    # the same way every time.
    pending.sort(key=_creation_order)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def _creation_order(task: asyncio.Task[Any]) -> tuple[int, str]:
    """asyncio names tasks ``Task-<n>`` in creation order; named tasks go last."""
    name = task.get_name()
    number = name.removeprefix("Task-")
    return (int(number), "") if number.isdigit() else (1 << 62, name)
