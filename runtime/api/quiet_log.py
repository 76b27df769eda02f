"""Log lines that anyone on the internet can cause, summarised so that they cannot flood
the operator's log: the first line per (source, reason), then at most one line per
``every`` seconds that counts the ones held back. Metrics still count each event.

Pure: the caller passes ``now``; ``note`` says what to log, the caller logs it.
"""

from __future__ import annotations

from dataclasses import dataclass

SUMMARY_EVERY = 60.0  # seconds between two lines for one (source, reason)
MAX_KEYS = 1024  # (source, reason) pairs remembered; past that, sources are pooled
OTHER_SOURCES = "other sources"


@dataclass(slots=True)
class _Seen:
    logged_at: float
    held_back: int


class QuietLog:
    def __init__(self, every: float = SUMMARY_EVERY, max_keys: int = MAX_KEYS) -> None:
        self._every = every
        self._max_keys = max_keys
        self._seen: dict[tuple[str, str], _Seen] = {}

    def note(self, source: str, reason: str, now: float) -> int:
        """One event from ``source`` for ``reason`` at ``now`` (seconds). Returns how many
        events a line logged now should report (1: this one; more: this one and those
        held back since the last line), or 0: log nothing."""
        key = (source, reason)
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self._max_keys:
                self._forget_quiet(now)
            if len(self._seen) >= self._max_keys:
                key = (OTHER_SOURCES, reason)
                seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now, 0)
            return 1
        if now - seen.logged_at < self._every:
            seen.held_back += 1
            return 0
        count = seen.held_back + 1
        seen.logged_at, seen.held_back = now, 0
        return count

    def _forget_quiet(self, now: float) -> None:
        """Drop the pairs whose last line is older than ``every`` and held nothing back."""
        for key, seen in list(self._seen.items()):
            if now - seen.logged_at >= self._every and seen.held_back == 0:
                del self._seen[key]
