"""A fake vendor's tasks, and the random draws that decide their fate.

A task's whole fate is drawn when it is created, from the fake's task stream: how long
it queues and runs, how it ends, and what happens to each of its webhooks. So the k-th
task a fake creates behaves the same way in every run with the same seed and profile,
however many status polls arrived in between (those draw from the request stream).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from typing import Any

from vendors_fake.profile import FaultProfile, Latency, RouteFaults, WebhookFaults


class Phase(enum.Enum):
    QUEUED = "queued"  # replicate "starting", fal IN_QUEUE
    RUNNING = "running"  # replicate "processing", fal IN_PROGRESS
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELED})


class Outcome(enum.Enum):
    SUCCEED = "succeed"
    FAIL = "fail"  # vendor-side, transient: a retry may succeed
    REJECT = "reject"  # permanent: content rejected
    NEVER_FINISH = "never_finish"


@dataclass(frozen=True, slots=True)
class WebhookFate:
    lost: bool = False
    duplicated: bool = False
    delay: float = 0.0  # > 0: the delayed fault
    bad_signature: bool = False
    stale: bool = False

    @property
    def faults(self) -> list[str]:
        names = []
        if self.lost:
            names.append("lost")
        if self.duplicated:
            names.append("duplicated")
        if self.delay > 0:
            names.append("delayed")
        if self.bad_signature:
            names.append("bad_signature")
        if self.stale:
            names.append("stale")
        return names


CLEAN_DELIVERY = WebhookFate()


@dataclass(slots=True)
class Task:
    """One vendor task (a replicate prediction, a fal request)."""

    id: str
    index: int  # creation order, from 0
    model: str
    version: str
    input: dict[str, Any]
    outcome: Outcome
    queue_delay: float
    run_time: float
    created_at: float  # wall clock
    webhook_url: str | None = None
    webhook_events: frozenset[str] = frozenset()
    webhook_fates: dict[str, WebhookFate] = field(default_factory=dict)
    out_of_order: bool = False
    trace_id: str | None = None
    job_id: str | None = None
    attempt: str | None = None
    phase: Phase = Phase.QUEUED
    started_at: float | None = None
    completed_at: float | None = None
    error: str | None = None
    body: bytes = b""  # the shape's current JSON for a status read, re-rendered per phase
    queue_seq: int = 0
    timer: Any = None  # the asyncio.TimerHandle of the next phase change
    deadline_timer: Any = None  # the TimerHandle ending it at its deadline, if it has one
    waiters: list[Any] | None = None  # futures resolved when the task ends
    last_delivery: Any = None  # the asyncio.Task sending its latest webhook; they go in order


def draw_latency(latency: Latency, rng: random.Random) -> float:
    """One draw; ``fixed`` consumes no randomness."""
    if latency.kind == "fixed":
        value = latency.seconds
    elif latency.kind == "uniform":
        value = rng.uniform(latency.low, latency.high)
    else:
        value = rng.lognormvariate(math.log(latency.p50), latency.sigma)
    return min(value, latency.cap)


def draw_outcome(profile: FaultProfile, rng: random.Random) -> Outcome:
    if not (profile.failure or profile.rejection or profile.never_finish):
        return Outcome.SUCCEED
    u = rng.random()
    if u < profile.failure:
        return Outcome.FAIL
    u -= profile.failure
    if u < profile.rejection:
        return Outcome.REJECT
    u -= profile.rejection
    if u < profile.never_finish:
        return Outcome.NEVER_FINISH
    return Outcome.SUCCEED


def _chance(p: float, rng: random.Random) -> bool:
    """True with probability p; draws nothing when p is 0 or 1."""
    if p <= 0:
        return False
    if p >= 1:
        return True
    return rng.random() < p


def draw_webhook_fate(faults: WebhookFaults, rng: random.Random) -> WebhookFate:
    lost = _chance(faults.lost, rng)
    duplicated = _chance(faults.duplicated, rng)
    delayed = _chance(faults.delayed, rng)
    delay = draw_latency(faults.delay, rng) if delayed else 0.0
    bad_signature = _chance(faults.bad_signature, rng)
    stale = _chance(faults.stale, rng)
    if not (lost or duplicated or delay or bad_signature or stale):
        return CLEAN_DELIVERY
    return WebhookFate(lost, duplicated, delay, bad_signature, stale)


def draw_out_of_order(faults: WebhookFaults, rng: random.Random) -> bool:
    return _chance(faults.out_of_order, rng)


class RequestFault(enum.Enum):
    HANG = "hang"
    RESET = "reset"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"


def draw_request_fault(faults: RouteFaults, rng: random.Random) -> tuple[RequestFault, int] | None:
    """The fault (and for server errors, the status code) for one request, if any.

    One uniform draw split into the four rates, so each happens at exactly its rate.
    """
    u = rng.random()
    if u < faults.hang:
        return RequestFault.HANG, 0
    u -= faults.hang
    if u < faults.reset:
        return RequestFault.RESET, 0
    u -= faults.reset
    if u < faults.rate_limited:
        return RequestFault.RATE_LIMITED, 429
    u -= faults.rate_limited
    if u < faults.server_error:
        codes = faults.server_error_codes
        return RequestFault.SERVER_ERROR, codes[0] if len(codes) == 1 else rng.choice(codes)
    return None
