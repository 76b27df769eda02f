"""The gateway's HTTP API without sockets: real aiohttp requests handed to the product's
application.

``runtime.api.build_app`` builds the same application a gateway serves, from the same
``GatewayContext`` the wiring gave the gateway role; its routes, middlewares (error
rendering, request counting), authentication, validation, pricing, idempotency and
webhook verification all run as they do behind a socket. Where aiohttp's server would
parse bytes off a connection into a ``web.Request``, :class:`InMemoryApi` builds the
request from its parts (method, path with query, headers, body) and enters the
application where the server does (``Application._handle``: routing, then the
middlewares, then the handler). The answer is the handler's ``web.Response``; nothing is
serialized to a socket. Streaming answers (server-sent events, result files) need a
connection and are not offered here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp import web_app as aiohttp_app
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from runtime.api import GatewayContext, build_app

BODY_LIMIT = 1 << 20


class _Connection:
    """What a request asks of its connection; there is none."""

    ssl_context = None
    peername = ("127.0.0.1", 40000)
    sockname = ("127.0.0.1", 8080)
    transport = None

    def pause_reading(self, **_: object) -> None:
        pass

    def resume_reading(self, **_: object) -> None:
        pass


_CONNECTION = _Connection()


@dataclass(frozen=True, slots=True)
class ApiReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class InMemoryApi:
    """One gateway's application, answering requests made in this process."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.app = build_app(ctx)
        self._max_body = ctx.config.gateway.max_body_bytes
        self._started = False

    async def start(self) -> None:
        self.app.on_startup.freeze()
        await self.app.startup()
        self.app.freeze()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.app.shutdown()
            await self.app.cleanup()
            # aiohttp keeps each handler's middleware chain in a process-wide cache of
            # 1024 entries, and through it this application, its context and the whole
            # run: without this, exploring many seeds in one process grows by a run's
            # memory (~5 MB) per seed until the cache is full.
            aiohttp_app._cached_build_middleware.cache_clear()

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes = b""
    ) -> ApiReply:
        loop = asyncio.get_running_loop()
        sent = CIMultiDict(headers)
        payload: StreamReader
        if body:
            sent["Content-Length"] = str(len(body))
            payload = StreamReader(_CONNECTION, BODY_LIMIT, loop=loop)  # type: ignore[arg-type]
            payload.feed_data(body)
            payload.feed_eof()
        else:
            payload = EMPTY_PAYLOAD  # what aiohttp's parser hands a request without a body
        raw = tuple((k.encode(), v.encode()) for k, v in sent.items())
        # The URL as aiohttp's parser builds it from an origin-form request line.
        path_only, _, query = path.partition("?")
        url = URL.build(path=path_only, query_string=query, encoded=True)
        message = RawRequestMessage(
            method, path, HttpVersion11, CIMultiDictProxy(sent), raw, False, None, False, False, url
        )
        request = web.Request(
            message,
            payload,
            _CONNECTION,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]  # no writer: answers are not streamed
            asyncio.current_task(),  # type: ignore[arg-type]
            loop,
            client_max_size=self._max_body,
        )
        response = await self.app._handle(request)
        assert isinstance(response, web.Response), f"{path}: a streamed answer"
        data = response.body
        if not isinstance(data, bytes):
            raise TypeError(f"{path}: answer body {type(data).__name__}, not bytes")
        return ApiReply(response.status, response.headers, data)
