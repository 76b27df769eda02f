"""LocalResultStore: atomic, idempotent, safe keys; real files in a temporary directory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pickle
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.errors import JoblineError
from runtime.results import (
    InvalidResultKey,
    LocalResultStore,
    ResultNotFound,
    content_type_of,
    extension_for,
    result_key_for,
    sniff_content_type,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 10


@pytest.fixture
def store(tmp_path: Path) -> LocalResultStore:
    return LocalResultStore(tmp_path / "results")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG: a real disk-full-like failure mid-write."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


async def test_put_then_get_and_exists(store: LocalResultStore) -> None:
    key = result_key_for("job_01HX", "image/png")
    assert key == "job_01HX.png"
    assert not await store.exists(key)
    await store.put(key, PNG, "image/png")
    assert await store.exists(key)
    assert await store.get(key) == PNG
    assert content_type_of(key) == "image/png"


async def test_keys_fan_out_under_the_root(store: LocalResultStore) -> None:
    keys = [result_key_for(f"job_{i}", "image/png") for i in range(20)]
    for key in keys:
        await store.put(key, key.encode(), "image/png")
    paths = files_under(store.root)
    assert len(paths) == 20
    for path in paths:
        relative = path.relative_to(store.root)
        assert len(relative.parts) == 2 and len(relative.parts[0]) == 2
    assert len({p.parent for p in paths}) > 1  # spread over directories
    assert store.path_for(keys[0]) == store.path_for(keys[0])  # stable


def test_content_types_map_to_extensions() -> None:
    assert result_key_for("j", "image/jpeg") == "j.jpg"
    assert result_key_for("j", "video/mp4; codecs=avc1") == "j.mp4"
    assert result_key_for("j", "application/x-unknown-thing") == "j.bin"
    assert content_type_of("j.webp") == "image/webp"
    assert content_type_of("j.nope") == "application/octet-stream"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        "../etc/passwd",
        "a/b.png",
        "/etc/passwd",
        "a\\b",
        ".hidden",
        "x..png",
        "a b",
        "j\x00.png",
        "é.png",
        "x" * 201,
    ],
)
async def test_bad_keys_are_rejected(store: LocalResultStore, key: str) -> None:
    with pytest.raises(InvalidResultKey):
        await store.put(key, b"x", "image/png")
    with pytest.raises(InvalidResultKey):
        await store.get(key)
    with pytest.raises(InvalidResultKey):
        await store.exists(key)
    assert files_under(store.root) == []


def test_a_job_id_that_is_a_path_makes_no_key() -> None:
    with pytest.raises(InvalidResultKey):
        result_key_for("../../etc/cron.d/evil", "image/png")
    with pytest.raises(InvalidResultKey):
        result_key_for("/abs", "image/png")


async def test_missing_result_is_a_clear_key_error(store: LocalResultStore) -> None:
    with pytest.raises(ResultNotFound) as caught:
        await store.get("job_missing.png")
    err = caught.value
    assert isinstance(err, KeyError) and isinstance(err, JoblineError)
    assert str(err) == "no result stored under key 'job_missing.png'"
    again = pickle.loads(pickle.dumps(err))  # crosses Ray actors
    assert type(again) is ResultNotFound and again.key == err.key


async def test_put_is_idempotent(store: LocalResultStore) -> None:
    key = "job_1.png"
    await store.put(key, PNG, "image/png")
    path = store.path_for(key)
    first = path.stat()
    await store.put(key, PNG, "image/png")  # the same bytes: nothing is rewritten
    second = path.stat()
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert await store.get(key) == PNG
    assert files_under(store.root) == [path]


async def test_put_of_other_bytes_replaces_whole(store: LocalResultStore) -> None:
    await store.put("job_1.png", PNG, "image/png")
    await store.put("job_1.png", b"other", "image/png")
    assert await store.get("job_1.png") == b"other"
    assert files_under(store.root) == [store.path_for("job_1.png")]


async def test_concurrent_puts_of_one_key_leave_one_whole_file(store: LocalResultStore) -> None:
    await asyncio.gather(*(store.put("job_race.png", PNG, "image/png") for _ in range(16)))
    assert await store.get("job_race.png") == PNG
    assert files_under(store.root) == [store.path_for("job_race.png")]


async def test_a_write_failing_midway_leaves_no_partial_file(store: LocalResultStore) -> None:
    big = os.urandom(256 * 1024)
    with file_size_limit(64 * 1024), pytest.raises(OSError) as caught:
        await store.put("job_big.png", big, "image/png")
    assert caught.value.errno == errno.EFBIG
    assert not await store.exists("job_big.png")
    with pytest.raises(ResultNotFound):
        await store.get("job_big.png")
    assert files_under(store.root) == []  # not even the temporary file


async def test_a_failed_overwrite_keeps_the_old_result(store: LocalResultStore) -> None:
    await store.put("job_2.png", PNG, "image/png")
    with file_size_limit(64 * 1024), pytest.raises(OSError):
        await store.put("job_2.png", os.urandom(256 * 1024), "image/png")
    assert await store.get("job_2.png") == PNG
    assert files_under(store.root) == [store.path_for("job_2.png")]


async def test_a_temp_file_left_by_a_crash_is_never_a_result(store: LocalResultStore) -> None:
    path = store.path_for("job_3.png")
    path.parent.mkdir(parents=True)
    (path.parent / ".job_3.png.k2j4h5.tmp").write_bytes(PNG[:5])  # a crash before os.replace
    assert not await store.exists("job_3.png")
    await store.put("job_3.png", PNG, "image/png")
    assert await store.get("job_3.png") == PNG


# --- what an output is, from its bytes ----------------------------------------------------

SAMPLES = {
    "image/png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "image/gif": b"GIF89a\x01\x00\x01\x00",
    "image/webp": b"RIFF\x24\x00\x00\x00WEBPVP8 ",
    "audio/wav": b"RIFF\x24\x00\x00\x00WAVEfmt ",
    "video/mp4": b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00",
    "video/webm": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm",
    "audio/mpeg": b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "application/json": b' {"images": [{"url": "https://x/y.png"}]}',
}


@pytest.mark.parametrize(("content_type", "data"), SAMPLES.items())
def test_an_outputs_content_type_comes_from_its_bytes(content_type: str, data: bytes) -> None:
    assert sniff_content_type(data) == content_type
    assert sniff_content_type(data, declared="image/png") == content_type  # bytes win
    assert result_key_for("job_1", content_type).endswith(extension_for(content_type))
    assert content_type_of(result_key_for("job_1", content_type)) == content_type


def test_an_mp3_frame_without_a_tag_is_audio_but_a_utf16_text_is_not() -> None:
    assert sniff_content_type(b"\xff\xfb\x90\x64\x00") == "audio/mpeg"  # MPEG-1 layer III
    assert sniff_content_type(b"\xff\xfeh\x00i\x00") == "application/octet-stream"


@pytest.mark.parametrize(
    "declared",
    [
        "image/png",
        "IMAGE/JPEG; q=1",
        "video/mp4",
        "audio/mpeg",
        "image/svg+xml",
        "text/html",
        "application/xhtml+xml",
        "text/xml",
        "application/javascript",
    ],
)
def test_a_page_declared_as_media_or_as_an_active_type_is_stored_as_octet_stream(
    declared: str,
) -> None:
    """Issue 13 case 12 (review): ``<html><script>`` declared ``image/png`` was stored and
    served as image/png; bytes that are not a recognised format of the declared media
    family, or a type a browser would run, are stored as an opaque octet stream."""
    page = b"<html><script>fetch('/v1/keys')</script></html>"
    assert sniff_content_type(page, declared=declared) == "application/octet-stream"


def test_unknown_bytes_are_what_the_vendor_declared_or_octet_stream() -> None:
    assert sniff_content_type(b"plain words") == "application/octet-stream"
    assert sniff_content_type(b"plain words", declared="text/plain") == "text/plain"
    assert sniff_content_type(b"{not json") == "application/octet-stream"
    assert sniff_content_type(b"") == "application/octet-stream"
