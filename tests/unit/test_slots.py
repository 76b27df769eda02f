"""A vendor's slots: a slot is given back exactly once, however its holder ends."""

from __future__ import annotations

import pytest

from actors.slots import Slots


def test_room_is_the_limit_but_a_running_task_takes_a_slot_anyway() -> None:
    slots = Slots(2)
    first, second = slots.take(), slots.take()
    assert not slots.has_room() and slots.taken == 2
    resumed = slots.take()  # a task the vendor runs already: counted, never refused
    assert slots.taken == 3
    for slot in (first, second, resumed):
        slot.release()
    assert slots.taken == 0 and slots.has_room()


def test_a_slot_released_early_is_not_given_back_again_at_the_end_of_its_block() -> None:
    slots = Slots(1)
    freed: list[int] = []
    slots.on_release(lambda owner: freed.append(slots.taken))
    with slots.take() as slot:
        slot.release()  # the vendor task ended: free it before the download
        assert not slot.held
        slot.release()
    assert slots.taken == 0
    assert freed == [0]  # one release, one wake-up


def test_an_exception_in_the_block_gives_the_slot_back() -> None:
    slots = Slots(1)
    with pytest.raises(RuntimeError), slots.take():
        raise RuntimeError("the attempt crashed")
    assert slots.taken == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)


def test_a_handed_over_slot_keeps_its_place_until_the_new_holder_releases() -> None:
    slots = Slots(1)
    slot = slots.take()
    kept = slot.hand_over()
    slot.release()  # the old holder's release gives nothing back
    assert slots.taken == 1 and not slots.has_room()
    kept.release()
    assert slots.taken == 0
