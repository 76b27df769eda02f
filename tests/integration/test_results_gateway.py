"""GET /v1/jobs/{id}/result from the S3 store: streamed through the gateway, or redirected
to a presigned URL; a missing or unreachable store answers as the API promises."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from runtime.config_storage import StorageConfig
from runtime.errors import ResultStoreUnavailable
from runtime.models import Complete, MarkProcessing, StartAttempt
from runtime.results import LocalResultStore, StoredResult, result_key_for
from runtime.results_http import SMALL_RESULT
from runtime.results_s3 import S3ResultStore
from runtime.telemetry import TRACE_HEADER
from tests.integration.api_fixtures import (  # noqa: F401
    ApiHarness,
    MakeApi,
    api_fixture,
    make_api_fixture,
)
from tests.integration.s3_fixtures import (  # noqa: F401
    CREDENTIALS,
    SECRET_KEY,
    S3Server,
    s3_server_fixture,
)

RESULT = hashlib.sha256(b"frame").digest() * 100_000  # 3.2 MB: many chunks


async def s3_api(
    make_api: MakeApi, s3_server: S3Server, serve: str, **s3: object
) -> tuple[ApiHarness, S3ResultStore]:
    config = s3_server.config(s3_server.new_bucket(), serve=serve, **s3)
    store = S3ResultStore.from_config(config, CREDENTIALS)
    storage = StorageConfig(result_store="s3", s3=config)
    return await make_api(results=store, storage=storage), store


async def completed_job(api: ApiHarness, data: bytes = RESULT) -> tuple[dict[str, str], str]:
    """An account's auth headers and the result URL of its completed job."""
    account = await api.account()
    job = await api.submitted(account)
    await api.complete(job["id"], data)
    return account.auth, f"/v1/jobs/{job['id']}/result"


async def error_code(response: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await response.json()
    return response.status, body["error"]["code"]


async def test_a_result_streams_from_the_bucket(make_api: MakeApi, s3_server: S3Server) -> None:
    api, store = await s3_api(make_api, s3_server, "stream")
    auth, url = await completed_job(api)
    response = await api.client.get(url, headers=auth)
    assert response.status == 200
    assert response.content_type == "image/png"
    assert response.content_length == len(RESULT)
    assert response.headers["Cache-Control"] == "private, max-age=86400"
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # no page out of an output
    assert response.headers[TRACE_HEADER]
    assert await response.read() == RESULT
    await store.close()


async def test_a_result_redirects_to_a_short_lived_presigned_url(
    make_api: MakeApi, s3_server: S3Server
) -> None:
    api, store = await s3_api(make_api, s3_server, "redirect", presign_expiry=120)
    auth, url = await completed_job(api)
    response = await api.client.get(url, headers=auth, allow_redirects=False)
    assert response.status == 302
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    location = response.headers["Location"]
    assert location.startswith(s3_server.endpoint_url + "/")
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["120"]
    assert SECRET_KEY not in location
    async with aiohttp.ClientSession() as http, http.get(location) as fetched:
        assert fetched.status == 200
        assert fetched.content_type == "image/png"
        assert await fetched.read() == RESULT
    stranger = await api.account(name="stranger")
    refused = await api.client.get(url, headers=stranger.auth, allow_redirects=False)
    assert await error_code(refused) == (404, "job_not_found")  # no URL for another account
    await store.close()


@pytest.mark.parametrize("serve", ["stream", "redirect"])
async def test_a_result_missing_from_the_bucket_is_404(
    make_api: MakeApi, s3_server: S3Server, serve: str
) -> None:
    api, store = await s3_api(make_api, s3_server, serve)
    auth, url = await completed_job(api)
    job_id = url.split("/")[3]
    s3_server.admin().delete_object(Bucket=store.bucket, Key=result_key_for(job_id, "image/png"))
    response = await api.client.get(url, headers=auth, allow_redirects=False)
    assert await error_code(response) == (404, "result_not_found")
    await store.close()


async def complete_in_ledger(api: ApiHarness, job_id: str) -> None:
    """Complete a job as a processor would, its result stored elsewhere beforehand."""
    job = await api.ledger.get_job(job_id)
    await api.ledger.execute_many([StartAttempt(job_id, 1, job.vendor, 0)])
    await api.ledger.execute_many([MarkProcessing(job_id, 1, f"task-{job_id}")])
    (outcome,) = await api.ledger.execute_many([Complete(job_id, f"{job_id}.png")])
    outcome.unwrap()


@pytest.mark.parametrize("serve", ["stream", "redirect"])
async def test_an_unreachable_store_is_503_with_retry_after(
    make_api: MakeApi, s3_server: S3Server, serve: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = s3_server.config("jobline", endpoint_url=f"http://127.0.0.1:{closed_port}")
    config = config.model_copy(update={"serve": serve})
    store = S3ResultStore.from_config(config, CREDENTIALS)
    api = await make_api(results=store, storage=StorageConfig(result_store="s3", s3=config))
    account = await api.account()
    job = await api.submitted(account)
    await complete_in_ledger(api, job["id"])
    response = await api.client.get(f"/v1/jobs/{job['id']}/result", headers=account.auth)
    assert await error_code(response) == (503, "result_store_unavailable")
    assert response.headers["Retry-After"] == "1"
    await store.close()


class FailingMidRead(LocalResultStore):
    """A directory whose reads fail after the first chunk: a bucket lost mid-transfer."""

    async def open(self, key: str) -> StoredResult:
        result = await super().open(key)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in result.chunks:
                yield chunk
                raise ResultStoreUnavailable("connection reset by the bucket")

        return StoredResult(result.content_type, result.size, chunks(), result.aclose)


async def test_a_store_failing_mid_stream_cuts_the_connection(
    make_api: MakeApi, tmp_path: Path
) -> None:
    api = await make_api(results=FailingMidRead(tmp_path / "results"))
    auth, url = await completed_job(api)
    response = await api.client.get(url, headers=auth)
    assert response.status == 200  # the headers were sent before the store failed
    assert response.content_length == len(RESULT)
    with pytest.raises(aiohttp.ClientPayloadError):  # fewer bytes than promised, at once
        await asyncio.wait_for(response.read(), 10)


# --- a directory (LocalResultStore): one thread hop, the kernel sends a large file ----------


@pytest.mark.parametrize(
    "size", [0, 1, SMALL_RESULT, SMALL_RESULT + 1, len(RESULT)], ids=lambda n: f"{n}B"
)
async def test_a_result_in_a_directory_is_served_whole_at_any_size(
    api: ApiHarness, size: int
) -> None:
    data = (RESULT * 2)[:size]  # read whole up to SMALL_RESULT, sent by sendfile above it
    auth, url = await completed_job(api, data)
    for _ in range(2):  # the file is closed after each answer: a second one reads it again
        response = await api.client.get(url, headers=auth)
        assert response.status == 200
        assert response.content_type == "image/png"
        assert response.content_length == size
        assert response.headers["Cache-Control"] == "private, max-age=86400"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers[TRACE_HEADER]
        assert await asyncio.wait_for(response.read(), 10) == data  # every byte, then the end


async def test_a_result_missing_from_the_directory_is_404_and_logged(
    api: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    auth, url = await completed_job(api)
    job_id = url.split("/")[3]
    api.results.path_for(result_key_for(job_id, "image/png")).unlink()  # type: ignore[attr-defined]
    response = await api.client.get(url, headers=auth)
    assert await error_code(response) == (404, "result_not_found")
    assert [r.job_id for r in caplog.records if r.msg == "result missing from the store"] == [  # type: ignore[attr-defined]
        job_id
    ]


@pytest.mark.parametrize("size", [100, SMALL_RESULT + 1])
async def test_a_result_stored_by_an_earlier_version_is_still_served(
    api: ApiHarness, size: int
) -> None:
    # Merge review (wave 9): the gateway's one-hop read of a directory looked only where
    # results are stored now (root/ab/<key>), not where earlier versions put them.
    data = (RESULT * 2)[:size]
    auth, url = await completed_job(api, data)
    store = api.results
    assert isinstance(store, LocalResultStore)
    key = result_key_for(url.split("/")[3], "image/png")
    earlier = store.earlier_path_for(key)
    earlier.parent.mkdir(parents=True, exist_ok=True)
    store.path_for(key).rename(earlier)
    response = await api.client.get(url, headers=auth)
    assert response.status == 200
    assert await asyncio.wait_for(response.read(), 10) == data


async def test_a_client_leaving_mid_download_is_no_gateway_error(
    api: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    big = RESULT * 10  # 32 MB: more than the socket buffers hold, so sendfile is mid-way
    auth, url = await completed_job(api, big)
    for _ in range(3):
        response = await api.client.get(url, headers=auth)
        assert response.status == 200
        await response.content.readexactly(64 * 1024)
        response.close()  # the client goes away with most of the file unsent
    await asyncio.sleep(0.5)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await (await api.client.get(url, headers=auth)).read() == big  # still served
