"""The job state machine: every (status, event) pair, checked against the table."""

import itertools

import pytest

from runtime.errors import IllegalTransition
from runtime.states import (
    TERMINAL,
    TRANSITIONS,
    JobEvent,
    JobStatus,
    mermaid_diagram,
    sources_of,
    transition,
)

EXPECTED_LEGAL = {
    (JobStatus.QUEUED, JobEvent.SUBMITTED): JobStatus.PROCESSING,
    (JobStatus.QUEUED, JobEvent.RETRY): JobStatus.QUEUED,
    (JobStatus.QUEUED, JobEvent.FAILED): JobStatus.FAILED,
    (JobStatus.QUEUED, JobEvent.CANCELED): JobStatus.CANCELED,
    (JobStatus.QUEUED, JobEvent.EXPIRED): JobStatus.FAILED,
    (JobStatus.PROCESSING, JobEvent.RETRY): JobStatus.QUEUED,
    (JobStatus.PROCESSING, JobEvent.SUCCEEDED): JobStatus.COMPLETED,
    (JobStatus.PROCESSING, JobEvent.FAILED): JobStatus.FAILED,
    (JobStatus.PROCESSING, JobEvent.CANCELED): JobStatus.CANCELED,
    (JobStatus.PROCESSING, JobEvent.EXPIRED): JobStatus.FAILED,
}


@pytest.mark.parametrize(("status", "event"), list(itertools.product(JobStatus, JobEvent)))
def test_every_pair(status: JobStatus, event: JobEvent) -> None:
    if status in TERMINAL:
        move = transition(status, event)
        assert move.after is status
        assert not move.changed
        assert not move.settles
    elif (status, event) in EXPECTED_LEGAL:
        move = transition(status, event)
        assert move.after is EXPECTED_LEGAL[(status, event)]
        assert move.changed
        assert move.settles == move.after.terminal
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(status, event)
        assert info.value.status == status.value
        assert info.value.event == event.value
        assert status.value in str(info.value)


def test_a_queued_job_cannot_complete_without_a_vendor_task() -> None:
    with pytest.raises(IllegalTransition):
        transition(JobStatus.QUEUED, JobEvent.SUCCEEDED)


def test_processing_cannot_be_submitted_again() -> None:
    with pytest.raises(IllegalTransition):
        transition(JobStatus.PROCESSING, JobEvent.SUBMITTED)


def test_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    assert all(TRANSITIONS[s] == {} for s in TERMINAL)


def test_sources_of_matches_the_table() -> None:
    assert sources_of(JobEvent.SUCCEEDED) == {JobStatus.PROCESSING}
    assert sources_of(JobEvent.CANCELED) == {JobStatus.QUEUED, JobStatus.PROCESSING}
    assert sources_of(JobEvent.SUBMITTED) == {JobStatus.QUEUED}


def test_every_non_terminal_status_can_reach_every_terminal_status() -> None:
    for start in (JobStatus.QUEUED, JobStatus.PROCESSING):
        reached: set[JobStatus] = set()
        frontier = [start]
        while frontier:
            status = frontier.pop()
            for after in TRANSITIONS[status].values():
                if after not in reached:
                    reached.add(after)
                    frontier.append(after)
        assert reached >= TERMINAL


def test_diagram_is_generated_from_the_table() -> None:
    diagram = mermaid_diagram()
    for status, moves in TRANSITIONS.items():
        for event, after in moves.items():
            assert f"{status.value} --> {after.value}: {event.value}" in diagram
