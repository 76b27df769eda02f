"""How soon a vendor task's status is first polled: sooner while its vendor's webhooks
get lost, later while they arrive.

Polling is always on, as the fallback for a lost webhook (DESIGN §3). But while a
vendor's webhooks arrive, a poll of a task that is about to end races its webhook: it
finds the end first about as often as not (measured: 40% of 1-s tasks polled at 1 s),
and then the webhook that follows is one more ledger write and a status read (for fal,
two: the status and the result) the vendor counts against its rate limit for nothing.
So a processor judges its vendor's webhooks from its recent task ends:

- a task end **had its webhook** when the webhook ended the wait, or, while polls run
  from ``poll_interval``, came within ``late_within`` seconds after a poll had seen the end
  (the two raced);
- while the last ``streak_needed`` ends each had theirs, the polls of a task due before
  ``quiet_interval`` (``vendors.X.fallback_poll_interval``) are left out, one is made
  then, and the usual schedule goes on (``poll_offsets``): a lost webhook costs at most
  ``quiet_interval`` more than without webhooks, and nothing once a task ran longer;
- an end seen by a poll whose webhook did not come within ``late_within`` seconds is a
  **lost** webhook, and so is, while the polls before ``quiet_interval`` are left out, any
  end a poll saw before its webhook (a webhook that late leaves slots held until the poll:
  polls from ``poll_interval`` find such ends sooner): polling goes back to
  ``poll_interval`` until the streak is rebuilt.

Pure: every call takes ``now`` (seconds, the processor's clock); ``news`` hears of each
change worth telling an operator (``WebhookNews``).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Iterator

STREAK_NEEDED = 10  # ends in a row that had their webhook, before polling slows down
LATE_WITHIN = 1.5  # seconds a webhook may come after a poll saw its task's end
MAX_AWAITED = 10_000  # task ends awaiting their webhook, remembered at most
NONE_ARRIVE_AFTER = 10  # ends in a row with no webhook: webhooks do not reach jobline
MAX_POLL_INTERVAL = 10.0  # seconds: the longest wait between two polls of one task


class WebhookNews(enum.Enum):
    ARRIVING = "arriving"  # the streak is complete: polls before the fallback are left out
    STOPPED = "stopped"  # one was lost while they arrived: polls from poll_interval again
    NONE_ARRIVE = "none_arrive"  # NONE_ARRIVE_AFTER ends in a row had none


def poll_offsets(poll_interval: float, first: float) -> Iterator[float]:
    """Seconds after a wait began at which a task's status is polled, forever: every
    ``poll_interval``, the gaps growing 1.5x up to ``MAX_POLL_INTERVAL``; with ``first``
    past ``poll_interval``, the polls before ``first`` are left out and one is made at
    ``first``. E.g. (1, 1): 1, 2.5, 4.75, 8.125, ...; (1, 5): 5, 8.125, 13.19, ..."""
    at, gap = 0.0, poll_interval
    if first > poll_interval:
        yield first
    while True:
        at += gap
        gap = min(gap * 1.5, max(MAX_POLL_INTERVAL, poll_interval))
        if at > first or first <= poll_interval:
            yield at


class WebhookHealth:
    """Whether one vendor's webhooks arrive, and so when a task's first poll is due."""

    def __init__(
        self,
        poll_interval: float,
        quiet_interval: float,
        news: Callable[[WebhookNews], None] = lambda news: None,
        *,
        streak_needed: int = STREAK_NEEDED,
        late_within: float = LATE_WITHIN,
    ) -> None:
        self.poll_interval = poll_interval
        self.quiet_interval = max(quiet_interval, poll_interval)
        self._news = news
        self._streak_needed = streak_needed
        self._late_within = late_within
        self._streak = 0
        self._lost_in_a_row = 0
        self._awaited: OrderedDict[str, float] = OrderedDict()  # task id -> given up at
        self.lost = 0  # webhooks counted lost since start

    def first_poll(self, now: float) -> float:
        """Seconds a task whose end is not known waits before its first status poll."""
        return self.quiet_interval if self.arriving(now) else self.poll_interval

    def arriving(self, now: float) -> bool:
        """True while the last ``streak_needed`` task ends each had their webhook."""
        self._expire(now)
        return self._streak >= self._streak_needed

    def ended_by_webhook(self) -> None:
        """A task's webhook ended its wait."""
        self._arrived()

    def ended_by_poll(self, task_id: str, now: float) -> None:
        """A poll saw the task's end first: a lost webhook while polls are left out, else
        its webhook is awaited ``late_within`` s."""
        if self.arriving(now):
            self._lose()
            return
        self._awaited[task_id] = now + self._late_within
        while len(self._awaited) > MAX_AWAITED:
            self._awaited.popitem(last=False)
            self._lose()

    def webhook_came(self, task_id: str, now: float) -> None:
        """A webhook for ``task_id`` arrived (any task: only awaited ones count)."""
        self._expire(now)
        if self._awaited.pop(task_id, None) is not None:
            self._arrived()

    def _arrived(self) -> None:
        self._streak += 1
        self._lost_in_a_row = 0
        if self._streak == self._streak_needed:
            self._news(WebhookNews.ARRIVING)

    def _expire(self, now: float) -> None:
        while self._awaited:
            task_id, given_up_at = next(iter(self._awaited.items()))
            if given_up_at > now:
                return
            del self._awaited[task_id]
            self._lose()

    def _lose(self) -> None:
        if self._streak >= self._streak_needed:
            self._news(WebhookNews.STOPPED)
        self._streak = 0
        self.lost += 1
        self._lost_in_a_row += 1
        if self._lost_in_a_row == NONE_ARRIVE_AFTER:
            self._news(WebhookNews.NONE_ARRIVE)
