"""When a vendor task is first polled: ``runtime.polling.WebhookHealth``."""

from __future__ import annotations

from runtime.polling import WebhookHealth


def health() -> WebhookHealth:
    return WebhookHealth(1.0, 5.0, streak_needed=3, late_within=2.0)


def test_polls_start_at_the_poll_interval_until_webhooks_have_arrived_in_a_row() -> None:
    webhooks = health()
    for _ in range(2):
        webhooks.ended_by_webhook()
        assert webhooks.first_poll(0.0) == 1.0
    webhooks.ended_by_webhook()
    assert webhooks.arriving(0.0) and webhooks.first_poll(0.0) == 5.0


def test_a_webhook_that_comes_soon_after_a_poll_saw_the_end_counts_as_arrived() -> None:
    webhooks = health()
    for n in range(3):  # every end seen by a poll first, each webhook 1.5 s later
        webhooks.ended_by_poll(f"t{n}", 10.0 * n)
        webhooks.webhook_came(f"t{n}", 10.0 * n + 1.5)
    assert webhooks.first_poll(30.0) == 5.0 and webhooks.lost == 0


def test_a_webhook_that_never_comes_after_a_poll_saw_the_end_is_lost() -> None:
    webhooks = health()
    for _ in range(2):  # one short of the streak: polls run from the poll interval
        webhooks.ended_by_webhook()
    webhooks.ended_by_poll("lost", 100.0)
    webhooks.first_poll(101.9)
    assert webhooks.lost == 0  # it may still come
    webhooks.first_poll(102.0)
    assert webhooks.lost == 1  # it did not: lost, and the streak starts again
    webhooks.webhook_came("lost", 103.0)  # too late to count
    for _ in range(2):
        webhooks.ended_by_webhook()
    assert webhooks.first_poll(104.0) == 1.0
    webhooks.ended_by_webhook()
    assert webhooks.first_poll(104.0) == 5.0


def test_webhooks_for_tasks_not_awaited_change_nothing() -> None:
    webhooks = health()
    webhooks.webhook_came("someone-else", 0.0)
    webhooks.webhook_came("someone-else", 0.1)
    assert not webhooks.arriving(0.2)


def test_a_fallback_shorter_than_the_poll_interval_is_the_poll_interval() -> None:
    webhooks = WebhookHealth(2.0, 0.5, streak_needed=0)
    assert webhooks.first_poll(0.0) == 2.0


def test_the_ends_awaiting_a_webhook_are_bounded_and_the_dropped_count_as_lost() -> None:
    from runtime import polling

    webhooks = WebhookHealth(1.0, 5.0, streak_needed=1, late_within=1e9)
    for n in range(polling.MAX_AWAITED + 2):
        webhooks.ended_by_poll(f"t{n}", 0.0)
    assert webhooks.lost == 2
    webhooks.webhook_came("t0", 1.0)  # dropped: no longer awaited
    assert not webhooks.arriving(1.0)
    webhooks.webhook_came(f"t{polling.MAX_AWAITED + 1}", 1.0)
    assert webhooks.arriving(1.0)


def offsets(poll_interval: float, first: float, n: int) -> list[float]:
    from itertools import islice

    from runtime.polling import poll_offsets

    return [round(t, 3) for t in islice(poll_offsets(poll_interval, first), n)]


def test_polls_back_off_from_the_poll_interval_up_to_ten_seconds_apart() -> None:
    assert offsets(1.0, 1.0, 7) == [1.0, 2.5, 4.75, 8.125, 13.188, 20.781, 30.781]


def test_while_webhooks_arrive_the_polls_before_the_fallback_are_left_out_only() -> None:
    # Review (wave 9): the backoff went on from the fallback (5, 12.5, 22.5, ...), so a
    # lost webhook of a 5.7-s task was seen at 12.5 s instead of 8.1 s.
    assert offsets(1.0, 5.0, 4) == [5.0, 8.125, 13.188, 20.781]
    assert offsets(1.0, 4.75, 3) == [4.75, 8.125, 13.188]


def test_a_poll_interval_longer_than_the_cap_keeps_its_own_pace() -> None:
    assert offsets(20.0, 20.0, 3) == [20.0, 40.0, 60.0]


def test_an_operator_hears_when_webhooks_start_stop_and_never_come() -> None:
    from runtime.polling import NONE_ARRIVE_AFTER, WebhookNews

    heard: list[WebhookNews] = []
    webhooks = WebhookHealth(1.0, 5.0, heard.append, streak_needed=3, late_within=2.0)
    for _ in range(4):
        webhooks.ended_by_webhook()
    assert heard == [WebhookNews.ARRIVING]  # once, when the streak completes
    for n in range(NONE_ARRIVE_AFTER):
        webhooks.ended_by_poll(f"t{n}", 10.0 * n)
    webhooks.first_poll(1000.0)
    assert heard == [WebhookNews.ARRIVING, WebhookNews.STOPPED, WebhookNews.NONE_ARRIVE]


def test_while_polls_are_left_out_an_end_a_poll_sees_first_is_a_lost_webhook() -> None:
    # Review (wave 9): webhooks 6 s late still "arrived" (within the window after the 5-s
    # poll), so every task held its slot until that poll and a backlog grew without end.
    webhooks = health()
    for _ in range(3):
        webhooks.ended_by_webhook()
    assert webhooks.first_poll(0.0) == 5.0
    webhooks.ended_by_poll("late", 5.0)
    assert webhooks.first_poll(5.0) == 1.0 and webhooks.lost == 1
    webhooks.webhook_came("late", 6.0)  # it came, late: polls stay at the poll interval
    assert webhooks.first_poll(6.0) == 1.0
