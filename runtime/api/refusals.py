"""Submits refused for the account's own limits, remembered for a moment by each gateway.

Theory of operation
-------------------
The in-flight cap, the submit rate and the input-rejection throttle are enforced in the
ledger (one answer for every gateway replica), so each refused submit costs a ledger
operation. A client that ignores ``Retry-After`` and keeps submitting would spend the
ledger's time, which every other account's submits and reads share, on answers that are
known in advance. So when the ledger refuses an account's submit for one of those
limits, the gateway answers the account's next submits with the same ``429`` for
``min(retry_after, MEMORY)`` seconds without asking the ledger again. A client honouring
``Retry-After`` (at least a second) never sees the difference; the cost is that a job
of the account ending, or the limit being raised on another gateway, takes effect for
its submits on this gateway up to ``MEMORY`` seconds late. Changing the account's limits
or lifting its throttle through this gateway forgets its refusal at once (``forget``).

The memory answers key-less submits only: a submit carrying an ``Idempotency-Key`` always
goes to the ledger, which replays the job that key opened (a retry of an accepted submit
must get its job back, not a 429) or refuses it there. A refusal answered from memory
says the wait that *remains* (``Retry-After`` and the message count down from the
ledger's answer), never the original wait again.

Pure: every call takes ``now`` (the gateway's clock).
"""

from __future__ import annotations

from runtime.errors import AccountThrottled, SubmitRateLimited, TooManyJobsInFlight

__all__ = ["MEMORY", "RecentRefusals"]

MEMORY = 1.0  # seconds a refusal is answered from memory, at most
KEPT = 10_000  # accounts remembered at most (the oldest refusals go first past it)

Refusal = TooManyJobsInFlight | SubmitRateLimited | AccountThrottled


class RecentRefusals:
    def __init__(self, memory: float = MEMORY) -> None:
        self.memory = memory
        self._until: dict[str, tuple[float, float, Refusal]] = {}  # until, since, refusal
        self.answered = 0  # refusals answered from memory (a ledger call saved each)

    def remember(self, account_id: str, exc: Refusal, now: float) -> None:
        wait = getattr(exc, "retry_after", self.memory)
        self._until.pop(account_id, None)
        self._until[account_id] = (now + min(wait, self.memory), now, exc)
        if len(self._until) > KEPT:
            del self._until[next(iter(self._until))]

    def check(self, account_id: str, now: float) -> None:
        """Raise the account's remembered refusal if it still holds at ``now``."""
        kept = self._until.get(account_id)
        if kept is None:
            return
        until, since, exc = kept
        if now >= until:
            del self._until[account_id]
            return
        self.answered += 1
        raise _remaining(exc, now - since)

    def forget(self, account_id: str) -> None:
        self._until.pop(account_id, None)


def _remaining(exc: Refusal, elapsed: float) -> Refusal:
    """``exc`` as it reads ``elapsed`` seconds later: its wait shorter by that much."""
    if isinstance(exc, SubmitRateLimited):
        return SubmitRateLimited(exc.account_id, exc.rate, max(0.0, exc.retry_after - elapsed))
    if isinstance(exc, AccountThrottled):
        return AccountThrottled(exc.account_id, max(0.0, exc.retry_after - elapsed))
    return exc  # the in-flight cap: no countdown (a job ending frees it)
