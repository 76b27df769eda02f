"""The OpenAPI document read as operations, and the arbiter of what it calls valid."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema

from loadtests.chaos.fuzz.model import JSON

if TYPE_CHECKING:
    pass

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


def is_json_type(content_type: str) -> bool:
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
    if body is None or not is_json_type(first_header.get("content-type", "")):
        return False
    if "content-encoding" in first_header:
        return False
    try:
        value = parse_json(body)
    except (ValueError, RecursionError):
        return False
    return jsonschema.Draft202012Validator(op.body).is_valid(value)
