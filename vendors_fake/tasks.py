"""A fake vendor's tasks, and the random draws that decide their fate.

A task's whole fate is drawn when it is created, from the fake's task stream, in one
fixed order (:func:`draw_fate`): its id, how it ends, how long it queues (a cold start
included) and runs, what it outputs and how (file URLs or data URIs), whether its answer
to the submit is lost, the size of its logs, and what happens to each of its webhooks.
So the k-th task a fake creates behaves the same way in every run with the same seed and
profile, whatever host runs the vendor and however many status polls arrived in between
(those draw from the request stream).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from typing import Any

from vendors_fake.outputs import MAX_DATA_URI_BYTES
from vendors_fake.profile import (
    Distribution,
    FaultProfile,
    LostAnswers,
    OutputSpec,
    RouteFaults,
    WebhookFaults,
)


class Phase(enum.Enum):
    QUEUED = "queued"  # replicate "starting", fal IN_QUEUE
    RUNNING = "running"  # replicate "processing", fal IN_PROGRESS
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"  # its deadline passed before it ran (replicate "aborted"; not billed)

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELED, Phase.ABORTED})


class Outcome(enum.Enum):
    SUCCEED = "succeed"
    FAIL = "fail"  # vendor-side, transient: a retry may succeed
    REJECT = "reject"  # permanent: content rejected
    NEVER_FINISH = "never_finish"


class LostAnswer(enum.Enum):
    """How the answer to a submit that created the task is lost."""

    HANG = "hang"
    SERVER_ERROR = "server_error"
    CUT_OFF = "cut_off"


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


@dataclass(frozen=True, slots=True)
class Fate:
    """Everything drawn for one task at its creation."""

    id_bits: int
    outcome: Outcome
    queue_delay: float  # a cold start included
    cold_start: bool
    run_time: float
    output_count: int
    output_size: int  # bytes of each video or audio file
    data_uri: bool  # outputs as data: URIs instead of file URLs
    payload_error: bool  # fal: the webhook carries payload null + payload_error
    lost_answer: tuple[LostAnswer, int] | None  # and the status code of a server error
    logs_bytes: int
    webhooks: dict[str, WebhookFate]
    out_of_order: bool


@dataclass(slots=True)
class Task:
    """One vendor task (a replicate prediction, a fal request)."""

    id: str
    index: int  # creation order, from 0
    model: str
    version: str
    input: dict[str, Any]
    fate: Fate
    spec: OutputSpec
    created_at: float  # wall clock
    webhook_url: str | None = None
    webhook_events: frozenset[str] = frozenset()
    trace_id: str | None = None
    job_id: str | None = None
    attempt: str | None = None
    phase: Phase = Phase.QUEUED
    started_at: float | None = None  # wall clock
    completed_at: float | None = None  # wall clock
    error: str | None = None
    queue_seq: int = 0
    renderer: Any = None  # the shape's render(task): its status JSON
    rendered: bytes | None = None  # that JSON for the current phase, once read
    billable: bool = False  # it started running: the vendor charges for it
    result_read: bool = False  # its finished result reached the client (read or webhook)
    downloaded: set[str] = field(default_factory=set)  # its files downloaded in full
    files: dict[str, Any] = field(default_factory=dict)  # name -> OutputFile, once succeeded
    timer: Any = None  # the handle of the next phase change
    deadline_timer: Any = None  # the handle ending it at its deadline, if it has one
    waiters: list[Any] | None = None  # futures resolved when the task ends
    last_delivery: Any = None  # the asyncio.Task sending its latest webhook; they go in order

    @property
    def body(self) -> bytes:
        """The shape's status JSON for the task's current phase. Rendered when first read
        after a phase change (most are never read) and kept until the next one: a status
        read returns stored bytes."""
        if self.rendered is None:
            self.rendered = self.renderer(self) if self.renderer is not None else b""
        return self.rendered

    @property
    def outcome(self) -> Outcome:
        return self.fate.outcome

    @property
    def delivered(self) -> bool:
        """Its work reached the client: every file downloaded, or (no files, or files
        sent inline as data URIs) the result read. Only a succeeded task delivers."""
        if self.phase is not Phase.SUCCEEDED:
            return False
        inline = {name for name, file in self.files.items() if self.inline(file)}
        if not set(self.files) - inline <= self.downloaded:
            return False
        return not (inline or not self.files) or self.result_read

    def inline(self, file: Any) -> bool:
        """Is this file given as a data URI (in the result itself) rather than a URL?"""
        return bool(self.fate.data_uri and file.size <= MAX_DATA_URI_BYTES)


def draw_latency(latency: Distribution, rng: random.Random) -> float:
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


def chance(p: float, rng: random.Random) -> bool:
    """True with probability p; draws nothing when p is 0 or 1."""
    if p <= 0:
        return False
    if p >= 1:
        return True
    return rng.random() < p


def draw_webhook_fate(faults: WebhookFaults, rng: random.Random) -> WebhookFate:
    lost = chance(faults.lost, rng)
    duplicated = chance(faults.duplicated, rng)
    delayed = chance(faults.delayed, rng)
    delay = draw_latency(faults.delay, rng) if delayed else 0.0
    bad_signature = chance(faults.bad_signature, rng)
    stale = chance(faults.stale, rng)
    if not (lost or duplicated or delay or bad_signature or stale):
        return CLEAN_DELIVERY
    return WebhookFate(lost, duplicated, delay, bad_signature, stale)


def draw_lost_answer(faults: LostAnswers, rng: random.Random) -> tuple[LostAnswer, int] | None:
    if not faults.any:
        return None
    u = rng.random()
    if u < faults.hang:
        return LostAnswer.HANG, 0
    u -= faults.hang
    if u < faults.server_error:
        codes = faults.server_error_codes
        return LostAnswer.SERVER_ERROR, codes[0] if len(codes) == 1 else rng.choice(codes)
    u -= faults.server_error
    if u < faults.cut_off:
        return LostAnswer.CUT_OFF, 0
    return None


def draw_fate(
    profile: FaultProfile,
    spec: OutputSpec,
    rng: random.Random,
    *,
    webhook_events: frozenset[str] = frozenset(),
    has_progress_event: bool = False,
    force_data_uri: bool = False,
) -> Fate:
    """A new task's fate; the order of the draws is part of the seed's contract."""
    id_bits = rng.getrandbits(128)
    outcome = draw_outcome(profile, rng)
    queue_delay = draw_latency(profile.queue_delay, rng)
    run_time = draw_latency(profile.run_time, rng)
    cold = chance(profile.cold_start, rng)
    if cold:
        queue_delay += draw_latency(profile.cold_start_time, rng)
    count = spec.count
    if spec.count_max is not None and spec.count_max > spec.count and spec.kind == "image":
        count = rng.randint(spec.count, spec.count_max)
    size = max(0, int(draw_latency(spec.size, rng))) if spec.kind in ("video", "audio") else 0
    data_uri = chance(profile.data_uri, rng) or force_data_uri
    payload_error = chance(profile.payload_error, rng)
    lost = draw_lost_answer(profile.lost_answers, rng)
    logs = max(0, int(draw_latency(profile.logs, rng)))
    fates = {event: draw_webhook_fate(profile.webhooks, rng) for event in sorted(webhook_events)}
    out_of_order = bool(webhook_events) and has_progress_event
    out_of_order = out_of_order and chance(profile.webhooks.out_of_order, rng)
    return Fate(
        id_bits=id_bits,
        outcome=outcome,
        queue_delay=queue_delay,
        cold_start=cold,
        run_time=run_time,
        output_count=count,
        output_size=size,
        data_uri=data_uri,
        payload_error=payload_error,
        lost_answer=lost,
        logs_bytes=logs,
        webhooks=fates,
        out_of_order=out_of_order,
    )


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
