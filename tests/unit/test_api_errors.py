"""The gateway's answers to bodies it cannot use say what is wrong in the field's terms
and never send a client's large value back."""

from __future__ import annotations

import math

import pytest

from runtime.api.errors import (
    MAX_RETRY_AFTER,
    HttpRefusal,
    check_json,
    echo,
    json_response,
    retry_after_value,
)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"name": "\\ud800"}', "a string contains an unpaired surrogate"),
        (b'{"name": ["ok", "\\udfff"]}', "a string contains an unpaired surrogate"),
        (b'{"name": "\xff"}', "the body is not UTF-8 text (byte 0xff at 10)"),
        (b'{"name": ', "malformed JSON: Expecting value"),
        (b'{"input": {"n": 1e400}}', "not JSON: a number too large (1e400)"),
        (b'{"input": {"n": [-1E+999]}}', "not JSON: a number too large (-1E+999)"),
        (b'{"input": {"n": Infinity}}', "not JSON: Infinity"),
        (b'{"input": {"n": NaN}}', "not JSON: NaN"),
        (b'{"n": ' + b"9" * 5_000 + b"}", "a whole number of more than 4300 digits"),
        (b'{"n": -' + b"9" * 4_301 + b"}", "a whole number of more than 4300 digits"),
    ],
)
def test_unusable_json_is_named_in_the_field_s_terms(raw: bytes, says: str) -> None:
    with pytest.raises(HttpRefusal) as info:
        check_json(raw, 32)
    assert info.value.status == 400
    assert says in info.value.message
    assert "codec" not in info.value.message and "sys." not in info.value.message


def test_a_paired_surrogate_is_text() -> None:
    assert check_json(b'{"e": "\\ud83d\\ude00"}', 32) == {"e": "\U0001f600"}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "\xed\xa0\x80"}',  # a surrogate's own UTF-8 bytes, no escape
        '{"name": "\\ud800"}'.encode("utf-16-le"),  # an escape, every byte ASCII
        '{"name": "\\udfff"}'.encode("utf-32"),
    ],
)
def test_a_lone_surrogate_is_refused_however_the_body_carries_it(raw: bytes) -> None:
    with pytest.raises(HttpRefusal) as info:
        check_json(raw, 32)
    assert "a string contains an unpaired surrogate" in info.value.message


def test_depth_is_bounded_exactly_whatever_brackets_the_strings_hold() -> None:
    assert check_json(b"[" * 32 + b"]" * 32, 32) == check_json(b"[" * 32 + b"]" * 32, 40)
    with pytest.raises(HttpRefusal) as info:
        check_json(b"[" * 33 + b"]" * 33, 32)
    assert "nested deeper than 32 levels" in info.value.message
    shallow = b'{"prompt": "' + b"[{" * 100 + b'", "list": [[1]]}'
    assert check_json(shallow, 32)["list"] == [[1]]


def test_an_echoed_value_is_cut_to_a_short_start() -> None:
    assert echo("sdxl") == "'sdxl'"
    long = echo("y" * 2001)
    assert long.startswith("'yyy") and long.endswith("…, 2001 long") and len(long) < 60


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_no_json_answer_can_carry_nan_or_infinity(value: float) -> None:
    """Review of issue 13: ``1e400`` was accepted and every later answer said
    ``Infinity``, which no browser parses; an answer can never write one."""
    with pytest.raises(ValueError, match="JSON compliant"):
        json_response({"input": {"n": value}})
    assert json_response({"input": {"n": 1e308}}).text == '{"input": {"n": 1e+308}}'


def test_retry_after_is_whole_seconds_within_a_day_whatever_the_wait() -> None:
    assert [retry_after_value(s) for s in (0.0, 0.2, 1.5, 5e300)] == [1, 1, 2, MAX_RETRY_AFTER]
    assert retry_after_value(math.inf) == MAX_RETRY_AFTER  # a rate too slow to refill
    assert retry_after_value(math.nan) == MAX_RETRY_AFTER
