"""The simulation's result store: in memory, with the product's rules (keys checked,
puts idempotent, a byte cap on streams) and no files or threads.

It keeps every result's content type and size, and the bytes of the first
``keep_bytes`` worth of results (enough to read some back); a simulation of a million
jobs would otherwise hold gigabytes of generated images and videos.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from runtime.errors import ResultNotFound, ResultTooLarge
from runtime.results import StoredResult, check_key


class MemoryResultStore:
    def __init__(self, keep_bytes: int = 64 * 1024 * 1024) -> None:
        self.keep_bytes = keep_bytes
        self.kept = 0
        self.stored_bytes = 0
        self.results: dict[str, tuple[str, int]] = {}  # key -> (content type, size)
        self._bytes: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self._keep(check_key(key), bytes(data), content_type)

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str, max_bytes: int
    ) -> int:
        check_key(key)
        parts: list[bytes] = []
        size = 0
        keep = self.kept < self.keep_bytes  # past the cap only sizes are kept: no copies
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise ResultTooLarge(key, max_bytes)
            if keep:
                parts.append(chunk)
        # Joined only if the bytes will be kept: near the cap, most results no longer fit,
        # and joining each of them (a video is megabytes) cost a copy for nothing.
        if keep and key not in self._bytes and self.kept + size <= self.keep_bytes:
            self._keep(key, b"".join(parts), content_type)
        else:
            self._count(key, size, content_type)
        return size

    def _count(self, key: str, size: int, content_type: str) -> None:
        if key not in self.results:
            self.stored_bytes += size
        self.results[key] = (content_type, size)

    def _keep(self, key: str, data: bytes, content_type: str) -> None:
        if key not in self.results:
            self.stored_bytes += len(data)
        self.results[key] = (content_type, len(data))
        if key not in self._bytes and self.kept + len(data) <= self.keep_bytes:
            self._bytes[key] = data
            self.kept += len(data)

    def release(self) -> None:
        """Forget every result (the run is over)."""
        self.results.clear()
        self._bytes.clear()

    async def get(self, key: str) -> bytes:
        data = self._bytes.get(check_key(key))
        if data is None:
            raise ResultNotFound(key)
        return data

    async def open(self, key: str) -> StoredResult:
        data = await self.get(key)
        content_type, size = self.results[key]

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        async def close() -> None:
            return None

        return StoredResult(content_type, size, chunks(), close)

    async def exists(self, key: str) -> bool:
        return check_key(key) in self.results

    async def url_for(self, key: str, expires: int | None = None) -> str | None:
        return None
