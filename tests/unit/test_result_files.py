"""Durable result files: bursts of outputs, failures mid-write, unique temporary names
across processes, small results read in one call, and results stored in the earlier
layout still read. Real files in a temporary directory, real threads and
processes."""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.errors import ResultNotFound
from runtime.result_files import ResultFiles
from runtime.results import CHUNK_SIZE, LocalResultStore
from tests.unit.test_results import file_size_limit


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


def output(n: int) -> bytes:
    """Output ``n``: mostly small images, every seventh larger than a buffer."""
    size = 3 * CHUNK_SIZE + n if n % 7 == 0 else 200 + n
    return (n.to_bytes(4, "big") * (size // 4 + 1))[:size]


async def test_a_burst_of_outputs_is_all_stored_whole_and_readable(tmp_path: Path) -> None:
    store = LocalResultStore(tmp_path / "results")
    keys = [f"job_{n}.bin" for n in range(120)]
    sizes = await asyncio.gather(
        *(
            store.put_stream(key, chunked(output(n)), "application/octet-stream", 10**8)
            for n, key in enumerate(keys)
        )
    )
    assert sizes == [len(output(n)) for n in range(len(keys))]
    for n, key in enumerate(keys):
        assert await store.get(key) == output(n)
    assert files_under(store.root) == sorted(store.path_for(key) for key in keys)  # no temps


@pytest.mark.parametrize("size", [200_000, 3 * CHUNK_SIZE], ids=["one-buffer", "streamed"])
async def test_a_write_failing_midway_is_raised_and_leaves_no_file(
    tmp_path: Path, size: int
) -> None:
    store = LocalResultStore(tmp_path / "results")
    await store.put("job_0.png", b"an earlier result", "image/png")
    with file_size_limit(64 * 1024), pytest.raises(OSError) as caught:
        await store.put_stream("job_1.png", chunked(os.urandom(size)), "image/png", 10**8)
    assert caught.value.errno == errno.EFBIG
    with pytest.raises(ResultNotFound):
        await store.get("job_1.png")
    assert files_under(store.root) == [store.path_for("job_0.png")]  # no temporary file


def test_a_failed_directory_fsync_is_raised_and_a_retry_makes_it_durable(
    tmp_path: Path,
) -> None:
    synced: list[str] = []
    failing = [True]

    def fsync(directory: str) -> None:
        if failing[0]:
            raise OSError(errno.EIO, "input/output error", directory)
        synced.append(directory)

    files = ResultFiles(str(tmp_path), fsync)
    (tmp_path / "ab").mkdir()
    path = f"{tmp_path}/ab/job_1.png"
    with pytest.raises(OSError) as caught:
        files.write_whole(path, b"png bytes")
    assert caught.value.errno == errno.EIO  # reported: the caller retries, never completes
    failing[0] = False
    files.write_whole(path, b"png bytes")  # the retry: the same bytes, the rename synced
    assert Path(path).read_bytes() == b"png bytes"
    assert synced == [f"{tmp_path}/ab"]


def _store_outputs(root: str, keys: list[str]) -> None:
    async def store_all() -> None:
        store = LocalResultStore(Path(root))
        for key in keys:
            await store.put_stream(key, chunked(key.encode() * 50), "image/png", 10**6)

    asyncio.run(store_all())


def test_processes_storing_the_same_outputs_at_once_never_share_a_temporary_file(
    tmp_path: Path,
) -> None:
    """A processor and the sweeper (or two processors after a restart) may store one
    job's outputs at the same moment: each writes its own temporary file."""
    keys = [f"job_{n}.png" for n in range(150)]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_store_outputs, args=(str(tmp_path), keys[::step]))
        for step in (1, 1, 2, 3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    store = LocalResultStore(tmp_path)
    assert files_under(tmp_path) == sorted(store.path_for(key) for key in keys)
    for key in keys:
        assert store.path_for(key).read_bytes() == key.encode() * 50


def test_a_temporary_name_left_by_a_crash_is_skipped(tmp_path: Path) -> None:
    files = ResultFiles(str(tmp_path))
    (tmp_path / "ab").mkdir()
    files.write_whole(f"{tmp_path}/ab/job_1.png", b"first")
    name = next(p.name for p in (tmp_path / "ab").iterdir())
    assert name == "job_1.png"
    # the next names this writer will draw, already taken (a crash of a writer that drew
    # the same token): O_EXCL refuses them, the writer draws another
    for n in range(1, 4):
        (tmp_path / "ab" / f".job_2.png.{files._writer}-{n}.tmp").write_bytes(b"stale")
    files.write_whole(f"{tmp_path}/ab/job_2.png", b"second")
    assert (tmp_path / "ab" / "job_2.png").read_bytes() == b"second"
    stale = sorted(p.read_bytes() for p in (tmp_path / "ab").glob(".*.tmp"))
    assert stale == [b"stale"] * 3  # untouched


def test_an_output_stored_in_the_earlier_layout_is_still_read(tmp_path: Path) -> None:
    store = LocalResultStore(tmp_path)
    earlier = store.earlier_path_for("job_old.png")  # root/ab/cd/<key>
    assert earlier.relative_to(tmp_path).parts[:2] == (
        store.path_for("job_old.png").parent.name,
        earlier.parent.name,
    )
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"stored by an earlier version")

    async def read() -> None:
        assert await store.exists("job_old.png")
        assert await store.get("job_old.png") == b"stored by an earlier version"
        async with await store.open("job_old.png") as result:
            assert result.size == len(b"stored by an earlier version")
            assert b"".join([c async for c in result.chunks]) == b"stored by an earlier version"
        assert not await store.exists("job_none.png")
        with pytest.raises(ResultNotFound):
            await store.open("job_none.png")
        await store.put("job_old.png", b"stored again", "image/png")
        assert await store.get("job_old.png") == b"stored again"

    asyncio.run(read())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_small_result_is_read_whole_when_opened_and_holds_no_file(
    tmp_path: Path,
) -> None:
    store = LocalResultStore(tmp_path)
    image = output(1)
    await store.put("job_1.png", image, "image/png")
    await store.put("job_2.json", b"", "application/json")
    before = open_fds()
    result = await store.open("job_1.png")
    assert open_fds() == before  # read already: nothing left open to leak or close
    assert (result.content_type, result.size) == ("image/png", len(image))
    assert [chunk async for chunk in result.chunks] == [image]
    await result.aclose()
    async with await store.open("job_2.json") as empty:
        assert (empty.size, [chunk async for chunk in empty.chunks]) == (0, [])
    assert open_fds() == before
