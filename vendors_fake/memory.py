"""The fake vendor's in-memory host: the same core and routes as the HTTP host
(:mod:`vendors_fake.calls`), answered by a method call instead of a socket.

A simulation on virtual time (DESIGN §10) serves its vendors with this host: every
timer of the core (queue and run times, deadlines, webhook delays and retries) and every
hang runs on the running event loop's clock, so the same fault profile behaves as it does
over HTTP, only in virtual time. A client calls :meth:`MemoryVendor.request` with what an
HTTP request carries (method, URL, headers, body) and gets a :class:`MemoryReply`, or the
exception a client library would see for what the HTTP host acts out on a connection: a
hung request never answers (``hang_for`` later, ``ConnectionResetError``: wrap the call
in the client's own timeout), a reset or an answer cut off mid-body raise
``ConnectionResetError`` at once. Webhooks leave through the ``post_webhook`` coroutine the
host is given, as from the HTTP host.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy
from yarl import URL

from vendors_fake.calls import Answer, Call, Route, serve, vendor_routes
from vendors_fake.core import RunningLoop, Shape, VendorCore
from vendors_fake.delivery import PostWebhook
from vendors_fake.profile import FaultProfile
from vendors_fake.signing import DEV_WEBHOOK_SECRET

DEV_API_KEY = "dev-key"
_PARAM = re.compile(r"\{(\w+)(?::([^{}]+))?\}")
_NO_QUERY: MultiDictProxy[str] = MultiDictProxy(CIMultiDict())


@dataclass(frozen=True, slots=True)
class MemoryReply:
    """An answer: ``status``, ``headers`` and the body, as chunks (``body`` joins them;
    a file counts as delivered once its chunks were read to the end)."""

    status: int
    headers: Mapping[str, str]
    chunks: Iterator[bytes]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class MemoryVendor:
    """One fake vendor in memory. Independent of jobline's config, as the HTTP host is:
    a shape, a profile, the API key it accepts, the secret it signs replicate webhooks
    with, a seed, the base URL its answers name, the clock its JSON timestamps and
    signatures read, and where its webhooks go."""

    def __init__(
        self,
        shape: Shape,
        profile: FaultProfile | None = None,
        api_key: str = DEV_API_KEY,
        webhook_secret: str = DEV_WEBHOOK_SECRET,
        seed: int = 0,
        *,
        name: str | None = None,
        base_url: str | None = None,
        wall_clock: Callable[[], float],
        post_webhook: PostWebhook | None = None,
    ) -> None:
        self.core = VendorCore(
            shape,
            profile,
            name=name,
            seed=seed,
            api_key=api_key,
            webhook_secret=webhook_secret,
            scheduler=RunningLoop(),
            wall_clock=wall_clock,
            post_webhook=post_webhook,
        )
        self.name = self.core.name
        self.url = self.core.base_url = base_url or f"http://{self.name}.vendor.invalid"
        self._auth = ("Key " if shape == "fal" else "Bearer ") + api_key
        self._routes = [(route, _pattern(route.path)) for route in vendor_routes(self.core)]

    @property
    def jwks_url(self) -> str:
        """fal: where this vendor publishes its webhook keys."""
        return f"{self.url}/.well-known/jwks.json"

    def snapshot(self) -> dict[str, Any]:
        return self.core.snapshot()

    async def request(
        self, method: str, url: URL, headers: Mapping[str, str], body: bytes = b""
    ) -> MemoryReply:
        """Answer one request (see the module docstring for what it raises)."""
        found = self._match(method, url.path)
        if found is None:
            return MemoryReply(404, {}, iter((b"404: Not Found",)))
        route, params = found
        query = url.query if url.query_string else _NO_QUERY
        call = Call(params, query, CIMultiDictProxy(CIMultiDict(headers)), body)
        answer = await serve(self.core, route, call, self._auth)
        return await self._act_out(answer)

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route, pattern in self._routes:
            if route.method == method:
                match = pattern.fullmatch(path)
                if match is not None:
                    return route, match.groupdict()
        return None

    async def _act_out(self, answer: Answer) -> MemoryReply:
        if answer.drop == "hang":
            await asyncio.sleep(self.core.profile.hang_for)
            raise ConnectionResetError("the vendor dropped a request it never answered")
        if answer.drop == "reset":
            raise ConnectionResetError("connection reset by peer")
        if answer.drop == "cut_off":
            raise ConnectionResetError(f"answer cut off after {len(answer.body) // 2} bytes")
        if answer.file is not None:
            return MemoryReply(answer.status, answer.headers, self._stream(answer.file))
        return MemoryReply(answer.status, answer.headers, iter((answer.body,)))

    def _stream(self, found: tuple[Any, Any]) -> Iterator[bytes]:
        task, file = found
        yield from file.chunks()
        self.core.file_downloaded(task, file.name)


def _pattern(path: str) -> re.Pattern[str]:
    """aiohttp's path syntax (``{name}``, ``{name:regex}``) as a regular expression."""
    parts: list[str] = []
    at = 0
    for match in _PARAM.finditer(path):
        parts.append(re.escape(path[at : match.start()]))
        parts.append(f"(?P<{match.group(1)}>{match.group(2) or '[^{}/]+'})")
        at = match.end()
    parts.append(re.escape(path[at:]))
    return re.compile("".join(parts))
