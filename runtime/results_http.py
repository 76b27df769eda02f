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

Every answer says ``X-Content-Type-Options: nosniff``: a browser takes the stored content
type (checked against the bytes when stored) and never guesses a page out of an output.

The caller (the gateway route) has checked the account, the job and its state.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from runtime.errors import JoblineError, ResultNotFound
from runtime.results import ResultStore
from runtime.telemetry import get_logger

log = get_logger("gateway")

STREAM_CACHE_CONTROL = "private, max-age=86400"  # a stored result never changes
NOSNIFF = {"X-Content-Type-Options": "nosniff"}


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
