"""The values jobline passes around: jobs, credit entries, balances, ledger operations.

Everything here is a frozen dataclass of plain values, so it pickles cheaply across
Ray actors. Times are seconds since the epoch (floats) from an injected clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from runtime.refunds import RejectionThrottle
from runtime.results import content_type_of
from runtime.states import JobStatus

JSON = dict[str, Any]


class EntryKind(enum.StrEnum):
    GRANT = "grant"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"


# The notes of a failed job's settlement when a fee was kept (``Fail.fee``): one capture
# of the fee and one release of the rest, in the same transaction (DESIGN §4, I2).
FEE_NOTE = "fee: the vendor rejected the job's input"
REFUND_LESS_FEE_NOTE = "refund less the fee"


@dataclass(frozen=True, slots=True)
class StoredOutput:
    """One output of a completed job, as the result store holds it.

    ``key``: its result-store key. ``content_type``: checked against its bytes. ``size``:
    bytes. ``name``: the vendor's file name, if it gave one. ``source``: where it was in
    the vendor's answer (``images[1]``, ``video``, ``output``).
    """

    key: str
    content_type: str
    size: int
    name: str | None = None
    source: str | None = None

    def to_json(self) -> JSON:
        return {
            "key": self.key,
            "content_type": self.content_type,
            "size": self.size,
            "name": self.name,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: JSON) -> StoredOutput:
        return cls(
            str(data["key"]),
            str(data["content_type"]),
            int(data["size"]),
            data.get("name"),
            data.get("source"),
        )


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    account_id: str
    model: str
    input: JSON
    status: JobStatus
    cost: int  # credits held for this job
    trace_id: str
    route_position: int  # index into the model's route: which vendor is responsible
    vendor: str  # the vendor at route_position
    vendor_task_id: str | None
    attempts: int  # attempts started, over all vendors
    vendor_attempts: int  # attempts started on the current vendor
    not_before: float  # do not submit before this time (retry backoff)
    deadline: float  # the whole job must end by then, or it fails and is refunded
    result_key: str | None
    error: str | None
    idempotency_key: str | None
    redriven_from: str | None
    created_at: float
    updated_at: float
    # Every output of a completed job, in the vendor's order (``result_key`` is the
    # first one's key). Empty before completion, and for jobs completed before schema 6.
    outputs: tuple[StoredOutput, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def stored_outputs(self) -> tuple[StoredOutput, ...]:
        """Every output; a job completed before schema 6 has its one ``result_key``."""
        if self.outputs or self.result_key is None:
            return self.outputs
        return (StoredOutput(self.result_key, content_type_of(self.result_key), -1),)

    def to_api(self) -> JSON:
        """The job as ``GET /v1/jobs/{id}`` shows it."""
        return {
            "id": self.id,
            "status": self.status.value,
            "model": self.model,
            "input": self.input,
            "vendor": self.vendor,
            "vendor_task_id": self.vendor_task_id,
            "attempts": self.attempts,
            "cost": self.cost,
            "error": self.error,
            "result_url": (
                f"/v1/jobs/{self.id}/result" if self.status is JobStatus.COMPLETED else None
            ),
            "outputs": self.outputs_to_api(),
            "trace_id": self.trace_id,
            "redriven_from": self.redriven_from,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def outputs_to_api(self) -> list[JSON]:
        """``GET /v1/jobs/{id}``'s ``outputs``: each one's index, type, size, name, URL."""
        if self.status is not JobStatus.COMPLETED:
            return []
        return [
            {
                "index": index,
                "content_type": output.content_type,
                "size": output.size if output.size >= 0 else None,
                "name": output.name,
                "url": f"/v1/jobs/{self.id}/outputs/{index}",
            }
            for index, output in enumerate(self.stored_outputs())
        ]


@dataclass(frozen=True, slots=True)
class CreditEntry:
    id: int
    account_id: str
    kind: EntryKind
    amount: int  # always > 0; the kind says which way it moves
    job_id: str | None
    created_at: float
    ref: str | None = None  # grant id, for idempotent grants
    # Why, when a kind alone does not say it: a fee kept on a failed job is a capture
    # noted FEE_NOTE and a release of the rest noted REFUND_LESS_FEE_NOTE.
    note: str | None = None

    def to_api(self) -> JSON:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "amount": self.amount,
            "job_id": self.job_id,
            "created_at": self.created_at,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    balance: int  # grants - captures
    held: int  # open holds
    available: int  # balance - held

    def to_api(self) -> JSON:
        return {"balance": self.balance, "held": self.held, "available": self.available}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    job_id: str
    account_id: str
    model: str
    vendor: str
    error: str
    attempts: int
    trace_id: str
    created_at: float
    redriven_to: str | None

    def to_api(self) -> JSON:
        return {
            "job_id": self.job_id,
            "account_id": self.account_id,
            "model": self.model,
            "vendor": self.vendor,
            "error": self.error,
            "attempts": self.attempts,
            "trace_id": self.trace_id,
            "created_at": self.created_at,
            "redriven_to": self.redriven_to,
        }


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """An account as the operator sees it: its credits and the grants that made them."""

    account_id: str
    name: str
    created_at: float
    balance: int  # grants - captures
    held: int  # open holds
    in_flight: int  # jobs not yet terminal
    grants: int  # how many grants
    granted: int  # their sum
    last_grant_at: float | None

    def to_api(self) -> JSON:
        return {
            "account_id": self.account_id,
            "name": self.name,
            "created_at": self.created_at,
            "balance": self.balance,
            "held": self.held,
            "available": self.balance - self.held,
            "in_flight": self.in_flight,
            "grants": {
                "count": self.grants,
                "total": self.granted,
                "last_at": self.last_grant_at,
            },
        }


@dataclass(frozen=True, slots=True)
class AccountPage:
    items: list[AccountSummary] = field(default_factory=list)
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class EntryPage:
    """One page of an account's statement; pass ``next_cursor`` back for the next."""

    items: list[CreditEntry] = field(default_factory=list)
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    items: list[DeadLetter] = field(default_factory=list)
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An account's API key as it may be shown: never the key, never its hash."""

    id: str  # key_…: names the key in lists and revokes
    account_id: str
    prefix: str  # the key's first characters, to recognise it ("" for keys made before v7)
    name: str
    created_at: float
    revoked_at: float | None  # when a revoke (or a rotation) was asked
    expires_at: float | None  # refused from then on (revoked_at + grace); None: valid
    last_used_at: float | None  # recorded in batches: up to a flush interval behind

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def to_api(self, now: float) -> JSON:
        return {
            "id": self.id,
            "prefix": self.prefix,
            "name": self.name,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "active": self.active(now),
        }


@dataclass(frozen=True, slots=True)
class ApiKeyPage:
    items: list[ApiKey] = field(default_factory=list)
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class KeyMatch:
    """What a gateway learns from an API key's hash: whose it is, and until when."""

    account_id: str
    key_id: str
    expires_at: float | None  # None: until revoked


@dataclass(frozen=True, slots=True)
class KeyRevocation:
    """One entry of the revocation feed gateways follow (``Ledger.revocations``)."""

    seq: int
    key_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class AccountLimits:
    """An account's own limits; None: the ``[gateway]`` default applies."""

    account_id: str
    max_jobs_in_flight: int | None = None
    submits_per_second: float | None = None  # 0: no submit rate limit
    submit_burst: int | None = None
    # The account's weight in the fair share of vendor slots (``runtime.fairness``): an
    # account of weight 2 starts twice as many jobs as one of weight 1 while both wait.
    slot_weight: float | None = None  # None: 1


@dataclass(frozen=True, slots=True)
class AccountThrottle:
    """An account's input rejections (``runtime.refunds.RejectionThrottle``): the level of
    its leaky bucket at ``updated_at``, and until when its submits are refused."""

    account_id: str
    input_rejections: float = 0.0
    updated_at: float | None = None
    throttled_until: float | None = None


@dataclass(frozen=True, slots=True)
class VendorCharge:
    """What one vendor attempt cost the operator: a task that ran at the vendor (billed),
    whatever became of its job. ``cost_micros``: millionths of the operator's currency
    unit (``models.X.route[n].cost``). ``outcome``: ``CHARGE_OUTCOMES``."""

    job_id: str
    attempt: int
    account_id: str
    vendor: str
    model: str  # jobline's model name
    cost_micros: int
    outcome: str


# How a billed attempt ended: its output became the job's result (succeeded), or it
# was paid for and thrown away (wasted), failed at the vendor, was rejected for its
# input, given up on past its model's bounds (timed_out), canceled by the client, or
# was a submit in doubt whose task ran after the job moved on (orphaned).
CHARGE_OUTCOMES = (
    "succeeded", "wasted", "failed", "rejected", "timed_out", "canceled", "orphaned",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class JobHistoryEntry:
    """One row of the append-only history of a job's status changes (SSE reads it)."""

    job_id: str
    seq: int
    status: JobStatus
    at: float
    detail: str | None


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken invariant found by the invariant checker."""

    invariant: str  # "I1", "I2", "I5"
    subject: str  # the account, job, key or webhook concerned
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant} {self.subject}: {self.detail}"


# --- ledger operations ------------------------------------------------------------------
# Each operation is a value, so a caller on another actor can send many in one call
# (``Ledger.execute_many``) and the ledger can commit many callers' operations in one
# transaction. Every operation is idempotent: executing it twice has the effect of once.


@dataclass(frozen=True, slots=True)
class CreateAccount:
    """The account, its first API key and its starting credits, in one transaction."""

    account_id: str
    api_key_hash: str  # sha256 hex of the API key; the key itself is never stored
    name: str = ""
    credits: int = 0  # the creation grant (no grant id: it never collides with one)
    key_id: str | None = None  # None: "key_" + the account id
    key_prefix: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    """Credits for an account. ``grant_id`` is scoped to the account: the same id with the
    same amount replays the first grant (its Balance, ``changed`` False); with another
    amount it is a ``GrantConflict``."""

    account_id: str
    amount: int
    grant_id: str


@dataclass(frozen=True, slots=True)
class CreateApiKey:
    """A new API key for the account; with ``replaces``, the old key is revoked in the same
    transaction, still accepted for ``grace`` seconds (a rotation)."""

    account_id: str
    key_id: str
    key_hash: str
    prefix: str
    name: str = ""
    replaces: str | None = None
    grace: float = 0.0
    max_keys: int = 50  # keys in use (not yet expired) per account


@dataclass(frozen=True, slots=True)
class RevokeApiKey:
    """Refuse the key from ``grace`` seconds on (a second revoke may only bring that closer)."""

    account_id: str
    key_id: str
    grace: float = 0.0


@dataclass(frozen=True, slots=True)
class RecordKeyUse:
    """When keys were last used, as a gateway saw them (a batch, not a write per request)."""

    uses: tuple[tuple[str, float], ...]  # (key id, time of use)


@dataclass(frozen=True, slots=True)
class SetAccountLimits:
    limits: AccountLimits


@dataclass(frozen=True, slots=True)
class OpenJob:
    job_id: str
    account_id: str
    model: str
    input: JSON
    price: int
    trace_id: str
    vendor: str  # the vendor at route_position, where the job starts
    deadline: float
    idempotency_key: str | None = None
    request_hash: str | None = None  # hash of the request body, for key reuse checks
    max_in_flight: int | None = None  # the cap on non-terminal jobs, unless the account's own
    redriven_from: str | None = None
    route_position: int = 0  # the first vendor of the route whose circuit is not open
    # The submit rate, unless the account has its own (AccountLimits): per second, 0 none.
    submits_per_second: float = 0.0
    submit_burst: int = 1


@dataclass(frozen=True, slots=True)
class StartAttempt:
    job_id: str
    attempt: int  # the number this attempt will have (job.attempts + 1); compare-and-set
    vendor: str
    route_position: int


@dataclass(frozen=True, slots=True)
class MarkProcessing:
    job_id: str
    attempt: int
    vendor_task_id: str


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    job_id: str
    attempt: int  # the attempt that failed; a stale retry (another attempt began) is a no-op
    not_before: float
    error: str
    route_position: int  # == job's position to retry on the same vendor; +1 to fail over
    vendor: str


@dataclass(frozen=True, slots=True)
class Complete:
    job_id: str
    result_key: str  # the first output's key
    outputs: tuple[StoredOutput, ...] = ()  # every output, the first included
    # The vendor attempt that made the outputs, recorded in the same transaction: as
    # ``succeeded`` when the job completes, ``wasted`` when it had already ended.
    charge: VendorCharge | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    job_id: str
    error: str
    expired: bool = False  # the whole deadline passed (EXPIRED rather than FAILED)
    # The vendor rejected the job for its own input (content policy, invalid input):
    # ``fee`` credits are kept (a capture of the fee and a release of the rest, capped
    # at the job's price), and the rejection counts against ``throttle``.
    input_rejected: bool = False
    fee: int = 0
    throttle: RejectionThrottle | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: str
    account_id: str | None = None  # when given, the job must belong to this account


@dataclass(frozen=True, slots=True)
class RecordOrphan:
    """A vendor task no attempt follows, which may still run at ``vendor`` until
    ``until``; a restarted processor holds a slot for it till then. Either a submit in
    doubt whose job moved on (``task_id`` None: the task may not exist), or the task of a
    job that ended before the vendor confirmed its cancel (``task_id`` known: a restarted
    processor cancels it until the vendor confirms). The ``Cancel`` of a processing job
    records the second kind itself, in its own transaction."""

    job_id: str
    attempt: int
    vendor: str
    model: str  # the vendor's name for the model ("" when the ledger's Cancel recorded it)
    since: float  # when the submit went out, or when the task was left unfollowed
    until: float
    task_id: str | None = None


@dataclass(frozen=True, slots=True)
class EndOrphan:
    """The orphan of ``(job_id, attempt)`` is known to have ended (or was adopted)."""

    job_id: str
    attempt: int
    task_id: str | None = None


@dataclass(frozen=True, slots=True)
class Orphan:
    """An open orphan (``Ledger.orphans``)."""

    job_id: str
    attempt: int
    vendor: str
    model: str
    since: float
    until: float
    trace_id: str  # the job's, sent with every request about the orphan
    task_id: str | None = None  # known for a task left running when its job ended


@dataclass(frozen=True, slots=True)
class RecordCharge:
    """A billed vendor attempt (``VendorCharge``); once per (job, attempt)."""

    charge: VendorCharge


@dataclass(frozen=True, slots=True)
class ClearThrottle:
    """The admin lifts an account's throttle and forgets its input rejections."""

    account_id: str


@dataclass(frozen=True, slots=True)
class RecordWebhook:
    vendor: str
    webhook_id: str


@dataclass(frozen=True, slots=True)
class Redrive:
    job_id: str  # a dead-lettered job
    new_job_id: str
    trace_id: str
    deadline: float
    vendor: str | None = None  # start over on this vendor at route_position; None: keep
    route_position: int = 0


LedgerOp = (
    CreateAccount
    | Grant
    | OpenJob
    | StartAttempt
    | MarkProcessing
    | ScheduleRetry
    | Complete
    | Fail
    | Cancel
    | RecordWebhook
    | Redrive
    | CreateApiKey
    | RevokeApiKey
    | RecordKeyUse
    | SetAccountLimits
    | RecordOrphan
    | EndOrphan
    | RecordCharge
    | ClearThrottle
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one ledger operation did: its value, or the LedgerError it raised."""

    value: Any = None
    error: BaseException | None = None
    changed: bool = True  # False when the operation was a replay or absorbed by a terminal job

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Job] = field(default_factory=list)
    next_cursor: str | None = None
