"""A webhook's body is read whole or refused with the status that says why, whether it
came with its head (read at once) or arrives in parts (read as it comes, on a timer)."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from runtime.api.errors import HttpRefusal
from runtime.api.webhooks import read_webhook_body

BODY = b'{"id": "task-1", "status": "succeeded"}' * 100  # 4,000 bytes


def _request(parts: list[bytes], *, ended: bool, length: bool = False) -> web.Request:
    stream = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    for part in parts:
        stream.feed_data(part)
    if ended:
        stream.feed_eof()
    headers = {"Content-Length": str(sum(map(len, parts)))} if length else {}
    return make_mocked_request("POST", "/v1/webhooks/replicate", headers=headers, payload=stream)


@pytest.mark.parametrize("ended", [True, False], ids=["came whole", "still arriving"])
async def test_a_body_within_the_limit_is_read_whole(ended: bool) -> None:
    request = _request([BODY[:1000], BODY[1000:]], ended=ended)
    reading = asyncio.ensure_future(read_webhook_body(request, len(BODY), timeout=5))
    await asyncio.sleep(0)
    if not ended:
        request.content.feed_eof()
    assert await reading == BODY


@pytest.mark.parametrize("length", [True, False], ids=["declared", "undeclared"])
@pytest.mark.parametrize("ended", [True, False], ids=["came whole", "still arriving"])
async def test_a_body_past_the_limit_is_413_and_closes(ended: bool, length: bool) -> None:
    request = _request([BODY[:1000], BODY[1000:]], ended=ended, length=length)
    with pytest.raises(HttpRefusal) as refused:
        await read_webhook_body(request, len(BODY) - 1, timeout=5)
    assert (refused.value.status, refused.value.code) == (413, "payload_too_large")
    assert refused.value.headers == {"Connection": "close"}


async def test_a_body_that_could_not_be_decoded_is_400() -> None:
    request = _request([BODY], ended=True)
    request.content.set_exception(web.RequestPayloadError("bad gzip"))
    with pytest.raises(HttpRefusal) as refused:
        await read_webhook_body(request, len(BODY), timeout=5)
    assert refused.value.status == 400 and "could not be read" in str(refused.value)


async def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    request = _request([BODY[:10]], ended=False)
    with pytest.raises(HttpRefusal) as refused:
        await read_webhook_body(request, len(BODY), timeout=0.05)
    assert refused.value.status == 408
