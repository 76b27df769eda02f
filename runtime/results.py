"""ResultStore: where the bytes of finished jobs live.

A result is stored under a **key** that :func:`result_key_for` makes from the job id and
the content type: ``<job_id><ext>``, e.g. ``job_01HX.png``. The key is what the ledger
records on the completed job and what the gateway reads back; a store decides where the
bytes go. A key is one plain file name (letters, digits, ``.``, ``_``, ``-``): no
slashes, no ``..``, nothing absolute, so no key can name a path outside the store.

:class:`LocalResultStore` keeps results in a directory, fanned out by a hash of the key
over 256 directories (``root/3f/job_01HX.png``; results stored by earlier versions are
read where they were, ``root/3f/a2/job_01HX.png``). Writes are atomic and durable
(:mod:`runtime.result_files`): the bytes go to a temporary file in the target
directory, are fsynced, then ``os.replace`` moves the file into place and the directory
is fsynced before a put returns. A reader sees the whole result or none; a crash
mid-write leaves at most a hidden ``.*.tmp`` file that is never taken for a result.
Puts are idempotent: putting the same bytes again is a no-op, so a processor and the
sweeper may both store one job's output. File I/O runs in a worker thread, one call per
result that fits one buffer, never on the event loop.

Besides whole-bytes ``put``/``get``, every store streams: ``put_stream`` takes an async
iterable of chunks under a byte cap (past it: ``ResultTooLarge``, and nothing is kept),
and ``open`` gives a :class:`StoredResult` (content type, size, chunks) without holding
the whole result in memory. ``url_for`` is a short-lived URL that fetches a result
without jobline in the way (S3's presigned URLs), or ``None`` where there is none (here).
:mod:`runtime.results_s3` is the S3-compatible store for clusters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar

from runtime.errors import InvalidResultKey, ResultNotFound, ResultTooLarge
from runtime.result_files import ResultFiles, TempResult

T = TypeVar("T")

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
    "application/json": ".json",
    "application/octet-stream": ".bin",
}
OCTET_STREAM = "application/octet-stream"
_CONTENT_TYPES = {ext: content_type for content_type, ext in _EXTENSIONS.items()}


CHUNK_SIZE = 256 * 1024  # bytes per chunk read by ``open``


@dataclass
class StoredResult:
    """An open result: its content type, its size in bytes, and its bytes as chunks.

    Use it as ``async with await store.open(key) as result: async for chunk in
    result.chunks: ...``; leaving the block (or ``aclose``) releases the file or
    connection, also when the chunks were not read to the end.
    """

    content_type: str
    size: int
    chunks: AsyncIterator[bytes]
    _close: Callable[[], Awaitable[None]]

    async def aclose(self) -> None:
        if isinstance(self.chunks, AsyncGenerator):
            await self.chunks.aclose()
        await self._close()

    async def __aenter__(self) -> StoredResult:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class ResultStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``; storing the same bytes again changes nothing."""

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str, max_bytes: int
    ) -> int:
        """Store the chunks under ``key`` as one result; return its size in bytes.

        Readers see the old result or the whole new one, never a part. Past ``max_bytes``
        raises ``ResultTooLarge`` and keeps nothing of the new bytes (an older result
        under the key stays); so does any error raised by ``chunks``.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises ``ResultNotFound``."""
        ...

    async def open(self, key: str) -> StoredResult:
        """The result under ``key``, to read as chunks; raises ``ResultNotFound``."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def url_for(self, key: str, expires: int | None = None) -> str | None:
        """A URL that fetches the result for ``expires`` seconds (the store's default if
        None) without jobline in the way, or None if the store has no such URLs."""
        ...


def result_key_for(job_id: str, content_type: str) -> str:
    """A job's result key, ``<job_id><ext>``: ``("job_1", "image/png") -> "job_1.png"``."""
    return check_key(job_id + extension_for(content_type))


def extension_for(content_type: str) -> str:
    base = content_type.split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(base) or mimetypes.guess_extension(base) or ".bin"


def content_type_of(key: str) -> str:
    """The content type a key's extension names (``application/octet-stream`` if unknown)."""
    ext = os.path.splitext(key)[1].lower()
    return _CONTENT_TYPES.get(ext) or mimetypes.types_map.get(ext) or "application/octet-stream"


# (content type, the bytes it starts with: (offset, bytes) pairs that must all match)
_SIGNATURES: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("image/png", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("image/jpeg", ((0, b"\xff\xd8\xff"),)),
    ("image/gif", ((0, b"GIF87a"),)),
    ("image/gif", ((0, b"GIF89a"),)),
    ("image/webp", ((0, b"RIFF"), (8, b"WEBP"))),
    ("audio/wav", ((0, b"RIFF"), (8, b"WAVE"))),
    ("video/mp4", ((4, b"ftyp"),)),  # an ISO base media file: its ftyp box
    ("audio/mpeg", ((0, b"ID3"),)),  # an ID3v2 tag before the first frame
)
_EBML = b"\x1a\x45\xdf\xa3"  # Matroska and WebM; the doctype says which
_MEDIA_FAMILIES = ("image/", "video/", "audio/")
_ACTIVE = frozenset({"text/html", "text/javascript", "application/javascript", "text/xsl"})


def sniff_content_type(data: bytes, declared: str | None = None) -> str:
    """The content type of an output, from its first bytes (its "magic number").

    PNG, JPEG, GIF, WebP, MP4, WebM, MP3 (an ID3 tag or an MPEG audio frame), WAV and
    JSON are recognised; anything else is ``declared`` (what the vendor said, if it
    said), or ``application/octet-stream``, which is also what unrecognised bytes
    declared as an image, a video or audio (``<html><script>`` sent as ``image/png``), or
    as a type a browser would run (HTML, SVG, XML, JavaScript), are stored as.
    """
    head = data[:64]
    for content_type, marks in _SIGNATURES:
        if all(head[at : at + len(mark)] == mark for at, mark in marks):
            return content_type
    if head.startswith(_EBML) and b"webm" in head:
        return "video/webm"
    if _mp3_frame(head):
        return "audio/mpeg"
    if _is_json(data):
        return "application/json"
    if declared is None or _unbelieved(declared):
        return OCTET_STREAM
    return declared


def _unbelieved(declared: str) -> bool:
    """A declared type not taken on the vendor's word alone: a media family whose bytes
    were not recognised above, or a type a browser runs as a page or a script."""
    base = declared.split(";", 1)[0].strip().lower()
    return base.startswith(_MEDIA_FAMILIES) or base in _ACTIVE or base.endswith(("+xml", "/xml"))


def _mp3_frame(head: bytes) -> bool:
    """An MPEG audio layer III frame header: 11 sync bits, a version that is not the
    reserved one, layer III (so a UTF-16 byte order mark, FF FE, is not one)."""
    return (
        len(head) >= 2
        and head[0] == 0xFF
        and head[1] & 0xE6 == 0xE2  # sync bits, layer III
        and (head[1] >> 3) & 0x3 != 0x1  # version 01 is reserved
    )


def _is_json(data: bytes) -> bool:
    if data.lstrip()[:1] not in (b"{", b"["):
        return False
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def check_key(key: str) -> str:
    """``key`` if it is one safe file name, else ``InvalidResultKey``."""
    if not _KEY.fullmatch(key) or ".." in key:
        raise InvalidResultKey(key)
    return key


class LocalResultStore:
    """Results as files under ``root``, written atomically and durably (see the module
    docstring and :mod:`runtime.result_files`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._files = ResultFiles(os.fspath(self.root))

    def path_for(self, key: str) -> Path:
        """Where ``key`` is stored: ``root/ab/<key>``, ``ab`` from the key's sha256."""
        return Path(self._place(key))

    def _place(self, key: str) -> str:
        check_key(key)
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self._files.root}/{digest[:2]}/{key}"

    def earlier_path_for(self, key: str) -> Path:
        """Where earlier versions stored results, ``root/ab/cd/<key>`` (read only)."""
        check_key(key)
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / digest[:2] / digest[2:4] / key

    def read_file(self, key: str, read: Callable[[Path], T]) -> T:
        """``read(path)`` of the result's file, where it is stored now, else where earlier
        versions stored it. Blocking: call from a worker thread. Raises
        ``ResultNotFound``."""
        try:
            return read(self.path_for(key))
        except FileNotFoundError:
            pass
        try:
            return read(self.earlier_path_for(key))
        except FileNotFoundError:
            raise ResultNotFound(key) from None

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await _in_thread(self._files.write_whole, self._place(key), bytes(data))

    async def get(self, key: str) -> bytes:
        return await _in_thread(self.read_file, key, Path.read_bytes)

    async def exists(self, key: str) -> bool:
        try:
            await _in_thread(self.read_file, key, _is_file)
        except ResultNotFound:
            return False
        return True

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str, max_bytes: int
    ) -> int:
        """Chunks are gathered in memory up to ``CHUNK_SIZE``: a result that ends by then
        (most images) is written, fsynced and moved into place in one worker-thread call;
        a larger one goes to its temporary file a buffer at a time."""
        path = self._place(key)
        parts: list[bytes] = []
        buffered = size = 0
        temp: TempResult | None = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ResultTooLarge(key, max_bytes)
                parts.append(chunk)
                buffered += len(chunk)
                if buffered >= CHUNK_SIZE:
                    data, parts, buffered = b"".join(parts), [], 0
                    if temp is None:
                        temp = await _in_thread(self._files.begin, path, data)
                    else:
                        await _in_thread(temp.write, data)
            tail = parts[0] if len(parts) == 1 else b"".join(parts)
            if temp is None:
                await _in_thread(self._files.write_whole, path, tail)
            else:
                await _in_thread(temp.finish, tail)
        except BaseException:
            if temp is not None:
                await asyncio.shield(_in_thread(temp.discard))
            raise
        return size

    async def open(self, key: str) -> StoredResult:
        """A result of at most ``CHUNK_SIZE`` bytes (most images) is read whole in the one
        worker-thread call that opens it; a larger one a chunk per call."""
        opened = await _in_thread(self.read_file, key, _open_for_reading)
        if isinstance(opened, bytes):
            return StoredResult(content_type_of(key), len(opened), _once(opened), _nothing)
        file, size = opened

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await _in_thread(file.read, CHUNK_SIZE):
                yield chunk

        async def close() -> None:
            await _in_thread(file.close)

        return StoredResult(content_type_of(key), size, chunks(), close)

    async def url_for(self, key: str, expires: int | None = None) -> str | None:
        """None: files in a directory have no URL of their own (the gateway streams them)."""
        check_key(key)
        return None


def _in_thread(call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``call(*args)`` in the loop's default executor (no context copy: nothing in a
    file write reads context variables)."""
    return asyncio.get_running_loop().run_in_executor(None, call, *args)


def _is_file(path: Path) -> None:
    """Nothing if ``path`` is a file; else ``FileNotFoundError``."""
    if not path.is_file():
        raise FileNotFoundError(path)


def _open_for_reading(path: Path) -> bytes | tuple[IO[bytes], int]:
    """The whole result if it fits one chunk (a stored file is never changed in place: a
    new one replaces it), else the open file and its size."""
    file = path.open("rb")
    try:
        size = os.fstat(file.fileno()).st_size
        if size > CHUNK_SIZE:
            return file, size
        with file:
            return file.read()
    except BaseException:
        file.close()
        raise


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


async def _nothing() -> None:
    return None
