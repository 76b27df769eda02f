"""Fake-vendor fixtures: fakes on free loopback ports, and a webhook sink to receive from them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.integration.processor_rig import rig  # noqa: F401  (the processor rig fixture)
from vendors_fake import FakeVendor, FaultProfile
from vendors_fake.server import Shape

FAKE_KEY = "test-key"
FAKE_SECRET = "whsec_" + base64.b64encode(b"integration-test-webhook-secret!").decode()

StartFake = Callable[..., Awaitable[FakeVendor]]


def auth(shape: Shape, key: str = FAKE_KEY) -> dict[str, str]:
    return {"Authorization": ("Key " if shape == "fal" else "Bearer ") + key}


def fal_signature_valid(
    jwks: dict[str, Any], headers: dict[str, str], body: bytes, now: float, tolerance: float = 300
) -> bool:
    """fal's webhook check as its "Webhooks" page spells it out, independent of jobline:
    the timestamp within ``tolerance``, then an ED25519 signature (hex) by any key of the
    JWKS over "request id, user id, timestamp, sha256 hex of the body", joined by newlines.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    names = ("request-id", "user-id", "timestamp", "signature")
    values = [lowered.get(f"x-fal-webhook-{name}") for name in names]
    if not all(values):
        return False
    request_id, user_id, timestamp, signature = (str(v) for v in values)
    if abs(now - int(timestamp)) > tolerance:
        return False
    digest = hashlib.sha256(body).hexdigest()
    message = f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()
    for key in jwks["keys"]:
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(signature), message)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


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
