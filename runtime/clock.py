"""The clock every role reads and sleeps on, injected (never ``time.time`` directly).

A ``Clock`` gives the time in seconds since the epoch and sleeps. ``SystemClock`` is the
real one. A simulation passes a virtual one, so that timers, backoff, deadlines and
polling all run on time it controls. (``asyncio.wait_for`` timeouts run on the event
loop's own clock, which a virtual-time event loop drives.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` (at once for 0 or less)."""


class SystemClock:
    """The wall clock and ``asyncio.sleep``."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
