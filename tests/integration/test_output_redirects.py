"""Issue 13 case 12 (review): a redirect must not carry an output past ``output_hosts``.

An allowed output host answering ``302 Location: http://127.0.0.2:P/internal-secret``
made jobline fetch the loopback secret and store it as the job's output: aiohttp followed
the redirect without the origin check the first URL had. Every hop is checked now.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from runtime.config import VendorConfig
from runtime.errors import OutputRefused
from runtime.vendors import Output, VendorClient, make_client

SECRET = b"internal-secret-bytes"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


async def _serve(app: web.Application, host: str) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[str, str, list[str]]]:
    """(allowed CDN on 127.0.0.1, internal host on 127.0.0.2, paths the internal host served)."""
    served: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.Response(body=SECRET, content_type="image/png")

    internal_app = web.Application()
    internal_app.router.add_get("/{tail:.*}", secret)
    internal, internal_url = await _serve(internal_app, "127.0.0.2")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    cdn_app = web.Application()
    cdn_app.router.add_get("/redirect", redirect)
    cdn_app.router.add_get("/loop", loop)
    cdn_app.router.add_get("/file.png", file)
    cdn, cdn_url = await _serve(cdn_app, "127.0.0.1")
    yield cdn_url, internal_url, served
    await cdn.cleanup()
    await internal.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[VendorClient]:
    config = VendorConfig.model_validate(
        {
            "name": "replicate-test",
            "api": "replicate",
            "base_url": "http://127.0.0.1:9",
            "api_key_env": "UNUSED_KEY_ENV",
            "webhook_secret_env": "UNUSED_SECRET_ENV",
            "concurrency": 1,
            "output_hosts": ["127.0.0.1"],
        }
    )
    made = make_client(config, "key", "secret")
    yield made
    await made.close()


async def _read(client: VendorClient, url: str) -> bytes:
    async with client.download(Output("url", url), trace_id="t") as download:
        return b"".join([chunk async for chunk in download.chunks])


async def test_a_redirect_to_an_unlisted_internal_host_is_refused_unfetched(
    client: VendorClient, hosts: tuple[str, str, list[str]]
) -> None:
    cdn, internal, served = hosts
    with pytest.raises(OutputRefused, match=r"127\.0\.0\.2 is an internal address"):
        await _read(client, f"{cdn}/redirect?to={internal}/internal-secret")
    assert served == []  # the internal host was never asked


async def test_a_redirect_within_the_output_hosts_is_followed(
    client: VendorClient, hosts: tuple[str, str, list[str]]
) -> None:
    cdn, _, _ = hosts
    assert await _read(client, f"{cdn}/redirect?to=/file.png") == PNG


async def test_a_redirect_loop_is_refused_after_a_bounded_number_of_hops(
    client: VendorClient, hosts: tuple[str, str, list[str]]
) -> None:
    cdn, _, _ = hosts
    with pytest.raises(OutputRefused, match="more than 5 redirects"):
        await _read(client, f"{cdn}/loop")
