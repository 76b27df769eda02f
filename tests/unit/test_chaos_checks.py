"""The chaos suite's slot check: a slot an orphan holds is by design, any other is a leak."""

from __future__ import annotations

from loadtests.chaos.checks import slots_released


def test_slots_held_for_orphans_are_not_a_leak_but_any_other_slot_is() -> None:
    # A submit in doubt whose task never showed itself keeps its slot (DESIGN §3.2),
    # even after its job ended on a later attempt: processor-kill, seed 1, on fal.
    assert list(slots_released({"fal": {"inflight": 4, "unrecorded": 4}})) == []
    assert list(slots_released({"fal": {"inflight": 0}})) == []
    [leak] = slots_released({"fal": {"inflight": 5, "unrecorded": 4}})
    assert (leak.invariant, leak.subject) == ("I4", "fal")
    assert "1 slots" in leak.detail
