"""How soon a vendor task's status is first polled: sooner while its vendor's webhooks
get lost, later while they arrive.

Polling is always on, as the fallback for a lost webhook (DESIGN §3). But while a
vendor's webhooks arrive, a poll of a task that is about to end races its webhook: it
finds the end first about as often as not (measured: 40% of 1-s tasks polled at 1 s),
and then the webhook that follows is one more ledger write and a status read (for fal,
two: the status and the result) the vendor counts against its rate limit for nothing.
So a processor judges its vendor's webhooks from its recent task ends:

- a task end **had its webhook** when the webhook ended the wait, or came within
  ``late_within`` seconds after a poll had seen the end;
- while the last ``streak_needed`` ends each had theirs, a task's first poll waits
  ``quiet_interval`` (``vendors.X.fallback_poll_interval``) instead of ``poll_interval``;
- an end seen by a poll whose webhook did not come within ``late_within`` seconds is a
  **lost** webhook: polling goes back to ``poll_interval`` until the streak is rebuilt.

Pure: every call takes ``now`` (seconds, the processor's clock).
"""

from __future__ import annotations

from collections import OrderedDict

STREAK_NEEDED = 10  # ends in a row that had their webhook, before polling slows down
LATE_WITHIN = 5.0  # seconds a webhook may come after a poll saw its task's end
MAX_AWAITED = 10_000  # task ends awaiting their webhook, remembered at most


class WebhookHealth:
    """Whether one vendor's webhooks arrive, and so when a task's first poll is due."""

    def __init__(
        self,
        poll_interval: float,
        quiet_interval: float,
        *,
        streak_needed: int = STREAK_NEEDED,
        late_within: float = LATE_WITHIN,
    ) -> None:
        self.poll_interval = poll_interval
        self.quiet_interval = max(quiet_interval, poll_interval)
        self._streak_needed = streak_needed
        self._late_within = late_within
        self._streak = 0
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
        self._streak += 1

    def ended_by_poll(self, task_id: str, now: float) -> None:
        """A poll saw the task's end first: its webhook is awaited ``late_within`` s."""
        self._expire(now)
        self._awaited[task_id] = now + self._late_within
        while len(self._awaited) > MAX_AWAITED:
            self._awaited.popitem(last=False)
            self._lose()

    def webhook_came(self, task_id: str, now: float) -> None:
        """A webhook for ``task_id`` arrived (any task: only awaited ones count)."""
        self._expire(now)
        if self._awaited.pop(task_id, None) is not None:
            self._streak += 1

    def _expire(self, now: float) -> None:
        while self._awaited:
            task_id, given_up_at = next(iter(self._awaited.items()))
            if given_up_at > now:
                return
            del self._awaited[task_id]
            self._lose()

    def _lose(self) -> None:
        self._streak = 0
        self.lost += 1
