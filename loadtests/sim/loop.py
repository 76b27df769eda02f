"""Virtual time: an asyncio event loop whose clock jumps to the next timer whenever every
task is waiting, and the ``Clock`` the roles read from it.

:class:`VirtualLoop` is asyncio's own selector loop with two things changed: ``time()``
reads a virtual count of seconds (starting at 0), and a turn of the loop
(:meth:`VirtualLoop._run_once`), instead of sleeping in ``select(timeout)``, moves that
count to the loop's next timer, the head of asyncio's own timer heap, when nothing is
ready (asyncio's own turn, still taken in debug mode, does it through the selector,
:class:`NoSockets`). Everything that waits on the loop runs on it
unchanged: ``asyncio.sleep``, ``wait_for`` timeouts, ``call_later``, so the processors'
backoff, token buckets, circuit cooldowns, polling, the sweeper's interval, the fake
vendors' latencies and every deadline. The simulation never opens a socket or a thread,
so the loop's only events are its own timers and ready callbacks, in an order that
depends on nothing but the program and the seed; a loop with nothing ready and no timer
can never wake up again, and says so (:class:`Deadlock`) instead of hanging.

It was ``looptime``'s loop (PyPI: "fast-forward asyncio event loop time") until the
simulation had to run 100k jobs a minute: looptime scans every task and executor future
on each turn of the loop (a tenth of the run's CPU, growing with the tasks alive) and
converts its integer microseconds on every ``time()``; the jump to the heap's head is all
the simulation needs of it, and is these few lines.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import selectors
from asyncio.base_events import (  # type: ignore[attr-defined]
    _MIN_CANCELLED_TIMER_HANDLES_FRACTION,
    _MIN_SCHEDULED_TIMER_HANDLES,
)
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

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


class Deadlock(RuntimeError):
    """Every task waits and no timer is set: nothing can ever run again."""


class NoSockets(selectors.BaseSelector):
    """A selector for a loop that waits on no file descriptor: registering one is kept
    (asyncio registers its self-pipe), nothing is ever ready, and a wait moves the
    loop's virtual time to its next timer instead of sleeping."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}
        self.loop: VirtualLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, _fd(fileobj), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Deadlock("every task waits on another and no timer is set")
        if timeout > 0 and self.loop is not None:
            self.loop.jump()
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop on virtual time (see the module docstring)."""

    def __init__(self) -> None:
        selector = NoSockets()
        super().__init__(selector)
        self._now = 0.0
        selector.loop = self

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        """One turn of the loop, as asyncio's ``BaseEventLoop._run_once`` takes it with a
        selector that has nothing to report: drop the cancelled timers at the heap's head,
        move time to the next timer if nothing is ready, make the due timers ready, run
        what is ready. The same callbacks in the same order, without a selector call, its
        empty events and the debug checks on every turn (a flaky job takes ~55 turns)."""
        loop: Any = self  # asyncio's private state, which typeshed does not spell out
        scheduled: list[Any] = loop._scheduled
        if loop._debug or (
            len(scheduled) > _MIN_SCHEDULED_TIMER_HANDLES
            and loop._timer_cancelled_count / len(scheduled) > _MIN_CANCELLED_TIMER_HANDLES_FRACTION
        ):
            super()._run_once()  # type: ignore[misc]  # asyncio's own turn (it rebuilds the heap)
            return
        ready: collections.deque[Any] = loop._ready
        while scheduled and scheduled[0]._cancelled:
            loop._timer_cancelled_count -= 1
            heapq.heappop(scheduled)._scheduled = False
        if not ready and not loop._stopping:
            if not scheduled:
                raise Deadlock("every task waits on another and no timer is set")
            self._now = max(self._now, scheduled[0]._when)
        end_time = self._now + loop._clock_resolution
        while scheduled and scheduled[0]._when < end_time:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            ready.append(handle)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()
        handle = None  # as asyncio: no reference cycle through the last handle

    def jump(self) -> None:
        """Move time to the earliest timer: the head of asyncio's heap, from which it has
        dropped the cancelled ones before it waits (and it waits only when nothing is
        ready)."""
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            self._now = max(self._now, scheduled[0].when())


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a fresh virtual-time loop starting at 0."""
    loop = VirtualLoop()
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
