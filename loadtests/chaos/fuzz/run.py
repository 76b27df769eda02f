"""Sending the planned requests, judging each answer, auditing the money; ``fuzz_api``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp
import jsonschema
from multidict import CIMultiDict
from yarl import URL

from loadtests.chaos.fuzz.document import Operation, is_json_type, operations
from loadtests.chaos.fuzz.model import (
    ADMIN,
    CATEGORIES,
    JSON,
    LIMITS_OPERATION,
    NO_ANSWER,
    OTHER,
    OWN,
    REPLAYED_HEADER,
    REQUEST_TIMEOUT,
    SCHEMA,
    SETUP_RETRIES,
    SETUP_RETRY_PAUSE,
    FuzzReport,
    FuzzRequest,
    Problem,
)
from loadtests.chaos.fuzz.plan import Known, json_bytes, load_fuzz_schema, plan_requests

if TYPE_CHECKING:
    pass

# --- sending and judging ------------------------------------------------------------------


_SECRET_NAMES = ("api_key", "other_api_key", "admin_token")


def _secrets(api_key: str, other_api_key: str, admin_token: str) -> dict[str, str]:
    """Placeholder -> value, longest placeholder first."""
    table: dict[str, str] = {}
    for name, value in zip(_SECRET_NAMES, (api_key, other_api_key, admin_token), strict=True):
        last = value[-1:] or "x"
        table[f"<{name}:chopped>"] = value[:-1]
        table[f"<{name}:extended>"] = value + "0"
        table[f"<{name}:mangled>"] = value[:-1] + ("y" if last != "y" else "z")
        table[f"<{name}>"] = value
    return table


@dataclass
class _Answer:
    status: int
    content_type: str
    body: bytes
    replayed: bool = False  # Idempotent-Replayed: true (the answer of an earlier request)


@dataclass
class _Runner:
    http: aiohttp.ClientSession
    base_url: str
    secrets: dict[str, str]
    ops: dict[str, Operation]
    known: Known = field(default_factory=Known)
    tried: Counter[str] = field(default_factory=Counter)
    per_operation: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    canceled: set[str] = field(default_factory=set)
    granted: Counter[str] = field(default_factory=Counter)
    before_jobs: dict[str, set[str]] = field(default_factory=dict)
    before_entries: dict[str, int] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)

    def fill(self, text: str) -> str:
        if "<" not in text:
            return text
        for placeholder, value in self.secrets.items():
            text = text.replace(placeholder, value)
        return text

    def problem(self, request: FuzzRequest | None, status: int, reason: str, category: str) -> None:
        self.problems.append(Problem(request, status, reason, category))

    # --- the wire ----------------------------------------------------------------------

    async def exchange(self, request: FuzzRequest) -> _Answer | str:
        """Send one request; its answer, or why there was none."""
        try:
            if request.raw:
                return await asyncio.wait_for(self.exchange_raw(request), REQUEST_TIMEOUT)
            return await self.exchange_http(request)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]

    async def exchange_http(self, request: FuzzRequest) -> _Answer:
        headers: CIMultiDict[str] = CIMultiDict(
            (name, self.fill(value)) for name, value in request.headers
        )
        data: Any = request.body
        if request.chunked and request.body is not None:
            data = _chunks(request.body)
        url = URL(self.base_url + self.fill(request.path), encoded=True)
        async with self.http.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            skip_auto_headers=("Content-Type",),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        ) as response:
            content_type = response.headers.get("Content-Type", "")
            # An event stream stays open until its job ends: the status is enough.
            body = b"" if "text/event-stream" in content_type else await response.read()
            replayed = response.headers.get(REPLAYED_HEADER, "").lower() == "true"
            return _Answer(response.status, content_type, body, replayed)

    async def exchange_raw(self, request: FuzzRequest) -> _Answer:
        parts = urlsplit(self.base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        reader, writer = await asyncio.open_connection(host, port)
        try:
            body = request.body or b""
            lines = [f"{request.method} {self.fill(request.path)} HTTP/1.1", f"Host: {host}"]
            lines += [f"{name}: {self.fill(value)}" for name, value in request.headers]
            lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("utf-8", "surrogateescape") + body)
            await writer.drain()
            data = await reader.read(1 << 20)
        finally:
            writer.close()
            with contextlib.suppress(OSError):  # ConnectionError is an OSError
                await writer.wait_closed()
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise ConnectionError(f"no HTTP answer: {data[:80]!r}")
        content_type = ""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-type":
                content_type = value.strip().decode("latin-1")
        return _Answer(int(status_line[1]), content_type, rest)

    # --- judging -----------------------------------------------------------------------

    async def send(self, request: FuzzRequest, count: bool = True) -> _Answer | None:
        answer = await self.exchange(request)
        if count:
            self.tried[request.category] += 1
            if request.category == SCHEMA:
                self.per_operation[request.operation] += 1
            self.statuses[answer.status if isinstance(answer, _Answer) else NO_ANSWER] += 1
        if isinstance(answer, str):
            if not request.expect.disconnect_ok:
                self.problem(request, NO_ANSWER, f"no HTTP answer: {answer}", request.category)
            return None
        self.judge(request, answer)
        self.keep_books(request, answer)
        return answer

    def judge(self, request: FuzzRequest, answer: _Answer) -> None:
        status, expect = answer.status, request.expect

        def report(reason: str) -> None:
            self.problem(request, status, reason, request.category)

        if status >= 500:
            report(f"server error: {_error_text(answer)}")
        ok = 200 <= status < 300
        if ok and expect.no_2xx:
            report(expect.no_2xx)
        if expect.status and status != expect.status and status < 500:
            report(f"{expect.status_why}, got {status}")
        if expect.hidden:
            text = answer.body.decode("utf-8", "replace")
            leaked = [value for value in expect.hidden if value in text]
            if leaked:
                report(f"another account's ids in the answer: {', '.join(leaked)}")
        job = _job_id(answer) if ok else None
        if expect.conflict_with in self.labels and status != 422 and status < 500:
            report(f"an Idempotency-Key reused with another body got {status}, not 422")
        if job and expect.other_job and self.labels.get(expect.other_job) == job:
            report(f"another account's Idempotency-Key gave its job {job}")
        if job and expect.same_job:
            first = self.labels.setdefault(expect.same_job, job)
            if first != job:
                report(f"the same Idempotency-Key gave job {job}, before {first}")
        if expect.documented:
            self.check_documented(request, answer, report)

    def check_documented(
        self, request: FuzzRequest, answer: _Answer, report: Callable[[str], None]
    ) -> None:
        op = self.ops.get(request.operation)
        if op is None:
            return
        status = str(answer.status)
        if status not in op.responses and f"{status[0]}XX" not in op.responses:
            if "default" not in op.responses:
                report(f"status {status} is not documented for {op.operation_id}")
            return
        schema = op.responses.get(status)
        if not status.startswith("2") or not schema or not is_json_type(answer.content_type):
            return
        try:
            value = json.loads(answer.body)
        except ValueError:
            report(f"the {status} answer is not JSON")
            return
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(value)
        )
        if error is not None:
            report(f"the {status} answer does not match the document: {error.message[:200]}")

    def keep_books(self, request: FuzzRequest, answer: _Answer) -> None:
        """Remember the jobs, cancels and grants the gateway said yes to."""
        if not 200 <= answer.status < 300 or request.method != "POST":
            return
        job = _job_id(answer)
        if job is not None:
            path = request.path.split("?")[0]
            (self.canceled if path.endswith("/cancel") else self.accepted).add(job)
            return
        value = _json_or_none(answer.body)
        if answer.replayed:  # a grant answered again: granted by the first request
            return
        if isinstance(value, dict) and value.get("granted") is True:
            sent = _json_or_none(request.body or b"")
            amount = sent.get("amount") if isinstance(sent, dict) else None
            if isinstance(amount, int | float):
                self.granted[str(value.get("account_id"))] += int(amount)

    async def run(self, plan: Sequence[FuzzRequest]) -> None:
        i = 0
        while i < len(plan):
            request = plan[i]
            if request.group:
                j = i
                while j < len(plan) and plan[j].group == request.group:
                    j += 1
                await asyncio.gather(*(self.send(r) for r in plan[i:j]))
                i = j
            else:
                await self.send(request)
                i += 1

    # --- set-up and audit ----------------------------------------------------------------

    async def get_json(self, path: str, auth: str) -> Any:
        """A read of the set-up or the audit. A 429 (the gateway may hold back this address
        after the fuzzer's own bad keys) or a 503 is waited out, as a client would."""
        request = FuzzRequest("setup", "GET", path, (("Authorization", auth),))
        for _ in range(SETUP_RETRIES):
            answer = await self.exchange(request)
            if isinstance(answer, str) or answer.status not in (429, 503):
                break
            await asyncio.sleep(SETUP_RETRY_PAUSE)
        if isinstance(answer, str) or answer.status != 200:
            status = answer if isinstance(answer, str) else answer.status
            raise RuntimeError(f"GET {path} for the fuzzer's set-up failed: {status}")
        return json.loads(answer.body)

    async def account_state(self, auth: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
        """The account's jobs (id -> status) and credit entries, through the API."""
        jobs: dict[str, str] = {}
        if "listJobs" in self.ops:
            cursor = ""
            while True:
                page = await self.get_json(f"/v1/jobs?limit=200{cursor}", auth)
                jobs.update({job["id"]: job["status"] for job in page["jobs"]})
                if not page.get("next_cursor"):
                    break
                cursor = f"&cursor={page['next_cursor']}"
        entries: list[dict[str, Any]] = []
        if "getCreditEntries" in self.ops:
            cursor = ""
            while True:
                page = await self.get_json(f"/v1/credits/entries?limit=200{cursor}", auth)
                entries += page["entries"]
                if not page.get("next_cursor"):
                    break
                cursor = f"&cursor={page['next_cursor']}"
        return jobs, entries

    async def setup(self, bodies: Mapping[str, list[Any]]) -> Known:
        """Learn the accounts, note what they have, open jobs to aim at (not counted)."""
        accounts = {}
        if "getCredits" in self.ops:
            for auth in (OWN, OTHER):
                accounts[auth] = (await self.get_json("/v1/credits", auth))["account_id"]
                jobs, entries = await self.account_state(auth)
                self.before_jobs[accounts[auth]] = set(jobs)
                self.before_entries[accounts[auth]] = max((e["id"] for e in entries), default=0)
        own_jobs = await self.open_jobs(OWN, bodies)
        other_jobs = await self.open_jobs(OTHER, bodies)
        return Known(
            accounts.get(OWN, ""), accounts.get(OTHER, ""), tuple(own_jobs), tuple(other_jobs)
        )

    async def open_jobs(self, auth: str, bodies: Mapping[str, list[Any]]) -> list[str]:
        """One job per variant of the job-making operations' bodies (e.g. per model)."""
        opened = []
        for op in self.ops.values():
            if not (
                op.keyed and op.makes_jobs and op.body is not None and not op.params_in("path")
            ):
                continue
            for body in bodies.get(op.operation_id, []):
                request = FuzzRequest(
                    "setup",
                    op.method,
                    op.path,
                    (("Authorization", auth), ("Content-Type", JSON)),
                    json_bytes(body),
                    op.operation_id,
                )
                answer = await self.send(request, count=False)
                job = _job_id(answer) if answer and 200 <= answer.status < 300 else None
                if job:
                    opened.append(job)
        return opened

    async def audit(self, category: str) -> None:
        """Every new job and credit entry of both accounts has a 2xx behind it."""
        for auth in (OWN, OTHER):
            account = self.known.account if auth == OWN else self.known.other_account
            if not account:
                continue
            jobs, entries = await self.account_state(auth)
            known_jobs = self.accepted | self.before_jobs.get(account, set())
            for job, status in jobs.items():
                if job not in known_jobs:
                    self.once(category, f"job {job} of {account} exists; no request got a 2xx")
                elif status == "canceled" and job not in self.canceled:
                    self.once(category, f"job {job} of {account} is canceled; no cancel got a 2xx")
            new = [e for e in entries if e["id"] > self.before_entries.get(account, 0)]
            for entry in new:
                if entry["kind"] != "grant" and entry.get("job_id") not in known_jobs:
                    self.once(
                        category,
                        f"{entry['kind']} of {entry['amount']} for job {entry.get('job_id')} "
                        f"of {account}, which no request got a 2xx for",
                    )
            grants = sum(e["amount"] for e in new if e["kind"] == "grant")
            if grants != self.granted.get(account, 0):
                self.once(
                    category,
                    f"{account} was granted {grants} credits, but grants answered 2xx add up "
                    f"to {self.granted.get(account, 0)}",
                )

    async def reset_limits(self) -> None:
        """Give both accounts the default limits again: a fuzzed ``PUT .../limits`` may have
        throttled the fuzzer's own account, which would starve the categories after it."""
        op = self.ops.get(LIMITS_OPERATION)
        if op is None:
            return
        for account in (self.known.account, self.known.other_account):
            request = FuzzRequest(
                "setup",
                op.method,
                op.path.replace("{id}", quote(account, safe="")),
                (("Authorization", ADMIN), ("Content-Type", JSON)),
                b"{}",
                op.operation_id,
            )
            answer = await self.exchange(request)
            if isinstance(answer, str) or answer.status != 200:
                status = answer if isinstance(answer, str) else answer.status
                self.problem(request, NO_ANSWER, f"could not reset the limits: {status}", "setup")

    def once(self, category: str, reason: str) -> None:
        if reason not in self.reported:
            self.reported.add(reason)
            self.problem(None, NO_ANSWER, reason, category)


async def _chunks(body: bytes, size: int = 64 * 1024) -> Any:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _job_id(answer: _Answer | None) -> str | None:
    if answer is None or not is_json_type(answer.content_type):
        return None
    value = _json_or_none(answer.body)
    if isinstance(value, dict) and isinstance(value.get("id"), str) and "status" in value:
        job: str = value["id"]
        return job
    return None


def _error_text(answer: _Answer) -> str:
    value = _json_or_none(answer.body)
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        return f"{value['error'].get('code')}: {value['error'].get('message')}"
    return answer.body[:200].decode("utf-8", "replace")


def _variants(schema: Mapping[str, Any], minimal: Any) -> list[Any]:
    """One minimal body per ``oneOf`` variant of ``schema`` (e.g. one per model)."""
    variants = schema.get("oneOf") or schema.get("anyOf")
    if not variants:
        return [minimal]
    made = load_fuzz_schema()
    return [made.minimal(variant) for variant in variants]


# --- the entry point ------------------------------------------------------------------------


async def fuzz_api(
    base_url: str,
    api_key: str,
    other_api_key: str,
    admin_token: str,
    *,
    seed: int,
    examples: int,
) -> FuzzReport:
    """Fuzz the HTTP API at ``base_url`` from its /openapi.json; see the module docstring.

    ``api_key`` and ``other_api_key`` are two accounts' keys (used by nobody else during
    the run), ``admin_token`` the gateway's admin token; ``examples`` is the Hypothesis
    budget per operation, and scales the hand-written categories.
    """
    if not (api_key and other_api_key and admin_token) or api_key == other_api_key:
        raise ValueError("fuzz_api needs two different API keys and the admin token")
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(base_url.rstrip("/") + "/openapi.json") as response:
            response.raise_for_status()
            doc = await response.json(content_type=None)
        ops = operations(doc)
        runner = _Runner(
            http,
            base_url.rstrip("/"),
            _secrets(api_key, other_api_key, admin_token),
            {op.operation_id: op for op in ops},
        )
        schema = load_fuzz_schema()
        bodies = {
            op.operation_id: _variants(op.body, schema.minimal(op.body))
            for op in ops
            if op.body is not None
        }
        runner.known = await runner.setup(bodies)
        # On this thread, though it blocks the loop a few seconds: Hypothesis reseeds the
        # global ``random`` while it generates, which must not race with other threads.
        plan = plan_requests(doc, runner.known, seed=seed, examples=examples)
        for category, requests in plan.items():
            await runner.run(requests)
            await runner.audit(category)
            await runner.reset_limits()
    return FuzzReport(
        seed=seed,
        examples=examples,
        tried={category: runner.tried.get(category, 0) for category in CATEGORIES},
        operations=dict(runner.per_operation),
        statuses=dict(sorted(runner.statuses.items())),
        problems=list(runner.problems),
        accepted_jobs=tuple(sorted(runner.accepted)),
        canceled_jobs=tuple(sorted(runner.canceled)),
        granted=dict(runner.granted),
    )


def all_requests(plan: Mapping[str, Iterable[FuzzRequest]]) -> list[FuzzRequest]:
    return [request for requests in plan.values() for request in requests]
