"""Hostile input for the HTTP API, planned from its own ``/openapi.json`` (issue 5).

Theory of operation
-------------------
``fuzz_api`` reads the gateway's ``/openapi.json`` and fuzzes every operation it
describes, over real HTTP, in four steps:

1. **Set-up.** Learn both accounts' ids (``getCredits``), note the jobs and credit
   entries they already have, and open one job per model for each account, so that
   real job ids of both accounts exist to aim at.
2. **Plan.** Every request is made up front by ``plan_requests``: Hypothesis strategies
   drawn from the document's JSON Schemas (``loadtests.chaos.fuzz_schema``: requests that
   follow the schema, and requests with one part of the wrong type), and one
   ``random.Random(seed)`` for the hand-written hostile cases. The plan depends only on
   the document, the ids of step 1, the seed and the budget; secrets appear in it as
   placeholders (``<api_key>``, ``<admin_token:chopped>``) filled in at send time, so a
   request can be shown in a report as it is.
3. **Send and judge.** One request at a time (the requests of a ``group`` at once). Each
   answer is judged on its own against the request's ``Expect``: any 5xx or no answer at
   all; a 2xx that must not happen (bad credentials, no admin token, a request the
   document calls invalid); another account's job not answered 404; another account's
   ids in an answer; an Idempotency-Key that does not give the same job back.
4. **Audit** after each category, through the API: every job and credit entry the two
   accounts gained since step 1 must come from a request answered 2xx. A job, hold or
   grant without one is money moved by a rejected request.

The two accounts must not be used by anyone else while the fuzzer runs. Hypothesis
(a dev dependency) is imported only when a plan is made, so ``jobline`` installs without
it; asking for a fuzz run without it says what to install.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import enum
import gzip
import json
import random
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp
import jsonschema
from multidict import CIMultiDict
from yarl import URL

if TYPE_CHECKING:
    from loadtests.chaos import fuzz_schema

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
_SECRET_NAMES = ("api_key", "other_api_key", "admin_token")


# --- what was sent, what was wrong, what came of it ------------------------------------


class _Default(enum.Enum):
    """The operation's own credentials, or its minimal valid body."""

    DEFAULT = "default"


DEFAULT = _Default.DEFAULT


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


# --- the document ------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    location: str  # path | query | header
    required: bool
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str  # the template, e.g. /v1/jobs/{id}
    security: str  # the security scheme's name, "" for none
    params: tuple[Param, ...]
    body: Mapping[str, Any] | None  # JSON Schema of the application/json body
    responses: Mapping[str, Mapping[str, Any] | None]  # status -> JSON body schema

    @property
    def admin(self) -> bool:
        return "admin" in self.security.lower()

    @property
    def keyed(self) -> bool:
        """Needs an account's API key."""
        return bool(self.security) and not self.admin

    def params_in(self, location: str) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.location == location)

    def header(self, name: str) -> Param | None:
        return next((p for p in self.params_in("header") if p.name.lower() == name.lower()), None)

    @property
    def makes_jobs(self) -> bool:
        """A 2xx answer is a job (it has an id and a status)."""
        for status, schema in self.responses.items():
            if status.startswith("2") and schema and {"id", "status"} <= set(_props(schema)):
                return True
        return False


def resolve(node: Any, doc: Mapping[str, Any], depth: int = 0) -> Any:
    """``node`` with every local ``$ref`` replaced by what it points at."""
    if depth > 40:
        raise ValueError("$ref nesting too deep (a cycle?)")
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = doc
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return resolve({**target, **rest}, doc, depth + 1)
        return {key: resolve(value, doc, depth + 1) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, doc, depth + 1) for item in node]
    return node


def operations(doc: Mapping[str, Any]) -> list[Operation]:
    """Every operation of an OpenAPI 3 document, schemas resolved, in document order."""
    found = []
    default_security = doc.get("security", [])
    for path, item in doc.get("paths", {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            op = item.get(method)
            if op is None:
                continue
            security = op.get("security", default_security)
            scheme = next(iter(security[0]), "") if security else ""
            params = tuple(
                Param(p["name"], p["in"], bool(p.get("required")), p.get("schema", {}))
                for p in resolve([*item.get("parameters", []), *op.get("parameters", [])], doc)
                if p.get("in") in ("path", "query", "header")
            )
            body = resolve(op.get("requestBody", {}), doc).get("content", {}).get(JSON)
            responses = {
                str(status): (answer.get("content", {}).get(JSON) or {}).get("schema")
                for status, answer in resolve(op.get("responses", {}), doc).items()
            }
            found.append(
                Operation(
                    op.get("operationId", f"{method} {path}"),
                    method.upper(),
                    path,
                    scheme,
                    params,
                    None if body is None else body.get("schema", {}),
                    responses,
                )
            )
    return found


def _props(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    props: Mapping[str, Any] = schema.get("properties", {})
    return props


# --- the arbiter: does the document call a request valid? --------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """JSON without NaN or Infinity. Raises ValueError.

    UTF-16 and UTF-32 and a UTF-8 byte order mark are let through, as ``json.loads``
    does: RFC 8259 allows ignoring a BOM, and reading more encodings is no harm.
    """
    return json.loads(raw, parse_constant=_refuse_constant)


def _is_json_type(content_type: str) -> bool:
    mime = content_type.split(";")[0].strip().lower()
    return mime == JSON or (mime.startswith("application/") and mime.endswith("+json"))


def _valid_int(text: str, schema: Mapping[str, Any]) -> bool:
    if not re.fullmatch(r"-?[0-9]+", text):
        return False
    digits = text.lstrip("-").lstrip("0") or "0"
    if len(digits) > 30:  # past any bound the document gives (and past int())
        negative = text.startswith("-")
        return ("minimum" not in schema) if negative else ("maximum" not in schema)
    value = -int(digits) if text.startswith("-") else int(digits)
    low: int = schema.get("minimum", value)
    high: int = schema.get("maximum", value)
    return low <= value <= high


def param_valid(schema: Mapping[str, Any], text: str) -> bool:
    """Whether a query or header value (as text) is what ``schema`` allows."""
    kind = schema.get("type", "string")
    if "enum" in schema:
        return text in [str(v) for v in schema["enum"]]
    if kind == "integer":
        return _valid_int(text, schema)
    if kind == "boolean":
        return text.lower() in ("true", "false", "1", "0")
    if kind == "number":
        try:
            float(text)
        except ValueError:
            return False
        return True
    if not schema.get("minLength", 0) <= len(text) <= schema.get("maxLength", len(text)):
        return False
    pattern = schema.get("pattern")
    return pattern is None or re.search(pattern, text) is not None


def _params_valid(
    params: Iterable[Param], given: Mapping[str, str], key: Callable[[str], str]
) -> bool:
    for param in params:
        value = given.get(key(param.name))
        if value is None:
            if param.required:
                return False
        elif not param_valid(param.schema, value):
            return False
    return True


def request_valid(
    op: Operation,
    query: Sequence[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    body: bytes | None,
) -> bool:
    """Whether the document says ``op`` must accept this (a 2xx for it is not a problem)."""
    first_query: dict[str, str] = {}
    for name, value in query:
        first_query.setdefault(name, value)
    first_header: dict[str, str] = {}
    for name, value in headers:
        first_header.setdefault(name.lower(), value.strip(" \t"))
    if not _params_valid(op.params_in("query"), first_query, str):
        return False
    if not _params_valid(op.params_in("header"), first_header, str.lower):
        return False
    if op.body is None:
        return True
    if body is None or not _is_json_type(first_header.get("content-type", "")):
        return False
    if "content-encoding" in first_header:
        return False
    try:
        value = parse_json(body)
    except (ValueError, RecursionError):
        return False
    return jsonschema.Draft202012Validator(op.body).is_valid(value)


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """Ids learned at set-up: the API key's account and jobs, and the other account's."""

    account: str = ""
    other_account: str = ""
    jobs: tuple[str, ...] = ()
    other_jobs: tuple[str, ...] = ()


@dataclass
class _Planner:
    ops: list[Operation]
    known: Known
    seed: int
    examples: int
    schema: Any  # the loadtests.chaos.fuzz_schema module
    rng: random.Random = field(init=False)
    groups: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.minimal = {
            op.operation_id: self.schema.minimal(op.body) for op in self.ops if op.body is not None
        }
        self.variant = {
            op.operation_id: self.schema.minimal(op.body, filler="y")
            for op in self.ops
            if op.body is not None
        }

    # --- pieces ------------------------------------------------------------------------

    def auth(self, op: Operation) -> str | None:
        return ADMIN if op.admin else OWN if op.keyed else None

    def ids(self, op: Operation, param: Param, own: bool = True) -> tuple[str, ...]:
        """Real ids a path parameter can take."""
        if "enum" in param.schema:
            return tuple(str(v) for v in param.schema["enum"])
        if param.schema.get("type") == "integer":  # an index, e.g. a job's outputs/{n}
            return (str(param.schema.get("minimum", 0)),)
        k = self.known
        if "/accounts/" in op.path:
            return tuple(a for a in (k.account, k.other_account) if a)
        return k.jobs if own else k.other_jobs

    def path(self, op: Operation, values: Mapping[str, str] | None = None, own: bool = True) -> str:
        """``op``'s path with ``values`` (already percent-encoded) or real ids filled in."""
        path = op.path
        for param in op.params_in("path"):
            given = (values or {}).get(param.name)
            if given is None:
                ids = self.ids(op, param, own)
                given = quote(ids[0] if ids else "fuzz-missing", safe="")
            path = path.replace("{" + param.name + "}", given)
        return path

    def pools(self, op: Operation) -> dict[str, tuple[str, ...]]:
        return {p.name: self.ids(op, p) for p in op.params_in("path")}

    def request(
        self,
        category: str,
        op: Operation,
        *,
        auth: str | _Default | None = DEFAULT,
        path: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | _Default | None = DEFAULT,
        content_type: str = JSON,
        expect: Expect | None = None,
        invalid_why: str = "",
        **extra: Any,
    ) -> FuzzRequest:
        """A request for ``op``: its own credentials, real ids and minimal body by default.

        ``invalid_why`` turns into ``no_2xx`` when the arbiter finds the request invalid.
        """
        if body is DEFAULT:
            body = _json_bytes(self.minimal[op.operation_id]) if op.body is not None else None
        all_headers: list[tuple[str, str]] = []
        credential = self.auth(op) if auth is DEFAULT else auth
        if credential is not None:
            all_headers.append(("Authorization", credential))
        if body is not None and content_type:
            all_headers.append(("Content-Type", content_type))
        all_headers.extend(headers)
        target = self.path(op) if path is None else path
        if query:
            target += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
        expect = expect or Expect()
        if invalid_why and not request_valid(op, query, all_headers, body):
            expect = replace(expect, no_2xx=expect.no_2xx or invalid_why)
        return FuzzRequest(
            category,
            op.method,
            target,
            tuple(all_headers),
            body,
            op.operation_id,
            expect,
            **extra,
        )

    def next_group(self) -> int:
        self.groups += 1
        return self.groups

    def with_body(self) -> list[Operation]:
        return [op for op in self.ops if op.body is not None]

    def hypothesis_seed(self, category: str, op: Operation) -> int:
        return zlib.crc32(f"{self.seed}:{category}:{op.operation_id}".encode())

    # --- categories ----------------------------------------------------------------------

    def schema_driven(self) -> Iterator[FuzzRequest]:
        for op in self.ops:
            drawn = self.schema.draw_examples(
                self.schema.valid_requests(op, self.pools(op)),
                self.examples,
                self.hypothesis_seed(SCHEMA, op),
            )
            for case in drawn:
                yield self.from_drawn(SCHEMA, op, case, Expect(documented=True))

    def wrong_types(self) -> Iterator[FuzzRequest]:
        for op in self.ops:
            if not op.params and op.body is None:
                continue
            drawn = self.schema.draw_examples(
                self.schema.wrong_requests(op, self.pools(op)),
                self.examples,
                self.hypothesis_seed(WRONG_TYPES, op),
            )
            for case in drawn:
                yield self.from_drawn(WRONG_TYPES, op, case, Expect())

    def from_drawn(
        self, category: str, op: Operation, case: fuzz_schema.Drawn, expect: Expect
    ) -> FuzzRequest:
        values = {name: quote(value, safe="") for name, value in case.path}
        why = "accepted a request the document calls invalid"
        return self.request(
            category,
            op,
            path=self.path(op, values),
            query=case.query,
            headers=case.headers,
            body=_json_bytes(case.body) if case.has_body else None,
            expect=expect,
            invalid_why=f"{why} ({case.mutation})" if case.mutation else why,
        )

    def malformed_json(self) -> Iterator[FuzzRequest]:
        why = "accepted a malformed body"
        for op in self.with_body():
            good = _json_bytes(self.minimal[op.operation_id])
            for body, content_type, headers in _malformed_bodies(good):
                yield self.request(
                    MALFORMED_JSON,
                    op,
                    body=body,
                    content_type=content_type,
                    headers=headers,
                    invalid_why=why,
                )
            for _ in range(self.examples):
                yield self.request(
                    MALFORMED_JSON, op, body=_mutate_bytes(good, self.rng), invalid_why=why
                )

    def oversized(self) -> Iterator[FuzzRequest]:
        ok = Expect(disconnect_ok=True)
        why = "accepted an oversized body the document calls invalid"
        for op in self.with_body():
            good = _json_bytes(self.minimal[op.operation_id])
            minimal = self.minimal[op.operation_id]
            for size in BIG_SIZES:
                padded = b" " * size + good  # valid JSON, just big
                stuffed = (
                    _json_bytes({**minimal, "fuzz_padding": "x" * size})
                    if isinstance(minimal, dict)
                    else _json_bytes(["x" * size])
                )
                garbage = self.rng.randbytes(size)
                for body in (padded, stuffed, garbage):
                    yield self.request(OVERSIZED, op, body=body, expect=ok, invalid_why=why)
            yield self.request(OVERSIZED, op, body=b" " * (1 << 20) + good, expect=ok, chunked=True)
        if self.ops:
            many = tuple((f"X-Fuzz-{i}", "v" * 100) for i in range(300))
            yield self.request(OVERSIZED, self.ops[0], headers=many, expect=ok)

    def idempotency_keys(self) -> Iterator[FuzzRequest]:
        for op in self.ops:
            param = op.header("Idempotency-Key")
            if param is None:
                continue
            keys = [*_ODD_KEYS, *(_random_key(self.rng) for _ in range(self.examples))]
            for i, key in enumerate(keys):
                yield from self.key_probe(op, param, key, f"key-{op.operation_id}-{i}")
            if op.makes_jobs:
                yield from self.key_race(op, param)

    def key_probe(self, op: Operation, param: Param, key: str, label: str) -> Iterator[FuzzRequest]:
        """A key; if the document allows it, the same again, and again with another body."""
        name = param.name
        raw = any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in key)
        big = len(key) > HEADER_LIMIT
        valid = param_valid(param.schema, key.strip(" \t"))
        first = Expect(
            no_2xx="" if valid else "accepted an Idempotency-Key the document calls invalid",
            same_job=label if op.makes_jobs else "",
            disconnect_ok=big,
        )
        yield self.request(IDEMPOTENCY_KEYS, op, headers=[(name, key)], expect=first, raw=raw)
        if not valid or not op.makes_jobs:
            return
        yield self.request(IDEMPOTENCY_KEYS, op, headers=[(name, key)], expect=first)
        conflict = Expect(
            conflict_with=label,
            no_2xx="the same Idempotency-Key with another body was accepted",
        )
        other = _json_bytes(self.variant[op.operation_id])
        yield self.request(IDEMPOTENCY_KEYS, op, headers=[(name, key)], body=other, expect=conflict)

    def key_race(self, op: Operation, param: Param) -> Iterator[FuzzRequest]:
        """The same key and body several times at once: one job."""
        for n in range(max(1, self.examples // 10)):
            key = f"fuzz-race-{self.seed}-{n}-{self.rng.getrandbits(32):08x}"
            group = self.next_group()
            expect = Expect(same_job=f"race-{key}")
            for _ in range(4):
                yield self.request(
                    IDEMPOTENCY_KEYS, op, headers=[(param.name, key)], expect=expect, group=group
                )

    def odd_ids(self) -> Iterator[FuzzRequest]:
        found = "an odd id was answered 2xx"
        for op in self.ops:
            for param in op.params_in("path"):
                ids = self.ids(op, param)
                segments = [*_ODD_SEGMENTS, *_derived_ids(ids), *self.random_segments()]
                for segment in (s for s in segments if not _valid_integer(param.schema, s)):
                    path = self.path(op, {param.name: segment})
                    big = len(path) > HEADER_LIMIT
                    yield self.request(
                        ODD_IDS, op, path=path, expect=Expect(no_2xx=found, disconnect_ok=big)
                    )
            for param in op.params_in("query"):
                for value in _ODD_QUERY_VALUES:
                    yield self.request(
                        ODD_IDS,
                        op,
                        query=[(param.name, value)],
                        expect=Expect(disconnect_ok=len(value) > HEADER_LIMIT),
                        invalid_why=f"accepted {param.name}={value[:40]!r}",
                    )
        yield from self.odd_paths()

    def random_segments(self) -> Iterator[str]:
        for _ in range(self.examples):
            length = self.rng.choice((1, 2, 8, 40, 300))
            text = "".join(chr(self.rng.choice(_ODD_CODEPOINTS)) for _ in range(length))
            yield quote(text, safe="")

    def odd_paths(self) -> Iterator[FuzzRequest]:
        job = self.known.jobs[0] if self.known.jobs else "job_0"
        for path in (*_ODD_PATHS, f"/v1/jobs/./{job}", f"/v1/jobs/{job}/", f"/v1/jobs/{job}//"):
            for method in ("GET", "POST"):
                yield FuzzRequest(ODD_IDS, method, path, (("Authorization", OWN),))
        for op in self.ops:  # methods the route does not have
            for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FUZZ"):
                if method != op.method:
                    yield FuzzRequest(ODD_IDS, method, self.path(op), (("Authorization", OWN),))

    def bad_auth(self) -> Iterator[FuzzRequest]:
        why = "auth bypass: 2xx without a valid API key"
        for op in self.ops:
            if not op.keyed:
                continue
            for value in (*_BAD_KEYS, *self.garbage_tokens()):
                auth = None if value is None else value
                yield self.request(BAD_AUTH, op, auth=auth, expect=Expect(no_2xx=why))
            yield self.request(
                BAD_AUTH, op, auth=None, query=[("api_key", "<api_key>")], expect=Expect(no_2xx=why)
            )
            for name in ("X-API-Key", "Api-Key", "Cookie"):
                yield self.request(
                    BAD_AUTH,
                    op,
                    auth=None,
                    headers=[(name, "<api_key>")],
                    expect=Expect(no_2xx=why),
                )
            yield self.request(
                BAD_AUTH, op, auth="Bearer <api_key>\x00", expect=Expect(no_2xx=why), raw=True
            )

    def garbage_tokens(self) -> Iterator[str]:
        for _ in range(max(2, self.examples // 4)):
            length = self.rng.choice((1, 8, 43, 46, 200, 2000))
            alphabet = self.rng.choice((_URLSAFE, _PRINTABLE))
            yield "Bearer " + "".join(self.rng.choice(alphabet) for _ in range(length))

    def admin_without_token(self) -> Iterator[FuzzRequest]:
        why = "admin route answered 2xx without the admin token"
        for op in self.ops:
            if not op.admin:
                continue
            for value in (*_BAD_ADMIN, *self.garbage_tokens()):
                yield self.request(ADMIN_WITHOUT_TOKEN, op, auth=value, expect=Expect(no_2xx=why))
            for query in (("token", "<admin_token>"), ("admin_token", "<admin_token>")):
                yield self.request(
                    ADMIN_WITHOUT_TOKEN, op, auth=None, query=[query], expect=Expect(no_2xx=why)
                )
            for header in ("X-Admin-Token", "X-Jobline-Admin-Token", "Cookie"):
                yield self.request(
                    ADMIN_WITHOUT_TOKEN,
                    op,
                    auth=None,
                    headers=[(header, "<admin_token>")],
                    expect=Expect(no_2xx=why),
                )
            yield self.request(
                ADMIN_WITHOUT_TOKEN,
                op,
                auth="Bearer <admin_token>\x01",
                expect=Expect(no_2xx=why),
                raw=True,
            )

    def cross_account(self) -> Iterator[FuzzRequest]:
        k = self.known
        sides = ((OTHER, k.jobs, (k.account, *k.jobs)), (OWN, k.other_jobs, (k.other_account,)))
        for auth, their_jobs, theirs in sides:
            for op in self.ops:
                if not op.keyed:
                    continue
                job_params = [p for p in op.params_in("path") if "enum" not in p.schema]
                if job_params and "/accounts/" not in op.path:
                    for job in their_jobs:
                        values = {p.name: quote(job, safe="") for p in job_params}
                        expect = Expect(status=404, status_why="another account's job must be 404")
                        yield self.request(
                            CROSS_ACCOUNT, op, auth=auth, path=self.path(op, values), expect=expect
                        )
                elif op.method == "GET" and not job_params:
                    hidden = tuple(i for i in theirs if i)
                    for query in self.list_queries(op):
                        yield self.request(
                            CROSS_ACCOUNT, op, auth=auth, query=query, expect=Expect(hidden=hidden)
                        )
        yield from self.shared_keys()

    def list_queries(self, op: Operation) -> list[list[tuple[str, str]]]:
        queries: list[list[tuple[str, str]]] = [[]]
        for param in op.params_in("query"):
            for value in param.schema.get("enum", []):
                queries.append([(param.name, str(value))])
        return queries

    def shared_keys(self) -> Iterator[FuzzRequest]:
        """Both accounts use one Idempotency-Key: each gets its own job, never the other's."""
        for op in self.ops:
            param = op.header("Idempotency-Key")
            if param is None or not op.keyed or not op.makes_jobs:
                continue
            for n in range(max(1, self.examples // 10)):
                key = f"fuzz-shared-{self.seed}-{n}-{self.rng.getrandbits(32):08x}"
                mine, theirs = f"shared-own-{key}", f"shared-other-{key}"
                headers = [(param.name, key)]
                yield self.request(CROSS_ACCOUNT, op, headers=headers, expect=Expect(same_job=mine))
                for body in (DEFAULT, _json_bytes(self.variant[op.operation_id])):
                    expect = Expect(other_job=mine, same_job=theirs)
                    yield self.request(
                        CROSS_ACCOUNT, op, auth=OTHER, headers=headers, body=body, expect=expect
                    )


def plan_requests(
    doc: Mapping[str, Any], known: Known, *, seed: int, examples: int
) -> dict[str, list[FuzzRequest]]:
    """Every request of a run, by category. The same arguments give the same plan."""
    schema = _fuzz_schema()
    planner = _Planner(operations(doc), known, seed, max(1, examples), schema)
    makers = {
        SCHEMA: planner.schema_driven,
        WRONG_TYPES: planner.wrong_types,
        MALFORMED_JSON: planner.malformed_json,
        OVERSIZED: planner.oversized,
        IDEMPOTENCY_KEYS: planner.idempotency_keys,
        ODD_IDS: planner.odd_ids,
        BAD_AUTH: planner.bad_auth,
        ADMIN_WITHOUT_TOKEN: planner.admin_without_token,
        CROSS_ACCOUNT: planner.cross_account,
    }
    return {category: list(make()) for category, make in makers.items()}


def _fuzz_schema() -> Any:
    try:
        from loadtests.chaos import fuzz_schema
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "the API fuzzer needs Hypothesis: pip install 'hypothesis>=6.100' "
            "(or install jobline with its dev extra: pip install -e '.[dev]')"
        ) from exc
    return fuzz_schema


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


# --- the hostile corpora --------------------------------------------------------------------

_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
_URLSAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_ODD_CODEPOINTS = (
    *range(0x20, 0x7F),
    0x00,
    0x01,
    0x0A,
    0x7F,
    0x85,
    0xA0,
    0xE9,
    0x202E,
    0x2028,
    0xFEFF,
    0x1F511,
    0x43A,
)

_BAD_KEYS: tuple[str | None, ...] = (
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer     ",
    "Basic <api_key>",
    "Token <api_key>",
    "<api_key>",
    "Bearer <api_key:chopped>",
    "Bearer <api_key:extended>",
    "Bearer <api_key:mangled>",
    "Bearer <api_key> <api_key>",
    "Bearer <admin_token>",
    "Bearer jl_",
    "Bearer jl_ключ",
    "Bearer null",
    "Bearer undefined",
    "Bearer%20<api_key>",
    "Bearer " + "x" * 9_000,
)
_BAD_ADMIN: tuple[str | None, ...] = (
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer <api_key>",
    "Bearer <other_api_key>",
    "Bearer <admin_token:chopped>",
    "Bearer <admin_token:extended>",
    "Bearer <admin_token:mangled>",
    "Bearer <admin_token> <admin_token>",
    "Basic <admin_token>",
    "Token <admin_token>",
    "<admin_token>",
    "Bearer null",
    "Bearer ключ",
    "Bearer " + "x" * 9_000,
)
_ODD_KEYS = (
    "",
    " ",
    "\t",
    "a",
    " a",
    "a ",
    "a b",
    "k" * 255,
    "k" * 256,
    "k" * 1_024,
    "k" * 9_000,
    "ключ",
    "🔑",
    "é",
    "key\x7f",
    "key\x01",
    "key\x00",
    "%00",
    "../../etc/passwd",
    "' OR '1'='1",
    "null",
    "KEY-case",
    "key-case",
    '"quoted"',
    "a,b",
    "a;b=c",
)
_ODD_SEGMENTS = (
    "%20",
    "%2e%2e",
    "%2e",
    "%2F",
    "a%2Fb",
    "%00",
    "%0a",
    "%0d%0a",
    "%ff",
    "%C3%A9",
    "%E2%80%AE",
    "%F0%9F%94%91",
    "%25",
    "%zz",
    "*",
    "job_",
    "job_" + "0" * 32,
    "acct_",
    "x" * 2_000,
    "x" * 9_000,
    "%27%20OR%20%271%27%3D%271",
    "1%3B%20DROP%20TABLE%20jobs",
    "null",
    "undefined",
    "-1",
    "0",
    "9" * 30,
    "%7Bid%7D",
)
_ODD_QUERY_VALUES = (
    "",
    "0",
    "-1",
    "1.5",
    "1e3",
    "+5",
    " 5",
    "0x10",
    "99999999999999999999",
    "0" * 4_400 + "1",
    "9" * 5_000,
    "١٢",
    "\x00",
    "abc",
    "TRUE",
    "null",
    "%zz",
    "queued,failed",
)
_ODD_PATHS = (
    "/v1/jobs/",
    "/v1//jobs",
    "/V1/JOBS",
    "/v1/jobs/x/y/z",
    "/../../etc/passwd",
    "/v1/jobs/%2e%2e/%2e%2e/metrics",
    "/v1/admin/dead-letters/",
    "/v1/admin/%2e%2e/admin/dead-letters",
    "//",
    "/%00",
    "/v1/jobs?limit=1&limit=999999",
    "/v1/jobs?" + "a=1&" * 1_500,
    "/" + "a" * 10_000,
)


def _valid_integer(schema: Mapping[str, Any], segment: str) -> bool:
    """Is ``segment`` a value an integer path parameter accepts (not an odd one)?"""
    if schema.get("type") != "integer" or not segment.isdigit() or segment != str(int(segment)):
        return False
    return int(schema.get("minimum", 0)) <= int(segment) <= int(schema.get("maximum", 2**31))


def _derived_ids(ids: Sequence[str]) -> Iterator[str]:
    """Near misses of a real id: case, whitespace, a slash, cut short, made longer."""
    for real in ids[:1]:
        for near in (real.upper(), real + " ", " " + real, real + "\n", real[:-1], real + "0"):
            yield quote(near, safe="")
        yield quote(real, safe="") + "%2F"
        yield quote(real, safe="") + "%00"


def _random_key(rng: random.Random) -> str:
    length = rng.choice((1, 2, 16, 64, 254, 255, 256, 300))
    alphabet = rng.choice((_URLSAFE, _PRINTABLE, _PRINTABLE + "éключ🔑"))
    return "".join(rng.choice(alphabet) for _ in range(length))


def _gzip_bomb() -> bytes:
    return gzip.compress(b"\0" * (16 << 20), compresslevel=9, mtime=0)


def _malformed_bodies(good: bytes) -> Iterator[tuple[bytes, str, list[tuple[str, str]]]]:
    """(body, content type, extra headers) of bodies that are not acceptable JSON requests."""
    plain: list[bytes] = [
        b"",
        b"{",
        b"}",
        b'{"a":',
        good[: len(good) // 2],
        good + b"garbage",
        good + b" " + good,
        b"[]",
        b"null",
        b"0",
        b'"text"',
        b"true",
        b"{'model': 'x'}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
        b'{"a": ' + b"9" * 5_000 + b"}",
        b'{"a": "\\ud800"}',
        b'{"a": "\xff\xfe"}',
        codecs.BOM_UTF8 + good,
        b"\x00" * 16,
        b"[" * 50_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"a": 1, "a": 2}',
        good.replace(b":", b"=", 1),
    ]
    for body in plain:
        yield body, JSON, []
    for content_type in ("text/plain", "", "application/x-www-form-urlencoded", "a/b/c"):
        yield good, content_type, []
    yield good.decode().encode("utf-16"), JSON + "; charset=utf-16", []
    yield good, JSON + "; charset=ebcdic", []
    for encoding in ("gzip", "deflate", "br", "zstd", "x-unknown"):
        yield b"not compressed", JSON, [("Content-Encoding", encoding)]
    yield _gzip_bomb(), JSON, [("Content-Encoding", "gzip")]


def _mutate_bytes(good: bytes, rng: random.Random) -> bytes:
    data = bytearray(good)
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        at = rng.randrange(len(data))
        action = rng.randrange(4)
        if action == 0:
            del data[at:]
        elif action == 1:
            data[at] = rng.randrange(256)
        elif action == 2:
            data.insert(at, rng.choice(b'{}[]",:\\\x00\xff'))
        else:
            del data[at]
    return bytes(data)


# --- sending and judging ------------------------------------------------------------------


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
    known: Known = Known()
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
        if not status.startswith("2") or not schema or not _is_json_type(answer.content_type):
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
                    _json_bytes(body),
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
    if answer is None or not _is_json_type(answer.content_type):
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
    made = _fuzz_schema()
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
        schema = _fuzz_schema()
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
