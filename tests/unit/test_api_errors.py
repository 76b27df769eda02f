"""The gateway's answers to bodies it cannot use say what is wrong in the field's terms
and never send a client's large value back."""

from __future__ import annotations

import pytest

from runtime.api.errors import HttpRefusal, check_json, echo


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"name": "\\ud800"}', "a string contains an unpaired surrogate"),
        (b'{"name": ["ok", "\\udfff"]}', "a string contains an unpaired surrogate"),
        (b'{"name": "\xff"}', "the body is not UTF-8 text (byte 0xff at 10)"),
        (b'{"name": ', "malformed JSON: Expecting value"),
    ],
)
def test_unusable_json_is_named_in_the_field_s_terms(raw: bytes, says: str) -> None:
    with pytest.raises(HttpRefusal) as info:
        check_json(raw, 32)
    assert info.value.status == 400
    assert says in info.value.message
    assert "codec" not in info.value.message


def test_a_paired_surrogate_is_text() -> None:
    assert check_json(b'{"e": "\\ud83d\\ude00"}', 32) == {"e": "\U0001f600"}


def test_an_echoed_value_is_cut_to_a_short_start() -> None:
    assert echo("sdxl") == "'sdxl'"
    long = echo("y" * 2001)
    assert long.startswith("'yyy") and long.endswith("…, 2001 long") and len(long) < 60
