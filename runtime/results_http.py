"""How the gateway answers ``GET /v1/jobs/{id}/result`` and ``GET /v1/jobs/{id}/outputs/{n}``:
the bytes, or a redirect to them.

- **stream** (every store; the default): the result is read from the store a chunk at a
  time and written to the client with its content type and ``Content-Length``; a result
  of any size costs the gateway one chunk of memory. A store that fails after the first
  byte was sent cannot turn the answer into an error any more: the connection is cut,
  and the client sees fewer bytes than ``Content-Length`` promised.
- **redirect** (a store with URLs of its own, ``[storage.s3] serve = "redirect"``): a
  ``302`` to a short-lived presigned URL, so the bytes go from the bucket to the client
  without passing through jobline. The object is looked up first, so a missing result
  is still jobline's own ``404``. The redirect is ``Cache-Control: no-store``: the URL
  expires. Stores without URLs (a directory) stream instead.

A result in a directory (``LocalResultStore``) costs one hop to a worker thread: the
file is opened there, and read whole when it is at most ``SMALL_RESULT`` bytes (one
chunk: the memory bound above holds), then answered in one write; a larger one is sent
from the open file by the kernel (``loop.sendfile``), with no chunk passing through
Python. (Streaming it through the store's chunks cost four thread hops even for a
small image, ~7% of a gateway's CPU under steady load.)

Every answer says ``X-Content-Type-Options: nosniff``: a browser takes the stored content
type (checked against the bytes when stored) and never guesses a page out of an output.

The caller (the gateway route) has checked the account, the job and its state.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from aiohttp import web

from runtime.errors import JoblineError, ResultNotFound
from runtime.results import CHUNK_SIZE, LocalResultStore, ResultStore, content_type_of
from runtime.telemetry import get_logger

log = get_logger("gateway")

STREAM_CACHE_CONTROL = "private, max-age=86400"  # a stored result never changes
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
SMALL_RESULT = CHUNK_SIZE  # bytes: a local result this small is read whole, in one hop


async def result_response(
    request: web.Request,
    store: ResultStore,
    key: str,
    *,
    redirect: bool,
    headers: Mapping[str, str],
    content_type: str | None = None,
) -> web.StreamResponse:
    """The answer for the result under ``key``, with ``headers`` added (e.g. the trace id).
    ``content_type``: as the ledger recorded it (checked against the bytes when stored);
    None: as the store says.

    Raises ``ResultNotFound`` (nothing sent yet) and ``ResultStoreUnavailable`` (before
    the first byte; after it, the connection is cut).
    """
    if redirect:
        if not await store.exists(key):
            raise ResultNotFound(key)
        url = await store.url_for(key)
        if url is not None:
            return web.Response(
                status=302,
                headers={**headers, **NOSNIFF, "Location": url, "Cache-Control": "no-store"},
            )
    if type(store).open is LocalResultStore.open:  # plain files (a subclass may read otherwise)
        assert isinstance(store, LocalResultStore)
        return await _local_response(request, store, key, headers, content_type)
    async with await store.open(key) as result:
        response = web.StreamResponse(
            headers={
                **headers,
                **NOSNIFF,
                "Content-Type": content_type or result.content_type,
                "Cache-Control": STREAM_CACHE_CONTROL,
            }
        )
        response.content_length = result.size
        await response.prepare(request)
        try:
            async for chunk in result.chunks:
                await response.write(chunk)
        except JoblineError as exc:  # the store failed after the first byte was sent
            log.error(
                "result stream cut short: the store failed mid-read",
                extra={"result_key": key, "error": str(exc)},
            )
            response.force_close()  # the client sees fewer bytes than Content-Length
            return response
        await response.write_eof()
    return response


async def _local_response(
    request: web.Request,
    store: LocalResultStore,
    key: str,
    headers: Mapping[str, str],
    content_type: str | None,
) -> web.StreamResponse:
    """``key``'s file in a ``LocalResultStore`` (where it is stored now, or where earlier
    versions stored it), opened in one thread hop."""
    file, size, whole = await asyncio.to_thread(store.read_file, key, _open_local)
    answer_headers = {
        **headers,
        **NOSNIFF,
        "Content-Type": content_type or content_type_of(key),
        "Cache-Control": STREAM_CACHE_CONTROL,
    }
    if file is None:
        return web.Response(body=whole, headers=answer_headers)
    try:
        response = web.StreamResponse(headers=answer_headers)
        response.content_length = size
        await response.prepare(request)  # a StreamResponse sends its head at once
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        try:
            await asyncio.get_running_loop().sendfile(transport, file, 0, size)
        except (ConnectionError, RuntimeError) as exc:  # RuntimeError: "Transport is closing"
            if isinstance(exc, RuntimeError) and not transport.is_closing():
                raise
            response.force_close()  # the client went away mid-answer: nothing more to send
            return response
        await response.write_eof()
    finally:
        file.close()  # a file opened for reading: closing it does not wait on the disk
    return response


def _open_local(path: Path) -> tuple[IO[bytes] | None, int, bytes]:
    """(None, size, the bytes) for a small file, else (the open file, size, b"")."""
    file = path.open("rb")
    try:
        size = os.fstat(file.fileno()).st_size
        if size > SMALL_RESULT:
            return file, size, b""
        whole = file.read()
    except BaseException:
        file.close()
        raise
    file.close()
    return None, len(whole), whole
