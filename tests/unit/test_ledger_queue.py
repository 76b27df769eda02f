"""The ledger's write queue (``Ledger.execute_many``): what callers submit in one loop turn
is one batch, each caller gets its own ops' Outcomes in order, a call larger than a batch
is answered across batches, and a caller that stops waiting stops nobody else. Both ways
the writer runs: a thread (the runtime) and inline on the loop (a simulation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import runtime.ledger
from runtime.errors import LedgerUnavailable
from runtime.ledger import THREADED, Ledger, LedgerMode
from runtime.models import CreateAccount, Grant, LedgerOp, OpenJob, Outcome

MODES = {"threaded": THREADED, "inline": LedgerMode(inline=True, durable=False, memory=True)}
DEADLINE = 2_000_000_000.0


@pytest.fixture(params=sorted(MODES))
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    ledger = await Ledger.open(tmp_path / "l.db", mode=MODES[request.param])
    (await ledger.execute(CreateAccount("a", "h"))).unwrap()
    (await ledger.execute(Grant("a", 1000, "g"))).unwrap()
    yield ledger
    await ledger.close()


def opens(*names: str) -> list[LedgerOp]:
    return [OpenJob(n, "a", "m", {"n": n}, 1, "0" * 32, "fal", DEADLINE) for n in names]


def job_ids(outcomes: list[Outcome]) -> list[str]:
    return [outcome.unwrap().id for outcome in outcomes]


async def test_callers_of_one_loop_turn_share_a_batch_and_get_their_own_outcomes(
    ledger: Ledger,
) -> None:
    before = ledger.stats.batches
    first, second, third = await asyncio.gather(
        ledger.execute_many(opens("j1", "j2", "j3")),
        ledger.execute(opens("j4")[0]),
        ledger.execute_many(opens("j5", "j6")),
    )
    assert job_ids(first) == ["j1", "j2", "j3"]
    assert second.unwrap().id == "j4"
    assert job_ids(third) == ["j5", "j6"]
    assert ledger.stats.batches - before == 1
    assert ledger.stats.largest_batch == 6
    assert await ledger.execute_many([]) == []


async def test_a_call_larger_than_a_batch_is_answered_across_batches(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime.ledger, "MAX_BATCH", 3)
    before = ledger.stats.batches
    names = [f"j{i}" for i in range(7)]
    big, small = await asyncio.gather(
        ledger.execute_many(opens(*names)), ledger.execute_many(opens("k1", "k2"))
    )
    assert job_ids(big) == names
    assert job_ids(small) == ["k1", "k2"]
    assert ledger.stats.batches - before == 3  # 9 ops, 3 a batch
    assert ledger.stats.largest_batch == 3


async def test_a_caller_that_stops_waiting_stops_neither_its_ops_nor_its_neighbours(
    ledger: Ledger,
) -> None:
    gone = asyncio.ensure_future(ledger.execute_many(opens("gone")))
    stays = asyncio.ensure_future(ledger.execute_many(opens("stays")))
    await asyncio.sleep(0)  # both queued
    gone.cancel()
    assert job_ids(await stays) == ["stays"]
    assert gone.cancelled()
    assert (await ledger.get_job("gone")).id == "gone"  # its op still happened


async def test_close_lands_what_was_queued_and_refuses_what_comes_after(ledger: Ledger) -> None:
    pending = asyncio.ensure_future(ledger.execute_many(opens("j1", "j2")))
    await asyncio.sleep(0)  # queued, not yet written
    await ledger.close()
    assert job_ids(await pending) == ["j1", "j2"]
    late = await ledger.execute_many(opens("j3"))
    assert isinstance(late[0].error, LedgerUnavailable)
