"""Every request of a run, planned up front from the document, the known ids and a seed."""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from loadtests.chaos.fuzz.corpora import (
    BAD_ADMIN,
    BAD_KEYS,
    ODD_CODEPOINTS,
    ODD_KEYS,
    ODD_PATHS,
    ODD_QUERY_VALUES,
    ODD_SEGMENTS,
    PRINTABLE,
    URLSAFE,
    derived_ids,
    malformed_bodies,
    mutate_bytes,
    random_key,
    valid_integer,
)
from loadtests.chaos.fuzz.document import Operation, Param, operations, param_valid, request_valid
from loadtests.chaos.fuzz.model import (
    ADMIN,
    ADMIN_WITHOUT_TOKEN,
    BAD_AUTH,
    BIG_SIZES,
    CROSS_ACCOUNT,
    DEFAULT,
    HEADER_LIMIT,
    IDEMPOTENCY_KEYS,
    JSON,
    MALFORMED_JSON,
    ODD_IDS,
    OTHER,
    OVERSIZED,
    OWN,
    SCHEMA,
    WRONG_TYPES,
    Default,
    Expect,
    FuzzRequest,
)

if TYPE_CHECKING:
    from loadtests.chaos import fuzz_schema

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
        auth: str | Default | None = DEFAULT,
        path: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | Default | None = DEFAULT,
        content_type: str = JSON,
        expect: Expect | None = None,
        invalid_why: str = "",
        **extra: Any,
    ) -> FuzzRequest:
        """A request for ``op``: its own credentials, real ids and minimal body by default.

        ``invalid_why`` turns into ``no_2xx`` when the arbiter finds the request invalid.
        """
        if body is DEFAULT:
            body = json_bytes(self.minimal[op.operation_id]) if op.body is not None else None
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
            body=json_bytes(case.body) if case.has_body else None,
            expect=expect,
            invalid_why=f"{why} ({case.mutation})" if case.mutation else why,
        )

    def malformed_json(self) -> Iterator[FuzzRequest]:
        why = "accepted a malformed body"
        for op in self.with_body():
            good = json_bytes(self.minimal[op.operation_id])
            for body, content_type, headers in malformed_bodies(good):
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
                    MALFORMED_JSON, op, body=mutate_bytes(good, self.rng), invalid_why=why
                )

    def oversized(self) -> Iterator[FuzzRequest]:
        ok = Expect(disconnect_ok=True)
        why = "accepted an oversized body the document calls invalid"
        for op in self.with_body():
            good = json_bytes(self.minimal[op.operation_id])
            minimal = self.minimal[op.operation_id]
            for size in BIG_SIZES:
                padded = b" " * size + good  # valid JSON, just big
                stuffed = (
                    json_bytes({**minimal, "fuzz_padding": "x" * size})
                    if isinstance(minimal, dict)
                    else json_bytes(["x" * size])
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
            keys = [*ODD_KEYS, *(random_key(self.rng) for _ in range(self.examples))]
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
        other = json_bytes(self.variant[op.operation_id])
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
                segments = [*ODD_SEGMENTS, *derived_ids(ids), *self.random_segments()]
                for segment in (s for s in segments if not valid_integer(param.schema, s)):
                    path = self.path(op, {param.name: segment})
                    big = len(path) > HEADER_LIMIT
                    yield self.request(
                        ODD_IDS, op, path=path, expect=Expect(no_2xx=found, disconnect_ok=big)
                    )
            for param in op.params_in("query"):
                for value in ODD_QUERY_VALUES:
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
            text = "".join(chr(self.rng.choice(ODD_CODEPOINTS)) for _ in range(length))
            yield quote(text, safe="")

    def odd_paths(self) -> Iterator[FuzzRequest]:
        job = self.known.jobs[0] if self.known.jobs else "job_0"
        for path in (*ODD_PATHS, f"/v1/jobs/./{job}", f"/v1/jobs/{job}/", f"/v1/jobs/{job}//"):
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
            for value in (*BAD_KEYS, *self.garbage_tokens()):
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
            alphabet = self.rng.choice((URLSAFE, PRINTABLE))
            yield "Bearer " + "".join(self.rng.choice(alphabet) for _ in range(length))

    def admin_without_token(self) -> Iterator[FuzzRequest]:
        why = "admin route answered 2xx without the admin token"
        for op in self.ops:
            if not op.admin:
                continue
            for value in (*BAD_ADMIN, *self.garbage_tokens()):
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
                for body in (DEFAULT, json_bytes(self.variant[op.operation_id])):
                    expect = Expect(other_job=mine, same_job=theirs)
                    yield self.request(
                        CROSS_ACCOUNT, op, auth=OTHER, headers=headers, body=body, expect=expect
                    )


def plan_requests(
    doc: Mapping[str, Any], known: Known, *, seed: int, examples: int
) -> dict[str, list[FuzzRequest]]:
    """Every request of a run, by category. The same arguments give the same plan."""
    schema = load_fuzz_schema()
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


def load_fuzz_schema() -> Any:
    try:
        from loadtests.chaos import fuzz_schema
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "the API fuzzer needs Hypothesis: pip install 'hypothesis>=6.100' "
            "(or install jobline with its dev extra: pip install -e '.[dev]')"
        ) from exc
    return fuzz_schema


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
