"""S3ResultStore against a real S3-compatible server on loopback (moto's server mode)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from runtime.config_storage import S3StoreConfig, StorageConfig
from runtime.errors import (
    ConfigError,
    InvalidResultKey,
    ResultNotFound,
    ResultStoreUnavailable,
    ResultTooLarge,
)
from runtime.results import CHUNK_SIZE, LocalResultStore
from runtime.results_s3 import S3ResultStore, build_result_store
from tests.integration.s3_fixtures import (  # noqa: F401
    ACCESS_KEY,
    CREDENTIALS,
    SECRET_KEY,
    S3Server,
    s3_server_fixture,
    s3_store_fixture,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100
MIB = 1024 * 1024
PART = 5 * MIB  # S3's smallest part: the multipart tests stay small


async def chunked(data: bytes, size: int = 700_001) -> AsyncIterator[bytes]:
    """``data`` in odd-sized chunks, as a vendor download arrives."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


def payload(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def store_on(server: S3Server, bucket: str, **overrides: object) -> S3ResultStore:
    return S3ResultStore.from_config(
        server.config(bucket, **overrides), CREDENTIALS, part_size=PART
    )


def leftover_uploads(server: S3Server, bucket: str) -> list[str]:
    answer = server.admin().list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


def versions(server: S3Server, bucket: str, name: str) -> int:
    answer = server.admin().list_object_versions(Bucket=bucket, Prefix=name)
    return len(answer.get("Versions", []))


async def read_all(store: S3ResultStore | LocalResultStore, key: str) -> tuple[str, int, bytes]:
    async with await store.open(key) as result:
        chunks = [chunk async for chunk in result.chunks]
    assert all(len(chunk) <= CHUNK_SIZE for chunk in chunks)
    return result.content_type, result.size, b"".join(chunks)


async def test_put_get_exists_and_the_stored_content_type(
    s3_server: S3Server, s3_store: S3ResultStore
) -> None:
    assert not await s3_store.exists("job_1.png")
    await s3_store.put("job_1.png", PNG, "image/png")
    assert await s3_store.exists("job_1.png")
    assert await s3_store.get("job_1.png") == PNG
    head = s3_server.admin().head_object(Bucket=s3_store.bucket, Key="job_1.png")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert await read_all(s3_store, "job_1.png") == ("image/png", len(PNG), PNG)


async def test_objects_live_under_the_configured_prefix(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket, prefix="jobline/results/")
    await store.put("job_1.png", PNG, "image/png")
    listed = s3_server.admin().list_objects_v2(Bucket=bucket)
    assert [item["Key"] for item in listed["Contents"]] == ["jobline/results/job_1.png"]
    assert await store.get("job_1.png") == PNG
    await store.close()


async def test_putting_the_same_bytes_again_writes_nothing(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket(versioned=True)
    store = store_on(s3_server, bucket)
    await store.put("job_1.png", PNG, "image/png")
    await store.put("job_1.png", PNG, "image/png")
    assert await store.put_stream("job_1.png", chunked(PNG, 100), "image/png", MIB) == len(PNG)
    assert versions(s3_server, bucket, "job_1.png") == 1
    await store.put("job_1.png", PNG, "application/octet-stream")  # the type is stored too
    await store.put("job_1.png", PNG + b"!", "image/png")
    assert versions(s3_server, bucket, "job_1.png") == 3
    assert await store.get("job_1.png") == PNG + b"!"
    await store.close()


async def test_a_large_stream_becomes_a_multipart_object_of_equal_parts(
    s3_server: S3Server,
) -> None:
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket)
    data = payload(2 * PART + 12345)
    size = await store.put_stream("job_1.mp4", chunked(data), "video/mp4", 3 * PART)
    assert size == len(data)
    admin = s3_server.admin()
    head = admin.head_object(Bucket=bucket, Key="job_1.mp4")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert head["ContentType"] == "video/mp4"
    parts = [
        admin.head_object(Bucket=bucket, Key="job_1.mp4", PartNumber=n)["ContentLength"]
        for n in (1, 2, 3)
    ]
    assert parts == [PART, PART, 12345]  # R2 refuses unequal parts before the last
    assert await read_all(store, "job_1.mp4") == ("video/mp4", len(data), data)
    assert leftover_uploads(s3_server, bucket) == []
    await store.close()


async def test_a_stream_of_exactly_one_part_is_one_put(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket)
    data = payload(PART)
    assert await store.put_stream("job_1.bin", chunked(data), "application/octet-stream", PART)
    head = s3_server.admin().head_object(Bucket=bucket, Key="job_1.bin")
    assert "-" not in head["ETag"]
    assert await store.get("job_1.bin") == data
    await store.close()


@pytest.mark.parametrize("size", [PART // 2, 2 * PART + 1], ids=["one-part", "multipart"])
async def test_a_stream_past_its_cap_keeps_nothing_new(s3_server: S3Server, size: int) -> None:
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket)
    await store.put("job_1.png", PNG, "image/png")  # an older result under the key
    with pytest.raises(ResultTooLarge) as raised:
        await store.put_stream("job_1.png", chunked(payload(size + 1)), "image/png", size)
    assert raised.value.max_bytes == size
    assert str(size) in str(raised.value)
    assert await store.get("job_1.png") == PNG
    with pytest.raises(ResultTooLarge):
        await store.put_stream("job_2.png", chunked(payload(size + 1)), "image/png", size)
    assert not await store.exists("job_2.png")
    assert leftover_uploads(s3_server, bucket) == []
    await store.close()


async def test_a_source_failing_midway_aborts_the_upload(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket)

    async def broken_download() -> AsyncIterator[bytes]:
        async for chunk in chunked(payload(PART + MIB)):
            yield chunk
        raise aiohttp.ClientPayloadError("vendor closed the connection")

    with pytest.raises(aiohttp.ClientPayloadError):
        await store.put_stream("job_1.png", broken_download(), "image/png", 10 * PART)
    assert not await store.exists("job_1.png")
    assert leftover_uploads(s3_server, bucket) == []
    await store.close()


async def test_a_cancelled_upload_is_aborted(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = store_on(s3_server, bucket)
    first_part_sent = asyncio.Event()

    async def stalled_download() -> AsyncIterator[bytes]:
        async for chunk in chunked(payload(PART + MIB)):
            yield chunk
        first_part_sent.set()
        await asyncio.Event().wait()  # the vendor stops sending
        yield b""

    upload = asyncio.create_task(
        store.put_stream("job_1.png", stalled_download(), "image/png", 10 * PART)
    )
    await asyncio.wait_for(first_part_sent.wait(), 30)
    assert leftover_uploads(s3_server, bucket) == ["job_1.png"]  # under way
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert leftover_uploads(s3_server, bucket) == []
    assert not await store.exists("job_1.png")
    await store.close()


async def test_a_presigned_url_fetches_the_result_over_http(s3_store: S3ResultStore) -> None:
    data = payload(300_000)
    await s3_store.put("job_1.mp4", data, "video/mp4")
    url = await s3_store.url_for("job_1.mp4")
    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["300"]  # presign_expiry's default
    assert query["X-Amz-Credential"][0].startswith(ACCESS_KEY + "/")
    assert SECRET_KEY not in url
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert response.content_type == "video/mp4"
        assert await response.read() == data
    short = await s3_store.url_for("job_1.mp4", expires=30)
    assert short is not None
    assert parse_qs(urlsplit(short).query)["X-Amz-Expires"] == ["30"]


async def test_a_missing_result_is_result_not_found(s3_store: S3ResultStore) -> None:
    with pytest.raises(ResultNotFound):
        await s3_store.get("job_404.png")
    with pytest.raises(ResultNotFound):
        await s3_store.open("job_404.png")
    assert not await s3_store.exists("job_404.png")


@pytest.mark.parametrize("key", ["../etc/passwd", "a/b.png", "", ".hidden"])
async def test_bad_keys_never_reach_the_bucket(s3_store: S3ResultStore, key: str) -> None:
    with pytest.raises(InvalidResultKey):
        await s3_store.put(key, PNG, "image/png")
    with pytest.raises(InvalidResultKey):
        await s3_store.put_stream(key, chunked(PNG), "image/png", MIB)
    with pytest.raises(InvalidResultKey):
        await s3_store.get(key)
    with pytest.raises(InvalidResultKey):
        await s3_store.url_for(key)


async def test_a_missing_bucket_is_named_at_start_up(s3_server: S3Server) -> None:
    store = store_on(s3_server, "no-such-bucket")
    with pytest.raises(ResultStoreUnavailable) as raised:
        await store.check()
    message = str(raised.value)
    assert "s3://no-such-bucket" in message
    assert s3_server.endpoint_url in message
    assert SECRET_KEY not in message
    await store.close()


async def test_an_unreachable_store_is_unavailable_not_a_crash(s3_server: S3Server) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    store = store_on(s3_server, "jobline", endpoint_url=f"http://127.0.0.1:{closed_port}")
    started = time.monotonic()
    with pytest.raises(ResultStoreUnavailable) as raised:
        await store.get("job_1.png")
    assert time.monotonic() - started < 15  # botocore's few quick retries, then an answer
    assert f"127.0.0.1:{closed_port}" in str(raised.value)
    assert SECRET_KEY not in str(raised.value)
    await store.close()


def test_missing_credentials_are_named_all_at_once(s3_server: S3Server) -> None:
    config = s3_server.config("jobline")
    with pytest.raises(ConfigError) as raised:
        S3ResultStore.from_config(config, {"AWS_ACCESS_KEY_ID": "x"})
    assert raised.value.key == "AWS_SECRET_ACCESS_KEY"
    renamed = s3_server.config(
        "jobline", access_key_id_env="R2_KEY_ID", secret_access_key_env="R2_SECRET"
    )
    with pytest.raises(ConfigError) as raised:
        S3ResultStore.from_config(renamed, CREDENTIALS)
    assert raised.value.key == "R2_KEY_ID, R2_SECRET"
    assert "storage.s3" in str(raised.value)


async def test_the_config_chooses_the_store(s3_server: S3Server, tmp_path: Path) -> None:
    local = build_result_store(StorageConfig(results=tmp_path / "results"), {})
    assert isinstance(local, LocalResultStore)
    assert local.root == tmp_path / "results"
    bucket = s3_server.new_bucket()
    storage = StorageConfig(
        result_store="s3",
        s3=S3StoreConfig.model_validate(
            {"bucket": bucket, "endpoint_url": s3_server.endpoint_url, "addressing_style": "path"}
        ),
    )
    remote = build_result_store(storage, CREDENTIALS)
    assert isinstance(remote, S3ResultStore)
    await remote.check()
    await remote.put("job_1.png", PNG, "image/png")
    assert s3_server.admin().get_object(Bucket=bucket, Key="job_1.png")["Body"].read() == PNG
    await remote.close()
