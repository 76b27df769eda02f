"""The job state machine, as a table.

Theory of operation
-------------------
A job is ``queued`` from the moment the ledger opens it (with its credit hold) until
a vendor accepts it; then it is ``processing`` until the vendor task ends. A transient
failure sends it back to ``queued`` with a ``not_before`` time (the backoff), possibly
on the next vendor of its route. It ends in exactly one of three terminal states:
``completed`` (the hold is captured), ``failed`` or ``canceled`` (the hold is released).

Terminal states absorb: any event on a terminal job leaves it where it is, because
late, duplicate and out-of-order vendor events are normal. Every other move the table
does not list is a bug in the caller and raises :class:`IllegalTransition`.

This module is pure: the ledger enforces the same rules again in SQL so that two
racing writers cannot both settle a job.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from runtime.errors import IllegalTransition


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class JobEvent(enum.StrEnum):
    SUBMITTED = "submitted"  # the vendor accepted the task and gave its task id
    RETRY = "retry"  # a transient failure: back to the queue, with a backoff
    SUCCEEDED = "succeeded"  # the output is stored; capture the hold
    FAILED = "failed"  # permanent failure or everything spent; release the hold
    CANCELED = "canceled"  # the client canceled; release the hold
    EXPIRED = "expired"  # the whole deadline passed; release the hold


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED}
)

TRANSITIONS: dict[JobStatus, dict[JobEvent, JobStatus]] = {
    JobStatus.QUEUED: {
        JobEvent.SUBMITTED: JobStatus.PROCESSING,
        JobEvent.RETRY: JobStatus.QUEUED,
        JobEvent.FAILED: JobStatus.FAILED,
        JobEvent.CANCELED: JobStatus.CANCELED,
        JobEvent.EXPIRED: JobStatus.FAILED,
    },
    JobStatus.PROCESSING: {
        JobEvent.RETRY: JobStatus.QUEUED,
        JobEvent.SUCCEEDED: JobStatus.COMPLETED,
        JobEvent.FAILED: JobStatus.FAILED,
        JobEvent.CANCELED: JobStatus.CANCELED,
        JobEvent.EXPIRED: JobStatus.FAILED,
    },
    JobStatus.COMPLETED: {},
    JobStatus.FAILED: {},
    JobStatus.CANCELED: {},
}


@dataclass(frozen=True, slots=True)
class Transition:
    before: JobStatus
    event: JobEvent
    after: JobStatus

    @property
    def changed(self) -> bool:
        """False when a terminal job absorbed the event."""
        return not self.before.terminal

    @property
    def settles(self) -> bool:
        """True when this move writes the job's one settlement (capture or release)."""
        return self.changed and self.after.terminal


def transition(status: JobStatus, event: JobEvent) -> Transition:
    """The move ``event`` makes from ``status``; raises IllegalTransition if forbidden."""
    if status.terminal:
        return Transition(status, event, status)
    after = TRANSITIONS[status].get(event)
    if after is None:
        raise IllegalTransition(status.value, event.value)
    return Transition(status, event, after)


def sources_of(event: JobEvent) -> frozenset[JobStatus]:
    """The non-terminal statuses from which ``event`` is legal (for SQL guards)."""
    return frozenset(s for s, moves in TRANSITIONS.items() if event in moves)


def mermaid_diagram() -> str:
    """The state diagram, generated from the table (the README embeds its output)."""
    lines = ["stateDiagram-v2", "    [*] --> queued"]
    for status, moves in TRANSITIONS.items():
        for event, after in moves.items():
            lines.append(f"    {status.value} --> {after.value}: {event.value}")
    lines.extend(f"    {s.value} --> [*]" for s in sorted(TERMINAL))
    return "\n".join(lines)
