"""The S3-compatible ResultStore: AWS S3, Cloudflare R2, MinIO, anything that speaks S3.

A result key (``job_01HX.png``, validated by :func:`runtime.results.check_key`) is stored
as the object ``{prefix}{key}`` in one bucket, with its content type as the object's
``Content-Type`` and its SHA-256 as user metadata (``x-amz-meta-sha256``).

- **Library**: boto3 (the reference S3 SDK, the one R2's and MinIO's guides show), its
  blocking calls run in a small pool of worker threads of this store, never on the event
  loop. See the README's storage section for why not aiobotocore.
- **Idempotent puts**: ``put`` first asks for the object's metadata (HEAD); the same
  bytes (same SHA-256 and content type) already there are not sent again, so a
  processor and the sweeper may both store one job's output. Other bytes replace the
  object whole: S3 never shows a reader a half-written object.
- **Streaming writes** (``put_stream``): up to one part (8 MiB) is one ``PutObject``;
  more becomes a multipart upload of equal-sized parts (R2 wants every part but the last
  the same size). Past ``max_bytes``, on any error and on cancellation the upload is
  aborted, so nothing is left behind (a process killed mid-upload leaves parts that the
  bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule removes; see deploy/README).
- **Streaming reads** (``open``): ``GetObject``'s body, read a chunk at a time.
- **Presigned URLs** (``url_for``): a ``GetObject`` URL signed with SigV4, valid for
  ``presign_expiry`` seconds; the gateway may redirect clients to it.
- **Checksums**: boto3 ≥ 1.36 adds CRC trailers to every upload by default, which R2 and
  other S3-compatible stores refuse; the client asks for checksums only where the S3 API
  requires them (``when_required``), and the SHA-256 metadata is checked by ``put``.
- **Errors** are translated in one place (:meth:`S3ResultStore._call`): a missing object
  is ``ResultNotFound``; anything else from the store or the network is
  ``ResultStoreUnavailable`` naming the operation and the store's error code.

Credentials come only from the environment variables ``[storage.s3]`` names (by default
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``), read on the node that builds the
store; they are never part of the config file or of anything sent between actors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from runtime.config_storage import S3StoreConfig, StorageConfig
from runtime.errors import ResultNotFound, ResultStoreUnavailable, ResultTooLarge
from runtime.results import (
    CHUNK_SIZE,
    LocalResultStore,
    ResultStore,
    StoredResult,
    check_key,
    content_type_of,
)
from runtime.telemetry import get_logger

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = get_logger("results")

T = TypeVar("T")

PART_SIZE = 8 * 1024 * 1024  # bytes per multipart part (S3's minimum is 5 MiB)
THREADS = 8  # worker threads (and pooled connections) per store
CONNECT_TIMEOUT = 5.0  # seconds
READ_TIMEOUT = 60.0  # seconds without a byte from the store
MAX_ATTEMPTS = 3  # botocore's own retries of throttled and 5xx answers
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
SHA256_METADATA = "sha256"


def build_result_store(
    storage: StorageConfig, environ: Mapping[str, str] = os.environ
) -> ResultStore:
    """The store ``[storage]`` chooses: a directory (``result_store = "directory"``, the
    single-node default) or an S3 bucket; ConfigError names missing credentials."""
    if storage.s3 is None:
        return LocalResultStore(storage.results)
    return S3ResultStore.from_config(storage.s3, environ)


def bucket_problems(storage: StorageConfig, environ: Mapping[str, str] = os.environ) -> list[str]:
    """For start-up (``jobline serve``, and on every node of a cluster): one line if the
    bucket cannot be reached with the credentials of ``environ``; none for a directory
    store or when the credentials are missing (named by ``runtime.startup``)."""
    s3 = storage.s3
    if s3 is None or not all(environ.get(name) for name in s3.credential_env_names()):
        return []

    async def check() -> None:
        store = S3ResultStore.from_config(s3, environ)
        try:
            await store.check()
        finally:
            await store.close()

    try:
        asyncio.run(check())
    except ResultStoreUnavailable as exc:
        where = s3.endpoint_url or f"AWS S3 ({s3.region})"
        return [f"storage.s3: bucket {s3.bucket!r} at {where}: {exc.reason}"]
    return []


class S3ResultStore:
    """Results as objects ``{prefix}{key}`` in one S3-compatible bucket (module docstring)."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        prefix: str = "",
        presign_expiry: int = 300,
        part_size: int = PART_SIZE,
        threads: int = THREADS,
    ) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError(f"part_size must be ≥ 5 MiB (S3's minimum), got {part_size}")
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.presign_expiry = presign_expiry
        self._part_size = part_size
        self._threads = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="s3")

    @classmethod
    def from_config(
        cls,
        config: S3StoreConfig,
        environ: Mapping[str, str] = os.environ,
        *,
        part_size: int = PART_SIZE,
    ) -> S3ResultStore:
        """A store for ``[storage.s3]``, credentials read from ``environ`` (ConfigError
        naming every missing variable)."""
        access_key, secret_key = config.credentials(environ)
        session = boto3.session.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=config.region,
        )
        client = session.client(
            "s3",
            endpoint_url=config.endpoint_url or None,
            config=BotoConfig(
                s3={"addressing_style": config.addressing_style},
                signature_version="s3v4",
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                max_pool_connections=THREADS,
            ),
        )
        return cls(
            client,
            config.bucket,
            prefix=config.prefix,
            presign_expiry=config.presign_expiry,
            part_size=part_size,
        )

    def object_name(self, key: str) -> str:
        """The object's name in the bucket: ``{prefix}{key}``, the key validated."""
        return self.prefix + check_key(key)

    async def check(self) -> None:
        """Reach the bucket once (HEAD bucket): for start-up, to fail fast and clearly on
        a wrong endpoint, bucket or credentials. Raises ``ResultStoreUnavailable``."""
        await self._call("", "check the bucket", self._client.head_bucket, Bucket=self.bucket)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self._put_object(key, bytes(data), content_type)

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str, max_bytes: int
    ) -> int:
        name = self.object_name(key)
        buffer = bytearray()
        size = 0
        upload: _MultipartUpload | None = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ResultTooLarge(key, max_bytes)
                buffer += chunk
                # Strictly more than a part: the bytes left over make a non-empty last part.
                while len(buffer) > self._part_size:
                    if upload is None:
                        upload = await self._start_upload(key, name, content_type)
                    await upload.send(bytes(buffer[: self._part_size]))
                    del buffer[: self._part_size]
            if upload is None:
                await self._put_object(key, bytes(buffer), content_type)
            else:
                await upload.send(bytes(buffer))
                await upload.complete()
        except BaseException:
            if upload is not None:
                await asyncio.shield(upload.abort())
            raise
        return size

    async def get(self, key: str) -> bytes:
        name = self.object_name(key)

        def read_all() -> bytes:
            return self._client.get_object(Bucket=self.bucket, Key=name)["Body"].read()

        return await self._call(key, "get", read_all)

    async def open(self, key: str) -> StoredResult:
        name = self.object_name(key)
        answer = await self._call(
            key, "open", self._client.get_object, Bucket=self.bucket, Key=name
        )
        body = answer["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await self._call(key, "read", body.read, CHUNK_SIZE):
                yield chunk

        async def close() -> None:
            await self._call(key, "close", body.close)

        content_type = answer.get("ContentType") or content_type_of(key)
        return StoredResult(content_type, answer["ContentLength"], chunks(), close)

    async def exists(self, key: str) -> bool:
        try:
            await self._head(key, self.object_name(key))
        except ResultNotFound:
            return False
        return True

    async def url_for(self, key: str, expires: int | None = None) -> str | None:
        """A presigned ``GET`` of the object, valid ``expires`` seconds (default
        ``presign_expiry``). Signing is local: no request to the store."""
        seconds = self.presign_expiry if expires is None else expires
        if seconds < 1:
            raise ValueError(f"expires must be ≥ 1 second, got {seconds}")
        return self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_name(key)},
            ExpiresIn=seconds,
        )

    async def close(self) -> None:
        """Release the worker threads and the pooled connections."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # --- the S3 calls ------------------------------------------------------------------

    async def _put_object(self, key: str, data: bytes, content_type: str) -> None:
        name = self.object_name(key)
        digest = hashlib.sha256(data).hexdigest()
        try:
            head = await self._head(key, name)
        except ResultNotFound:
            pass
        else:
            same_type = head.get("ContentType") == content_type
            if same_type and head.get("Metadata", {}).get(SHA256_METADATA) == digest:
                return  # the same result again
        await self._call(
            key,
            "put",
            self._client.put_object,
            Bucket=self.bucket,
            Key=name,
            Body=data,
            ContentType=content_type,
            Metadata={SHA256_METADATA: digest},
        )

    async def _head(self, key: str, name: str) -> Mapping[str, Any]:
        head: Mapping[str, Any] = await self._call(
            key, "head", self._client.head_object, Bucket=self.bucket, Key=name
        )
        return head

    async def _start_upload(self, key: str, name: str, content_type: str) -> _MultipartUpload:
        answer = await self._call(
            key,
            "start a multipart upload",
            self._client.create_multipart_upload,
            Bucket=self.bucket,
            Key=name,
            ContentType=content_type,
        )
        return _MultipartUpload(self, key, name, answer["UploadId"])

    def _submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        return self._threads.submit(fn, *args, **kwargs)

    async def _call(
        self, key: str, operation: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> T:
        """``fn(*args, **kwargs)`` in a worker thread, its errors translated (module doc)."""
        return await self._wait(key, operation, self._submit(fn, *args, **kwargs))

    async def _wait(self, key: str, operation: str, future: concurrent.futures.Future[T]) -> T:
        try:
            return await asyncio.wrap_future(future)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            if code in _NOT_FOUND and key:
                raise ResultNotFound(key) from None
            message = error.get("Message") or code
            raise ResultStoreUnavailable(
                f"{operation} {self._where(key)}: {code} ({message})"
            ) from None
        except BotoCoreError as exc:
            raise ResultStoreUnavailable(f"{operation} {self._where(key)}: {exc}") from None

    def _where(self, key: str) -> str:
        name = f"/{self.prefix}{key}" if key else ""
        return f"s3://{self.bucket}{name} at {self._client.meta.endpoint_url}"


class _MultipartUpload:
    """One multipart upload under way: parts sent in order, then completed or aborted."""

    def __init__(self, store: S3ResultStore, key: str, name: str, upload_id: str) -> None:
        self._store = store
        self._key = key
        self._name = name
        self._upload_id = upload_id
        self._parts: list[CompletedPartTypeDef] = []
        self._pending: concurrent.futures.Future[Any] | None = None

    async def send(self, data: bytes) -> None:
        number = len(self._parts) + 1
        self._pending = self._store._submit(
            self._store._client.upload_part,
            Bucket=self._store.bucket,
            Key=self._name,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        answer = await self._store._wait(self._key, f"upload part {number}", self._pending)
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    async def complete(self) -> None:
        await self._store._call(
            self._key,
            "complete a multipart upload",
            self._store._client.complete_multipart_upload,
            Bucket=self._store.bucket,
            Key=self._name,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    async def abort(self) -> None:
        """Abort the upload once no part is still being sent (S3 may otherwise keep a part
        that lands after the abort); a failure to abort is logged, never raised."""
        pending = self._pending

        def abort_after_pending() -> None:
            if pending is not None:
                concurrent.futures.wait([pending])
            self._store._client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._name, UploadId=self._upload_id
            )

        try:
            await self._store._call(self._key, "abort a multipart upload", abort_after_pending)
        except ResultStoreUnavailable as exc:
            log.warning(
                "multipart upload not aborted; the bucket's lifecycle rule will remove it",
                extra={"result_key": self._key, "error": str(exc)},
            )
