"""What the fuzzer sends and what it reports: planned requests, problems, the report."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

SCHEMA = "schema"
WRONG_TYPES = "wrong_types"
MALFORMED_JSON = "malformed_json"
OVERSIZED = "oversized_body"
IDEMPOTENCY_KEYS = "idempotency_keys"
ODD_IDS = "odd_ids"
BAD_AUTH = "bad_auth"
ADMIN_WITHOUT_TOKEN = "admin_without_token"
CROSS_ACCOUNT = "cross_account"
CATEGORIES = (
    SCHEMA,
    WRONG_TYPES,
    MALFORMED_JSON,
    OVERSIZED,
    IDEMPOTENCY_KEYS,
    ODD_IDS,
    BAD_AUTH,
    ADMIN_WITHOUT_TOKEN,
    CROSS_ACCOUNT,
)

JSON = "application/json"
OWN = "Bearer <api_key>"
OTHER = "Bearer <other_api_key>"
ADMIN = "Bearer <admin_token>"
REQUEST_TIMEOUT = 20.0  # seconds for one request; no answer by then is a problem
NO_ANSWER = 0  # the status recorded for a request that got no HTTP answer
BIG_SIZES = (65_537, 1 << 20, 4 << 20)  # oversized bodies, in bytes
HEADER_LIMIT = 8_000  # past this a header may be refused by dropping the connection
REPLAYED_HEADER = "Idempotent-Replayed"  # an answer repeated for a reused idempotency key
LIMITS_OPERATION = "setAccountLimits"  # reset after each category (see reset_limits)
SETUP_RETRIES = 30  # a set-up or audit read answered 429 or 503 is tried again ...
SETUP_RETRY_PAUSE = 1.0  # ... this many seconds later


# --- what was sent, what was wrong, what came of it ------------------------------------


class Default(enum.Enum):
    """The operation's own credentials, or its minimal valid body."""

    DEFAULT = "default"


DEFAULT = Default.DEFAULT


@dataclass(frozen=True)
class Expect:
    """What an answer must be, beyond "an HTTP answer, not 5xx"."""

    no_2xx: str = ""  # why a 2xx answer would be wrong
    status: int = 0  # the only right status (unless 5xx, reported anyway) ...
    status_why: str = ""  # ... and why
    hidden: tuple[str, ...] = ()  # ids that must not appear in the answer
    documented: bool = False  # the status, and a 2xx body, are as the document says
    same_job: str = ""  # every 2xx answer carrying this label names one and the same job
    other_job: str = ""  # a 2xx answer names another job than this label's
    conflict_with: str = ""  # once this label names a job, this must be answered 422
    disconnect_ok: bool = False  # closing the connection instead of answering is fine


@dataclass(frozen=True)
class FuzzRequest:
    """One request as planned; secrets are placeholders such as ``<api_key>``."""

    category: str
    method: str
    path: str  # percent-encoded path and query, sent as is
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    operation: str = ""  # the operationId aimed at, "" for none
    expect: Expect = Expect()
    chunked: bool = False  # send the body with Transfer-Encoding: chunked
    raw: bool = False  # send over a bare socket (header bytes aiohttp refuses to send)
    group: int = 0  # consecutive requests of one nonzero group are sent at once

    def describe(self, limit: int = 160) -> str:
        def cut(text: str) -> str:
            return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"

        parts = [f"{self.method} {cut(self.path)}"]
        parts += [f"{name}: {cut(value)!r}" for name, value in self.headers]
        if self.body is not None:
            preview = self.body[:limit]
            more = f"… ({len(self.body)} bytes)" if len(self.body) > limit else ""
            parts.append(f"body {preview!r}{more}")
        return " | ".join(parts)


@dataclass(frozen=True)
class Problem:
    request: FuzzRequest | None  # None: found by the audit, after request.category
    status: int  # NO_ANSWER when there was no HTTP answer
    reason: str
    category: str = ""

    def __str__(self) -> str:
        where = self.request.describe() if self.request else f"audit after {self.category}"
        return f"[{self.category}] {self.reason} (status {self.status}) <- {where}"


@dataclass(frozen=True)
class FuzzReport:
    seed: int
    examples: int
    tried: dict[str, int]  # category -> requests sent
    operations: dict[str, int]  # operationId -> schema-driven requests sent
    statuses: dict[int, int]  # status -> answers (0: no HTTP answer)
    problems: list[Problem]
    accepted_jobs: tuple[str, ...]  # every job a request got a 2xx for (set-up included)
    canceled_jobs: tuple[str, ...]  # every job a cancel got a 2xx for
    granted: dict[str, int]  # account id -> credits granted by requests answered 2xx

    @property
    def total(self) -> int:
        return sum(self.tried.values())

    def summary(self) -> str:
        lines = [f"fuzz (seed {self.seed}, {self.examples} examples): {self.total} requests"]
        lines += [f"  {category:<20} {self.tried.get(category, 0)}" for category in CATEGORIES]
        statuses = "  ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        lines.append(f"  statuses             {statuses}")
        lines.append(f"  jobs accepted        {len(self.accepted_jobs)}")
        lines.append(f"  problems             {len(self.problems)}")
        lines += [f"    {problem}" for problem in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"    … and {len(self.problems) - 20} more")
        return "\n".join(lines)
