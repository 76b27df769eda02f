"""A vendor's concurrency slots: taken and given back by one construct (I4).

A ``Slot`` is held from ``Slots.take()`` until its ``release()``, which is idempotent, so
a path that releases early (the vendor task ended: free the slot before the download)
and a ``with slot:`` around the whole attempt cannot give one slot back twice, and an
exception cannot skip the release. Every hold goes through it: an attempt, a resumed
task, a submit in doubt, a task canceled until the vendor confirms. ``hand_over`` moves a
held place to a new ``Slot`` (an attempt's slot kept for the task its lost submit may
have started) without giving it back in between.

``take()`` never refuses: a task the vendor is running holds a slot whether or not
there was room (a resumed task, a submit in doubt). ``has_room()`` is what decides
whether a new attempt may start. A slot may name its ``owner`` (the job's account); the
release callbacks get it (``runtime.fairness.Headroom`` counts each account's slots).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType


class Slots:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a slot limit must be at least 1, not {limit}")
        self.limit = limit
        self.taken = 0
        self._released: list[Callable[[str | None], None]] = []

    def __repr__(self) -> str:
        return f"Slots(taken={self.taken}, limit={self.limit})"

    def has_room(self) -> bool:
        """May one more attempt start now?"""
        return self.taken < self.limit

    def take(self, owner: str | None = None) -> Slot:
        self.taken += 1
        return Slot(self, owner)

    def on_release(self, callback: Callable[[str | None], None]) -> None:
        """Call ``callback(owner)`` every time a slot is given back (the processor wakes up)."""
        self._released.append(callback)

    def _give_back(self, owner: str | None) -> None:
        self.taken -= 1
        for callback in self._released:
            callback(owner)


class Slot:
    """One slot, held until ``release()`` (or the end of a ``with`` block)."""

    __slots__ = ("_held", "_slots", "owner")

    def __init__(self, slots: Slots, owner: str | None = None) -> None:
        self._slots = slots
        self._held = True
        self.owner = owner

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        """Give the slot back; a second call does nothing."""
        if self._held:
            self._held = False
            self._slots._give_back(self.owner)

    def hand_over(self) -> Slot:
        """A new ``Slot`` holding this one's place, which this one gives up without giving
        it back (its ``release`` does nothing now): an attempt whose submit is in doubt
        hands its slot to the hold kept for the task it may have started."""
        if not self._held:
            raise RuntimeError("a released slot cannot be handed over")
        self._held = False
        return Slot(self._slots, self.owner)

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
