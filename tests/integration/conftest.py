"""Fake-vendor fixtures: fakes on free loopback ports, and a webhook sink to receive from them."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from vendors_fake import FakeVendor, FaultProfile
from vendors_fake.server import Shape

FAKE_KEY = "test-key"
FAKE_SECRET = "whsec_" + base64.b64encode(b"integration-test-webhook-secret!").decode()

StartFake = Callable[..., Awaitable[FakeVendor]]


def auth(shape: Shape, key: str = FAKE_KEY) -> dict[str, str]:
    return {"Authorization": ("Key " if shape == "fal" else "Bearer ") + key}


def assert_rate(observed: int, n: int, p: float, sigmas: float = 4.0) -> None:
    """``observed`` successes in ``n`` trials fit rate ``p`` within ``sigmas`` std devs."""
    sd = math.sqrt(n * p * (1 - p))
    assert abs(observed - n * p) <= sigmas * sd + 1, f"{observed}/{n} vs p={p}"


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def start_fake() -> AsyncIterator[StartFake]:
    """``await start_fake("replicate", profile, seed=7)``: a running fake, stopped afterwards."""
    started: list[FakeVendor] = []

    async def start(
        shape: Shape = "replicate", profile: FaultProfile | None = None, **kwargs: Any
    ) -> FakeVendor:
        kwargs.setdefault("api_key", FAKE_KEY)
        kwargs.setdefault("webhook_secret", FAKE_SECRET)
        fake = FakeVendor(shape, profile or FaultProfile(), **kwargs)
        await fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.stop()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # wall clock, as the fake's task times

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookSink:
    """A real aiohttp server on loopback recording every webhook it gets."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    answer_status: int = 200

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received(dict(request.headers), body, time.time()))
        return web.Response(status=self.answer_status)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        await eventually(lambda: len(self.received) >= count, timeout)
        return self.received


@pytest.fixture
async def webhook_sink() -> AsyncIterator[WebhookSink]:
    sink = WebhookSink()
    app = web.Application()
    app.router.add_post("/hooks/{vendor}", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink.url = f"http://127.0.0.1:{port}/hooks/fake"
    yield sink
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session
