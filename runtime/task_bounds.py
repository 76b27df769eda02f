"""How long jobline waits on one vendor task, phase by phase: pure.

Theory of operation
-------------------
A task is first *queued* at the vendor (replicate ``starting``, fal ``IN_QUEUE``: a cold
boot keeps it there for minutes), then *running*, then ended. A model names how long
each phase may last (``models.X.max_queue_time``, ``max_run_time``): a task the vendor
reports queued or running within those bounds is never given up on, whatever its
vendor's other timings say. Separately, a task whose status cannot be read at all (every
read failing) is given up after the vendor's ``stuck_after``.

:class:`TaskWatch` is fed what the caller learns (``saw(state, now)``, ``unreadable(now)``)
and says when the task is overdue (``overdue(now)``: the reason, or None) and when it
next could be (``next_deadline()``), so the caller sleeps until then, never in a loop::

    watch = TaskWatch(bounds, submitted_at=now)
    watch.saw(TaskState.PENDING, now)
    if (reason := watch.overdue(now)) is not None:
        ...  # cancel the task, retry the job

The clock is the caller's: every method takes ``now`` (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.vendors.base import TaskState

__all__ = ["TaskBounds", "TaskWatch"]


@dataclass(frozen=True, slots=True)
class TaskBounds:
    """Seconds a task may spend queued, running, and with an unreadable status."""

    max_queue_time: float
    max_run_time: float
    unreadable_after: float

    @property
    def total(self) -> float:
        return self.max_queue_time + self.max_run_time


@dataclass(slots=True)
class TaskWatch:
    """One task's timeline as jobline observed it (see the module docstring).

    ``submitted_at``: when the task was created (or, for a task found later, the time it
    is known to have existed since). ``running_since``: when it was first seen running
    (None while queued or unknown). ``unreadable_since``: when status reads began to
    fail in a row (None while they answer).
    """

    bounds: TaskBounds
    submitted_at: float
    running_since: float | None = None
    unreadable_since: float | None = None
    last_state: TaskState | None = None

    def saw(self, state: TaskState, now: float) -> None:
        """The vendor reported ``state`` at ``now``."""
        self.unreadable_since = None
        self.last_state = state
        if state is not TaskState.PENDING and self.running_since is None:
            self.running_since = now

    def unreadable(self, now: float) -> None:
        """A status read failed at ``now``."""
        if self.unreadable_since is None:
            self.unreadable_since = now

    @property
    def started(self) -> bool:
        """It was seen running (or ended): the vendor bills it."""
        return self.running_since is not None

    def queue_deadline(self) -> float:
        return self.submitted_at + self.bounds.max_queue_time

    def run_deadline(self) -> float:
        """The end of its running phase: ``max_run_time`` after it was first seen running,
        but never past its whole bound from ``submitted_at`` plus ``max_run_time`` (a
        task first seen running long after it started is not given extra time twice)."""
        assert self.running_since is not None
        latest = self.submitted_at + self.bounds.total
        return min(self.running_since + self.bounds.max_run_time, latest)

    def next_deadline(self) -> float:
        """The earliest time ``overdue`` may answer something other than None."""
        phase = self.queue_deadline() if self.running_since is None else self.run_deadline()
        if self.unreadable_since is not None:
            return min(phase, self.unreadable_since + self.bounds.unreadable_after)
        return phase

    def overdue(self, now: float) -> str | None:
        """Why the task should be given up on at ``now``, or None."""
        bounds = self.bounds
        if self.unreadable_since is not None and now >= (
            self.unreadable_since + bounds.unreadable_after
        ):
            return f"its status could not be read for {bounds.unreadable_after:g}s"
        if self.running_since is None and now >= self.queue_deadline():
            return f"still queued at the vendor after {bounds.max_queue_time:g}s"
        if self.running_since is not None and now >= self.run_deadline():
            return f"still running after {bounds.max_run_time:g}s"
        return None
