"""The simulation's event trace: every event in the order it happened, as one line each,
folded into a hash; the last few hundred lines are kept to show what led to a violation.

A line is ``<virtual seconds, 6 decimals> <kind> <fields>``, built only from values a seed
decides (virtual times, job and task ids, statuses, counts), never from wall times,
memory addresses or an API key. Two runs of one seed give the same lines in the same
order, so the same hash; the hash is what ``jobline simulate`` prints.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from typing import TextIO


class Trace:
    """The run's events; ``sink``: a file that gets every line (``--trace``)."""

    def __init__(
        self, now: Callable[[], float], keep: int = 400, sink: TextIO | None = None
    ) -> None:
        self._now = now
        self._hash = hashlib.blake2b(digest_size=16)
        self.events = 0
        self.recent: deque[str] = deque(maxlen=keep)
        self.sink = sink

    def add(self, kind: str, *fields: object) -> None:
        line = f"{self._now():.6f} {kind} {' '.join(map(str, fields))}"
        self._hash.update(f"{line}\n".encode())  # the same digest as two updates
        self.events += 1
        self.recent.append(line)
        if self.sink is not None:
            self.sink.write(line + "\n")

    def digest(self) -> str:
        return self._hash.hexdigest()

    def tail(self, lines: int = 40) -> list[str]:
        return list(self.recent)[-lines:]
