import asyncio

import pytest

from runtime.batching import Coalescer


async def test_concurrent_calls_share_one_batch() -> None:
    batches: list[list[int]] = []

    async def send_many(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(send_many)
    results = await asyncio.gather(*(coalescer.call(i) for i in range(100)))
    assert results == [i * 10 for i in range(100)]
    assert len(batches) == 1
    assert batches[0] == list(range(100))


async def test_max_batch_splits() -> None:
    sizes: list[int] = []

    async def send_many(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    coalescer: Coalescer[int, int] = Coalescer(send_many, max_batch=30)
    assert await coalescer.call_many(list(range(100))) == list(range(100))
    assert sum(sizes) == 100
    assert max(sizes) == 30


async def test_a_failed_batch_fails_every_caller_and_the_next_batch_works() -> None:
    calls = 0

    async def send_many(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("actor died")
        return items

    coalescer: Coalescer[int, int] = Coalescer(send_many)
    results = await asyncio.gather(*(coalescer.call(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await coalescer.call(7) == 7


async def test_wrong_result_count_is_an_error() -> None:
    async def send_many(items: list[int]) -> list[int]:
        return items[:-1]

    coalescer: Coalescer[int, int] = Coalescer(send_many)
    with pytest.raises(RuntimeError, match="returned"):
        await coalescer.call_many([1, 2, 3])


async def test_calls_during_a_slow_batch_form_the_next_batch() -> None:
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def send_many(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            await gate.wait()
        return items

    coalescer: Coalescer[int, int] = Coalescer(send_many, max_in_flight=1)
    first = asyncio.ensure_future(coalescer.call(0))
    await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(coalescer.call(i)) for i in range(1, 50)]
    await asyncio.sleep(0.01)
    gate.set()
    assert await first == 0
    assert [await r for r in rest] == list(range(1, 50))
    assert batches == [[0], list(range(1, 50))]


def test_a_coalescer_outliving_its_event_loop_works_on_the_next_one() -> None:
    async def send_many(items: list[int]) -> list[int]:
        return [i + 1 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(send_many)
    assert asyncio.run(coalescer.call_many([1, 2])) == [2, 3]
    assert asyncio.run(coalescer.call(5)) == 6  # a new loop: the closed one is not used
