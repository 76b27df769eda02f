"""What each actor needs from the others, as protocols.

The actor classes take these in their constructors. ``actors.hosting`` provides them
either as Ray actor handles (wrapped so that ``await port.method(...)`` makes the
remote call) or as the plain objects themselves, wired in one process for tests.
Calls on hot paths take and return lists, so one actor call carries many jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from runtime.ledger_nearby import FileIdentity
from runtime.models import (
    AccountLimits,
    AccountPage,
    AccountThrottle,
    ApiKeyPage,
    Balance,
    DeadLetterPage,
    EntryPage,
    Job,
    JobHistoryEntry,
    KeyMatch,
    KeyRevocation,
    LedgerOp,
    Orphan,
    Outcome,
    Page,
)
from runtime.states import JobStatus
from runtime.telemetry import Family
from runtime.vendors import WebhookEvent


class LedgerPort(Protocol):
    async def execute_many(self, ops: Sequence[LedgerOp]) -> list[Outcome]: ...

    async def file_identity(self) -> FileIdentity | None: ...

    async def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]: ...

    async def get_job(self, job_id: str, account_id: str | None = None) -> Job: ...

    async def list_jobs(
        self,
        account_id: str,
        status: JobStatus | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page: ...

    async def jobs_for_vendor(self, vendor: str, statuses: Sequence[JobStatus]) -> list[Job]: ...

    async def submits_in_doubt(self, vendor: str, updated_after: float) -> list[Job]: ...

    async def orphans(self, vendor: str, now: float) -> list[Orphan]: ...

    async def jobs_by_status(
        self, status: JobStatus, updated_before: float | None = None, limit: int = 1000
    ) -> list[Job]: ...

    async def expired_jobs(self, now: float, limit: int = 1000) -> list[Job]: ...

    async def history(self, job_id: str, after_seq: int = 0) -> list[JobHistoryEntry]: ...

    async def account_history(
        self, account_id: str, after_seq: int, limit: int = 500
    ) -> list[JobHistoryEntry]: ...

    async def accounts_changed(
        self, after_seq: int | None, limit: int = 5000
    ) -> tuple[int, list[str]]: ...

    async def accounts(self, limit: int = 50, cursor: str | None = None) -> AccountPage: ...

    async def statement(
        self,
        account_id: str,
        limit: int = 100,
        cursor: str | None = None,
        newest_first: bool = False,
    ) -> EntryPage: ...

    async def balance(self, account_id: str) -> Balance: ...

    async def keys_for_hashes(self, key_hashes: Sequence[str]) -> list[KeyMatch | None]: ...

    async def revocations(
        self, after_seq: int | None, limit: int = 1000
    ) -> tuple[int, list[KeyRevocation]]: ...

    async def api_keys(
        self, account_id: str, limit: int = 50, cursor: str | None = None
    ) -> ApiKeyPage: ...

    async def account_limits(self, account_id: str) -> AccountLimits: ...

    async def slot_weights(self, account_ids: Sequence[str]) -> dict[str, float]: ...

    async def account_throttle(self, account_id: str) -> AccountThrottle: ...

    async def dead_letters(
        self, limit: int = 100, include_redriven: bool = False, cursor: str | None = None
    ) -> DeadLetterPage: ...

    async def open_dead_letters(self) -> int: ...

    async def counts(self) -> dict[str, int]: ...

    async def check_invariants(self) -> int:
        """Check I1, I2, I5 on the database now; returns (and exports) the violations."""


class ProcessorPort(Protocol):
    async def dispatch(self, jobs: Sequence[Job]) -> None:
        """Take these queued jobs (already in the ledger) and carry them to the end."""

    async def on_webhooks(self, events: Sequence[WebhookEvent]) -> None:
        """Verified, deduplicated vendor events forwarded by a gateway."""

    async def take_webhooks(self, events: Sequence[WebhookEvent]) -> list[str]:
        """Verified vendor events, not yet deduplicated: per event ``"taken"`` (a task this
        processor follows; applied, its receipt written with the job's next ledger write),
        ``"duplicate"`` (taken before), or ``""`` (not followed here: the gateway records
        it in the ledger and forwards it with ``on_webhooks``)."""

    async def cancel_tasks(self, job_ids: Sequence[str]) -> None:
        """These jobs were canceled or failed in the ledger: cancel their vendor tasks."""

    async def adopt(self, jobs: Sequence[Job]) -> int:
        """The sweeper's hand-back: take any of these jobs not already held; returns how many."""

    async def stats(self) -> dict[str, Any]: ...

    async def collect_metrics(self) -> list[Family]: ...


class Router(Protocol):
    """Finds the processor of a vendor (for dispatch, failover and webhooks)."""

    def processor(self, vendor: str) -> ProcessorPort: ...

    def vendors(self) -> list[str]: ...
