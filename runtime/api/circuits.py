"""Which vendors' circuits are open, as this gateway last heard (DESIGN §3.1).

A new job goes to the first vendor of its model's route whose circuit is not open, so
that no job pays a ledger write and an actor hop to be bounced off an open circuit. The
processors own the circuits; the gateway keeps a view of them, refreshed from each
processor's ``stats()`` at most every ``REFRESH_INTERVAL`` seconds, in the background
and only while jobs arrive: no extra call per job, none on an idle gateway. The view
may lag by about that long; the processor still decides (it fails a job over, or keeps
it waiting, by its own circuit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from runtime.clock import Clock
from runtime.config import RouteStep
from runtime.policies import CircuitState
from runtime.ports import Router
from runtime.telemetry import get_logger

log = get_logger("gateway")

REFRESH_INTERVAL = 1.0  # seconds between two refreshes of the view
STATS_TIMEOUT = 2.0


class CircuitView:
    def __init__(
        self,
        router: Router,
        clock: Clock,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        interval: float = REFRESH_INTERVAL,
    ) -> None:
        self._router = router
        self._clock = clock
        self._spawn = spawn
        self._interval = interval
        self._open: set[str] = set()
        self._refreshed_at: float | None = None
        self._refreshing = False

    def is_open(self, vendor: str) -> bool:
        return vendor in self._open

    def route_position(self, route: Sequence[RouteStep]) -> int:
        """Where a new job starts on ``route``: the first vendor whose circuit is not open;
        with every circuit open, the last vendor (where the job would end up waiting)."""
        self._refresh_if_stale()
        for position, step in enumerate(route):
            if step.vendor not in self._open:
                return position
        return len(route) - 1

    def _refresh_if_stale(self) -> None:
        now = self._clock.time()
        stale = self._refreshed_at is None or now - self._refreshed_at >= self._interval
        if stale and not self._refreshing:
            self._refreshing = True
            self._refreshed_at = now
            self._spawn(self._refresh())

    async def _refresh(self) -> None:
        try:
            vendors = self._router.vendors()
            answers = await asyncio.gather(
                *(self._circuit(vendor) for vendor in vendors), return_exceptions=True
            )
            for vendor, answer in zip(vendors, answers, strict=True):
                if isinstance(answer, BaseException):
                    continue  # unreachable now: keep what was known
                if answer == CircuitState.OPEN.value:
                    self._open.add(vendor)
                else:
                    self._open.discard(vendor)
        finally:
            self._refreshing = False

    async def _circuit(self, vendor: str) -> str | None:
        stats = await asyncio.wait_for(self._router.processor(vendor).stats(), STATS_TIMEOUT)
        circuit = stats.get("circuit")
        return circuit if isinstance(circuit, str) else None
