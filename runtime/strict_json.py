"""JSON as RFC 8259 has it, both ways (pure).

Python's ``json`` reads ``NaN``, ``Infinity`` and a number too large for a float
(``1e400`` becomes ``inf``), and writes them back as ``NaN``/``Infinity``, which no
other JSON parser reads (a browser's ``JSON.parse`` fails on the whole answer). Every body
jobline reads from a client or a vendor goes through :func:`loads`, and every JSON answer
it writes through :func:`dumps`, so such a value is refused where it enters and can never
leave.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["DEFAULT_MAX_DEPTH", "NotJson", "dumps", "json_depth", "loads"]

DEFAULT_MAX_DEPTH = 64  # vendor bodies: deeper than any vendor's documented shape


class NotJson(ValueError):
    """Text that Python's ``json`` would read but JSON does not allow, or nests deeper than
    the caller's bound; the message says which."""


def loads(raw: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The JSON value of ``raw``. Raises ``NotJson`` for NaN/Infinity, a number that
    overflows a float, or nesting deeper than ``max_depth``; ``ValueError`` (incl.
    ``json.JSONDecodeError``, ``UnicodeDecodeError``) for anything else malformed."""
    try:
        value = _decode(raw)
    except RecursionError:
        raise NotJson(f"not JSON: nested deeper than {max_depth} levels") from None
    if _deeper_than(raw, value, max_depth):
        raise NotJson(f"not JSON: nested deeper than {max_depth} levels")
    return value


WALK_FROM = 16 * 1024  # bytes: a body this large is first walked, within a budget
BYTES_PER_WALKED = 256  # the budget: one value walked per this many bytes of the body


def _deeper_than(raw: str | bytes, value: Any, max_depth: int) -> bool:
    """Does ``value`` (read from ``raw``) nest deeper than ``max_depth``? Exact, found the
    cheaper of two ways. A body's brackets, counted in C, bound its depth, so most bodies
    need no walk; but counting reads every byte, and a large body is mostly long strings
    (outputs as ``data:`` URIs, logs) holding a few hundred values, fewer to walk than
    bytes to count: it is walked first, and counted only if it holds more values than
    one per ``BYTES_PER_WALKED`` bytes."""
    if len(raw) >= WALK_FROM:
        depth = _depth(value, max_depth, budget=len(raw) // BYTES_PER_WALKED)
        if depth is not None:
            return depth > max_depth
    return _openings(raw) > max_depth and json_depth(value, max_depth) > max_depth


def _openings(raw: str | bytes) -> int:
    """At least the number of ``{`` and ``[`` in ``raw``, which bounds how deep its value
    nests: counted in C, so most bodies skip walking the value. In bytes of any encoding
    ``json`` reads (UTF-8, -16, -32), each bracket holds its ASCII byte."""
    if isinstance(raw, bytes):
        return raw.count(b"{") + raw.count(b"[")
    return raw.count("{") + raw.count("[")


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` that raises ``ValueError`` rather than write NaN or Infinity."""
    if not options:  # one encoder for every answer (json.dumps builds one per call here)
        return _ENCODE(value)
    return json.dumps(value, allow_nan=False, **options)


def json_depth(value: Any, stop_after: int) -> int:
    """How deep ``value`` nests (a scalar 0, ``[]`` 1, ``[[1]]`` 2), without recursion;
    it stops counting past ``stop_after``."""
    depth = _depth(value, stop_after, budget=None)
    assert depth is not None  # no budget, no giving up
    return depth


def _depth(value: Any, stop_after: int, budget: int | None) -> int | None:
    """``json_depth``, or None once more than ``budget`` values (keys' values and items,
    at any depth) were looked at."""
    deepest = 0
    looked_at = 0
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > stop_after:
                return deepest
        children = item.values() if isinstance(item, dict) else item
        looked_at += len(children)
        if budget is not None and looked_at > budget:
            return None
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _constant(name: str) -> Any:
    raise NotJson(f"not JSON: {name}")


MAX_DIGITS = 4_300  # Python's own limit for int(str) (sys.get_int_max_str_digits)


def _whole(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:  # int() would refuse it, naming Python internals
        raise NotJson(f"not JSON here: a whole number of more than {MAX_DIGITS} digits")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson(f"not JSON: a number too large ({text[:40]})")
    return value


_ENCODE = json.JSONEncoder(allow_nan=False).encode

# One decoder with the hooks above: ``json.loads`` builds a decoder per call when given
# hooks (about half of the cost of reading a small body).
_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_finite, parse_int=_whole)


def _decode(raw: str | bytes) -> Any:
    """``json.loads(raw, parse_constant=_constant, parse_float=_finite, parse_int=_whole)``,
    as ``json.loads`` reads text and bytes (UTF-8, -16 or -32; a text's BOM refused)."""
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        return _DECODER.decode(raw)
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
