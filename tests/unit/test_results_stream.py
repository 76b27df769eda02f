"""LocalResultStore streaming: put_stream under a byte cap, open as chunks, no URLs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.errors import InvalidResultKey, ResultNotFound, ResultTooLarge
from runtime.results import CHUNK_SIZE, LocalResultStore

DATA = bytes(range(256)) * 4000  # ~1 MiB: several chunks both ways


@pytest.fixture
def store(tmp_path: Path) -> LocalResultStore:
    return LocalResultStore(tmp_path / "results")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def chunked(data: bytes, size: int = 100_003) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def test_a_stream_is_stored_whole_and_read_back_as_chunks(store: LocalResultStore) -> None:
    size = await store.put_stream("job_1.mp4", chunked(DATA), "video/mp4", len(DATA))
    assert size == len(DATA)
    assert await store.get("job_1.mp4") == DATA
    async with await store.open("job_1.mp4") as result:
        assert (result.content_type, result.size) == ("video/mp4", len(DATA))
        chunks = [chunk async for chunk in result.chunks]
    assert b"".join(chunks) == DATA
    assert max(len(chunk) for chunk in chunks) == CHUNK_SIZE
    assert files_under(store.root) == [store.path_for("job_1.mp4")]


async def test_an_empty_stream_is_an_empty_result(store: LocalResultStore) -> None:
    assert await store.put_stream("job_1.json", chunked(b""), "application/json", 10) == 0
    assert await store.get("job_1.json") == b""


async def test_past_the_cap_nothing_new_is_kept(store: LocalResultStore) -> None:
    await store.put("job_1.png", b"old result", "image/png")
    with pytest.raises(ResultTooLarge) as raised:
        await store.put_stream("job_1.png", chunked(DATA), "image/png", len(DATA) - 1)
    assert raised.value.max_bytes == len(DATA) - 1
    assert await store.get("job_1.png") == b"old result"
    with pytest.raises(ResultTooLarge):
        await store.put_stream("job_2.png", chunked(DATA), "image/png", 1000)
    assert files_under(store.root) == [store.path_for("job_1.png")]  # no temp file either


async def test_a_source_failing_midway_leaves_nothing(store: LocalResultStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for chunk in chunked(DATA):
            yield chunk
        raise ConnectionResetError("vendor closed the connection")

    with pytest.raises(ConnectionResetError):
        await store.put_stream("job_1.png", broken(), "image/png", 10 * len(DATA))
    assert files_under(store.root) == []


async def test_a_cancelled_stream_leaves_nothing(store: LocalResultStore) -> None:
    halfway = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        async for chunk in chunked(DATA):
            yield chunk
        halfway.set()
        await asyncio.Event().wait()
        yield b""

    task = asyncio.create_task(store.put_stream("job_1.png", stalled(), "image/png", 10**9))
    await asyncio.wait_for(halfway.wait(), 10)
    assert len(files_under(store.root)) == 1  # the temporary file, being written
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert files_under(store.root) == []


async def test_streaming_the_same_bytes_again_leaves_the_file_untouched(
    store: LocalResultStore,
) -> None:
    await store.put_stream("job_1.png", chunked(DATA), "image/png", len(DATA))
    before = store.path_for("job_1.png").stat()
    await store.put_stream("job_1.png", chunked(DATA, 7777), "image/png", len(DATA))
    after = store.path_for("job_1.png").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    await store.put_stream("job_1.png", chunked(DATA[::-1]), "image/png", len(DATA))
    assert await store.get("job_1.png") == DATA[::-1]
    assert files_under(store.root) == [store.path_for("job_1.png")]


async def test_closing_an_open_result_early_releases_its_file(store: LocalResultStore) -> None:
    await store.put("job_1.png", DATA, "image/png")
    before = open_fds()
    result = await store.open("job_1.png")
    assert open_fds() == before + 1
    async for _ in result.chunks:
        break  # the client went away after one chunk
    await result.aclose()
    assert open_fds() == before


async def test_a_missing_result_and_bad_keys(store: LocalResultStore) -> None:
    with pytest.raises(ResultNotFound):
        await store.open("job_404.png")
    with pytest.raises(InvalidResultKey):
        await store.open("../job.png")
    with pytest.raises(InvalidResultKey):
        await store.put_stream("a/b.png", chunked(DATA), "image/png", len(DATA))
    with pytest.raises(InvalidResultKey):
        await store.url_for("../job.png")


async def test_a_directory_has_no_urls(store: LocalResultStore) -> None:
    await store.put("job_1.png", DATA, "image/png")
    assert await store.url_for("job_1.png") is None
    assert await store.url_for("job_1.png", expires=60) is None
