"""How long a vendor task is waited on: per model, phase by phase (``TaskWatch``)."""

from __future__ import annotations

from runtime.task_bounds import TaskBounds, TaskWatch
from runtime.vendors import TaskState

BOUNDS = TaskBounds(max_queue_time=600.0, max_run_time=60.0, unreadable_after=2.0)
QUEUED, RUNNING = TaskState.PENDING, TaskState.RUNNING


def test_a_long_queue_and_a_long_run_within_the_models_bounds_are_never_given_up() -> None:
    """Field case 1: a task queued for a cold boot and running 6 s was canceled three
    times because the vendor's ``stuck_after`` (2 s) counted the queue too."""
    watch = TaskWatch(BOUNDS, submitted_at=0.0)
    for t in range(0, 300, 1):  # five minutes of cold boot, reported every second
        watch.saw(QUEUED, float(t))
        assert watch.overdue(float(t)) is None
    for t in range(300, 359):  # then 59 s of running
        watch.saw(RUNNING, float(t))
        assert watch.overdue(float(t)) is None
    assert watch.started


def test_past_the_queue_bound_the_task_is_overdue() -> None:
    watch = TaskWatch(BOUNDS, submitted_at=0.0)
    watch.saw(QUEUED, 599.0)
    assert watch.next_deadline() == 600.0
    assert watch.overdue(600.0) == "still queued at the vendor after 600s"
    assert not watch.started


def test_the_run_bound_counts_from_when_it_was_seen_running() -> None:
    watch = TaskWatch(BOUNDS, submitted_at=0.0)
    watch.saw(RUNNING, 100.0)
    assert watch.next_deadline() == 160.0
    assert watch.overdue(159.9) is None
    assert watch.overdue(160.0) == "still running after 60s"


def test_a_task_first_seen_late_gets_no_more_than_its_whole_bound() -> None:
    """A resumed task (a processor restarted) seen running for the first time long
    after it was submitted: its run bound ends with its whole bound."""
    watch = TaskWatch(BOUNDS, submitted_at=0.0)
    watch.saw(RUNNING, 650.0)
    assert watch.next_deadline() == 660.0


def test_an_unreadable_status_is_bounded_separately() -> None:
    watch = TaskWatch(BOUNDS, submitted_at=0.0)
    watch.saw(QUEUED, 10.0)
    watch.unreadable(11.0)
    watch.unreadable(12.0)  # a run of failures counts from its first
    assert watch.next_deadline() == 13.0
    assert watch.overdue(12.9) is None
    assert watch.overdue(13.0) == "its status could not be read for 2s"


def test_an_answer_ends_a_run_of_unreadable_statuses() -> None:
    watch = TaskWatch(BOUNDS, submitted_at=0.0)
    watch.unreadable(10.0)
    watch.saw(QUEUED, 11.5)
    assert watch.overdue(13.0) is None
    assert watch.next_deadline() == 600.0
