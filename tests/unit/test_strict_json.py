"""``strict_json.loads`` reads every text and byte encoding exactly as ``json.loads`` does
(it keeps one decoder instead of building one per call), and refuses what JSON lacks."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from runtime import strict_json

VALUE = {"model": "flux-schnell", "input": {"prompt": "café ☕ \U0001f600", "seed": 7, "cfg": 2.5}}
TEXT = json.dumps(VALUE, ensure_ascii=False)
SAME_AS_JSON: list[str | bytes] = [
    TEXT,
    TEXT.encode("utf-8"),
    TEXT.encode("utf-8-sig"),  # bytes with a BOM: read, as json.loads reads them
    TEXT.encode("utf-16"),
    TEXT.encode("utf-16-le"),
    TEXT.encode("utf-32"),
    TEXT.encode("utf-32-be"),
    "\ufeff" + TEXT,  # a text with a BOM: refused, as json.loads refuses it
    b'"\\ud800"',  # a lone surrogate escape: read (the gateway refuses it later)
    b'{"a": 1,}',
    b"\xff\xfe\x00",
    b"",
    "[1, 2",
]


def _outcome(read: Any, raw: str | bytes) -> tuple[str, Any]:
    try:
        return "value", read(raw)
    except ValueError as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("raw", SAME_AS_JSON, ids=range(len(SAME_AS_JSON)))
def test_loads_reads_and_refuses_as_json_loads_does(raw: str | bytes) -> None:
    assert _outcome(strict_json.loads, raw) == _outcome(json.loads, raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[NaN]", "not JSON: NaN"),
        ("[-Infinity]", "not JSON: -Infinity"),
        (b"[1e400]", "not JSON: a number too large (1e400)"),
        (b"[[[[1]]]]", "not JSON: nested deeper than 3 levels"),
    ],
)
def test_loads_refuses_what_json_does_not_allow(raw: str | bytes, message: str) -> None:
    with pytest.raises(strict_json.NotJson, match=message.replace("(", r"\(").replace(")", r"\)")):
        strict_json.loads(raw, max_depth=3)
    assert strict_json.loads(b"[[[1]]]", max_depth=3) == [[[1]]]
    assert math.isfinite(strict_json.loads(b"1e300"))


@pytest.mark.parametrize("value", [VALUE, [1.5, None, True, "é"], {"b": 1, "a": [{}]}, "x", 3])
def test_dumps_writes_what_json_dumps_writes(value: Any) -> None:
    assert strict_json.dumps(value) == json.dumps(value)
    assert strict_json.dumps(value, sort_keys=True) == json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("value", [math.nan, [math.inf], {"a": -math.inf}])
def test_dumps_never_writes_nan_or_infinity(value: Any) -> None:
    with pytest.raises(ValueError, match="Out of range float values"):
        strict_json.dumps(value)
    with pytest.raises(ValueError, match="Out of range float values"):
        strict_json.dumps(value, indent=2)


def _nested(depth: int, inner: Any) -> Any:
    for _ in range(depth):
        inner = [inner]
    return inner


LONG = "A" * (2 * strict_json.WALK_FROM)  # a large body of few values (an output's data: URI)


@pytest.mark.parametrize(
    ("value", "deep"),
    [
        # Large and few values: walked, never counted.
        ({"output": LONG, "deep": _nested(4, 1)}, 5),
        ({"output": LONG, "deep": _nested(3, 1)}, 4),
        # Brackets inside strings: more than max_depth of them, the value itself flat.
        ({"logs": "{[" * strict_json.WALK_FROM, "n": [1]}, 2),
        # Large and many values: more than the walk's budget, so counted, then walked.
        ({"many": list(range(strict_json.WALK_FROM)), "deep": _nested(4, 1)}, 5),
        ({"many": list(range(strict_json.WALK_FROM)), "deep": _nested(3, 1)}, 4),
        # Small: counted (and walked only past max_depth brackets).
        (_nested(5, 1), 5),
        ([[], [[]], {"a": [{}]}], 4),
        ([], 1),
        ("scalar", 0),
    ],
)
def test_loads_refuses_exactly_what_nests_deeper_than_max_depth(value: Any, deep: int) -> None:
    """Whichever way the depth is found (walked within a budget, or bounded by counting
    brackets), a value is refused exactly when it nests deeper than ``max_depth``."""
    raw = json.dumps(value).encode()
    assert strict_json.json_depth(value, 100) == deep
    assert strict_json.loads(raw, max_depth=deep) == value
    with pytest.raises(strict_json.NotJson, match=f"nested deeper than {deep - 1} levels"):
        strict_json.loads(raw, max_depth=deep - 1)
