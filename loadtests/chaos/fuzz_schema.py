"""Hypothesis strategies for the requests an OpenAPI operation describes.

``valid_requests(op, pools)`` draws requests that follow the operation's parameters
and JSON body schema; ``wrong_requests`` draws the same with one part broken: a value
of another JSON type, a required key left out, an unknown key added, a parameter
swapped for text. ``draw_examples`` runs Hypothesis's generator with a fixed seed and
no database or shrinking, so a seed gives the same requests every time. ``minimal``
builds the smallest valid value of a schema without randomness.

Only the JSON Schema jobline's document uses is understood: ``type`` (or a list of
types), ``const``, ``enum``, ``oneOf``/``anyOf``, ``properties``/``required``,
``minLength``/``maxLength``/``pattern``, ``minimum``/``maximum`` and ``items``. (The
``hypothesis-jsonschema`` package would cover more, but does not work with the
Hypothesis jobline uses.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import jsonschema
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import seed as seeded
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from loadtests.chaos.fuzz.document import Operation, Param

T = TypeVar("T")

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_JSON_TYPES = ("string", "integer", "number", "boolean", "null", "object", "array")
_ODD_PARAMS = ("", "-1", "0", "1.5", "1e3", "null", "true", "9" * 25, "0" * 4_400 + "1")
_QUIET = settings(
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


@dataclass(frozen=True)
class Drawn:
    """One drawn request, before credentials: path and query values as text."""

    path: tuple[tuple[str, str], ...]
    query: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    has_body: bool
    body: Any
    mutation: str = ""  # what was made wrong ("" for a valid request)


# --- values of a schema ------------------------------------------------------------------


def json_values() -> SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=8,
    )


def values(schema: Mapping[str, Any]) -> SearchStrategy[Any]:
    """Values valid under ``schema``."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return st.one_of([values(sub) for sub in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([values({**schema, "type": k}) for k in kind])
    if kind is None:
        return json_values()
    return _BY_TYPE[kind](schema)


def _string(schema: Mapping[str, Any]) -> SearchStrategy[Any]:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    pattern = schema.get("pattern")
    if pattern is None:
        return st.text(min_size=low, max_size=high)
    return st.from_regex(pattern, fullmatch=True).filter(
        lambda s: low <= len(s) <= (len(s) if high is None else high)
    )


def _integer(schema: Mapping[str, Any]) -> SearchStrategy[Any]:
    return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))


def _number(schema: Mapping[str, Any]) -> SearchStrategy[Any]:
    """Floats in the bounds, and the whole numbers among them (bounds need not be whole:
    ``minimum: 0.01`` allows the integers from 1)."""
    low, high = schema.get("minimum"), schema.get("maximum")
    floats = st.floats(low, high, allow_nan=False, allow_infinity=False)
    whole_low = None if low is None else math.ceil(low)
    whole_high = None if high is None else math.floor(high)
    if whole_low is not None and whole_high is not None and whole_low > whole_high:
        return floats
    return st.one_of(st.integers(min_value=whole_low, max_value=whole_high), floats)


def _object(schema: Mapping[str, Any]) -> SearchStrategy[Any]:
    props: Mapping[str, Any] = schema.get("properties", {})
    required = list(schema.get("required", []))
    return st.fixed_dictionaries(
        {key: values(props.get(key, {})) for key in required},
        optional={key: values(sub) for key, sub in props.items() if key not in required},
    )


def _array(schema: Mapping[str, Any]) -> SearchStrategy[Any]:
    return st.lists(
        values(schema.get("items", {})),
        min_size=schema.get("minItems", 0),
        max_size=schema.get("maxItems", 4),
    )


_BY_TYPE: dict[str, Callable[[Mapping[str, Any]], SearchStrategy[Any]]] = {
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": lambda _: st.booleans(),
    "null": lambda _: st.none(),
    "object": _object,
    "array": _array,
}


def _types_of(schema: Mapping[str, Any]) -> set[str]:
    """The JSON types ``schema`` allows (all of them when it does not say)."""
    if "const" in schema or "enum" in schema:
        found = schema.get("enum", [schema.get("const")])
        return {_type_name(value) for value in found}
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return set().union(*(_types_of(sub) for sub in schema[key]))
    kind = schema.get("type")
    if kind is None:
        return set(_JSON_TYPES)
    kinds = set(kind) if isinstance(kind, list) else {kind}
    return kinds | ({"integer"} if "number" in kinds else set())


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def wrong_values(schema: Mapping[str, Any]) -> SearchStrategy[Any]:
    """Values of a JSON type ``schema`` does not allow (or off its enum)."""
    scalars = st.one_of(st.none(), st.integers(), st.text(max_size=5))
    other = {
        "string": st.text(max_size=20),
        "integer": st.integers(),
        # JSON Schema counts 5.0 as an integer: only fractions are "another type".
        "number": st.floats(allow_nan=False, allow_infinity=False).filter(
            lambda f: not f.is_integer()
        ),
        "boolean": st.booleans(),
        "null": st.none(),
        "object": st.dictionaries(st.text(max_size=5), scalars, max_size=3),
        "array": st.lists(scalars, max_size=3),
    }
    allowed = _types_of(schema)
    choices = [strategy for kind, strategy in other.items() if kind not in allowed]
    listed = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if listed is not None:
        choices.append(st.text(max_size=20).filter(lambda v: v not in listed))
    return st.one_of(choices) if choices else json_values()


# --- the smallest valid value, without randomness ------------------------------------------


def minimal(schema: Mapping[str, Any] | None, filler: str = "x") -> Any:
    """The smallest value valid under ``schema``: required keys only, short strings.

    ``filler`` fills strings, so ``minimal(s, "y")`` is another valid value.
    """
    if schema is None:
        return None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return minimal(schema[key][0], filler)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        if "pattern" in schema:
            return find(_string(schema), lambda _: True, settings=_QUIET)
        length = max(schema.get("minLength", 0), 1)
        return (filler * length)[: schema.get("maxLength", length)]
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        value = 1 if low is None else low
        return value if high is None else min(value, high)
    if kind == "object":
        props: Mapping[str, Any] = schema.get("properties", {})
        return {key: minimal(props.get(key, {}), filler) for key in schema.get("required", [])}
    return {"boolean": False, "null": None, "array": []}.get(kind)


# --- requests -------------------------------------------------------------------------------


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def param_values(param: Param) -> SearchStrategy[str]:
    schema = param.schema
    plain = schema.get("type", "string") == "string" and not (
        {"pattern", "enum", "const"} & set(schema)
    )
    if param.location == "header" and plain:
        return st.text(PRINTABLE, max_size=schema.get("maxLength", 60))
    return values(schema).map(_as_text)


def _path_values(param: Param, pool: Sequence[str]) -> SearchStrategy[str]:
    drawn = param_values(param)
    return st.one_of(st.sampled_from(list(pool)), drawn) if pool else drawn


def valid_requests(op: Operation, pools: Mapping[str, Sequence[str]]) -> SearchStrategy[Drawn]:
    """Requests ``op``'s document allows; path parameters often take an id from ``pools``."""

    @st.composite
    def draw_request(draw: st.DrawFn) -> Drawn:
        path = tuple(
            (p.name, draw(_path_values(p, pools.get(p.name, ())))) for p in op.params_in("path")
        )
        optional = [
            tuple(
                (p.name, draw(param_values(p)))
                for p in op.params_in(location)
                if p.required or draw(st.booleans())
            )
            for location in ("query", "header")
        ]
        body = draw(values(op.body)) if op.body is not None else None
        return Drawn(path, optional[0], optional[1], op.body is not None, body)

    return draw_request()


def _slots(schema: Mapping[str, Any], value: Any, at: tuple[str, ...] = ()) -> list[Any]:
    """(path, schema) of every part of ``value`` whose schema is known."""
    for key in ("oneOf", "anyOf"):
        for sub in schema.get(key, []):
            if jsonschema.Draft202012Validator(sub).is_valid(value):
                return _slots(sub, value, at)
    found: list[Any] = [(at, schema)]
    props: Mapping[str, Any] = schema.get("properties", {})
    if isinstance(value, dict):
        for key in value:
            if key in props:
                found += _slots(props[key], value[key], (*at, key))
    return found


def _set(value: Any, at: tuple[str, ...], new: Any) -> Any:
    if not at:
        return new
    return {**value, at[0]: _set(value[at[0]], at[1:], new)}


def _get(value: Any, at: tuple[str, ...]) -> Any:
    for key in at:
        value = value[key]
    return value


def wrong_requests(op: Operation, pools: Mapping[str, Sequence[str]]) -> SearchStrategy[Drawn]:
    """Valid requests with one part broken; ``Drawn.mutation`` says which."""

    @st.composite
    def draw_wrong(draw: st.DrawFn) -> Drawn:
        base = draw(valid_requests(op, pools))
        kinds = [f"param:{p.location}:{p.name}" for p in op.params if p.location != "path"]
        slots = _slots(op.body, base.body) if op.body is not None else []
        kinds += [f"type:{i}" for i in range(len(slots))]
        kinds += [f"shape:{i}" for i, (_, s) in enumerate(slots) if isinstance(s, dict)]
        if not kinds:
            return base
        kind = draw(st.sampled_from(kinds))
        if kind.startswith("param:"):
            _, location, name = kind.split(":", 2)
            bad = draw(st.one_of(st.sampled_from(_ODD_PARAMS), st.text(PRINTABLE, max_size=30)))
            if location == "query":
                rest = tuple(pair for pair in base.query if pair[0] != name)
                query = ((name, bad), *rest)
                return Drawn(base.path, query, base.headers, base.has_body, base.body, kind)
            rest = tuple(pair for pair in base.headers if pair[0] != name)
            headers = ((name, bad), *rest)
            return Drawn(base.path, base.query, headers, base.has_body, base.body, kind)
        at, schema = slots[int(kind.split(":")[1])]
        if kind.startswith("type:"):
            body = _set(base.body, at, draw(wrong_values(schema)))
            where = ".".join(at) or "body"
            return Drawn(base.path, base.query, base.headers, True, body, f"{where}: wrong type")
        target = _get(base.body, at)
        if not isinstance(target, dict):
            return base
        required = [k for k in schema.get("required", []) if k in target]
        drop: bool = draw(st.booleans())
        if required and drop:
            gone = draw(st.sampled_from(required))
            shaped = {k: v for k, v in target.items() if k != gone}
            mutation = f"{'.'.join(at) or 'body'}: no {gone}"
        else:
            extra = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in target))
            shaped = {**target, extra: draw(json_values())}
            mutation = f"{'.'.join(at) or 'body'}: unknown key {extra!r}"
        body = _set(base.body, at, shaped)
        return Drawn(base.path, base.query, base.headers, True, body, mutation)

    return draw_wrong()


def draw_examples(strategy: SearchStrategy[T], count: int, seed: int) -> list[T]:
    """Up to ``count`` values of ``strategy``: the same ones for the same seed.

    Hypothesis stops early when a strategy has fewer distinct values (e.g. a request
    with nothing to vary).
    """
    drawn: list[T] = []

    @seeded(seed)
    @settings(_QUIET, max_examples=count, phases=[Phase.generate])
    @given(strategy)
    def collect(value: T) -> None:
        drawn.append(value)

    collect()
    return drawn
