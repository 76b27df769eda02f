"""QuietLog: a flood of rejections from one source is one line, then one line a minute."""

from __future__ import annotations

from runtime.api.quiet_log import QuietLog


def test_the_first_is_logged_then_the_rest_are_counted_once_a_minute() -> None:
    quiet = QuietLog(every=60.0)
    assert quiet.note("10.0.0.1", "signature", 0.0) == 1
    assert [quiet.note("10.0.0.1", "signature", t) for t in range(1, 60)] == [0] * 59
    assert quiet.note("10.0.0.1", "stale", 30.0) == 1  # another reason: its own line
    assert quiet.note("10.0.0.2", "signature", 30.0) == 1  # another source too
    assert quiet.note("10.0.0.1", "signature", 60.0) == 60  # 59 held back and this one
    assert quiet.note("10.0.0.1", "signature", 200.0) == 1  # nothing held back since


def test_many_sources_are_pooled_past_the_cap() -> None:
    quiet = QuietLog(every=60.0, max_keys=2)
    assert quiet.note("a", "signature", 0.0) == 1
    assert quiet.note("b", "signature", 0.0) == 1
    assert quiet.note("c", "signature", 1.0) == 1  # the first of the pooled sources
    assert quiet.note("d", "signature", 2.0) == 0  # pooled with c: held back
    assert quiet.note("e", "signature", 61.0) == 1  # a and b were quiet: forgotten
