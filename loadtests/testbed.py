"""A whole jobline on one machine: fake vendors, the runtime, an HTTP client.

The demo, the integration tests, the chaos suite and the benchmarks all need the same
set-up: fake vendors on free loopback ports, a config pointing at them with fresh
storage, the runtime (on Ray, or in this process), and an account to submit with.
``Testbed`` does that and tears it all down again.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from runtime.config import JoblineConfig, load_config

ROOT_CONFIG = Path(__file__).resolve().parent.parent / "jobline.toml"
TERMINAL = frozenset({"completed", "failed", "canceled"})


# Ports handed to processes that bind them later come from below the kernel's ephemeral
# range (Linux: 32768-60999) and above Ray's worker ports (10002-19999): a port the kernel
# chose for a port-0 bind could be given again to any other process (the other test
# worker's servers, Ray's own sockets) before the process we name it to binds it.
NAMED_PORTS = range(20_000, 30_000)
# Windows of 100 worker ports for a `ray start` node (`--min/max-worker-port`), apart from
# NAMED_PORTS: `ray start` refuses a node whose named ports fall inside its worker window.
WORKER_PORT_WINDOWS = range(30_000, 32_700, 100)


_HANDED_OUT: set[int] = set()  # ports this process was given: never given twice


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (held together while chosen), from
    ``NAMED_PORTS``, drawn at random so that concurrent test workers rarely meet, and
    never one this process was given before: a port handed out for a server that binds
    it later (a gateway started after a Ray node) is not free-looking for the next
    caller (a CI run saw a `ray start` node take the gateway's port first)."""
    sockets: list[socket.socket] = []
    rng = random.Random(secrets.randbits(64))
    try:
        while len(sockets) < count:
            port = rng.choice(NAMED_PORTS)
            if port in _HANDED_OUT:
                continue
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        ports = [sock.getsockname()[1] for sock in sockets]
        _HANDED_OUT.update(ports)
        return ports
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """One port free now, for a process that binds it later (``free_ports``)."""
    return free_ports(1)[0]


def ensure_dev_secrets(config: JoblineConfig) -> None:
    """Use the fake vendors' development key and secret where the environment has none."""
    from vendors_fake.runner import vendor_credentials

    for vendor in config.vendors.values():
        key, secret = vendor_credentials(vendor)
        os.environ.setdefault(vendor.api_key_env, key)
        if vendor.webhook_secret_env and secret:  # fal-shaped fakes publish their keys
            os.environ.setdefault(vendor.webhook_secret_env, secret)
    os.environ.setdefault(config.gateway.admin_token_env, secrets.token_urlsafe(24))


def _pointed_at(vendor: Any, url: str) -> dict[str, Any]:
    """A vendor config's changes to talk to the fake at ``url``: its base URL and, for a
    fal-shaped fake, the key set it publishes (``/.well-known/jwks.json``)."""
    update: dict[str, Any] = {"base_url": url}
    if vendor.api == "fal":
        update["webhook_jwks_url"] = f"{url}/.well-known/jwks.json"
    return update


def local_config(
    base: JoblineConfig,
    data: Path,
    vendor_urls: Mapping[str, str],
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> JoblineConfig:
    """``base`` with fresh storage under ``data``, the fakes' URLs and a free gateway port.

    ``overrides`` replaces keys per section, e.g. ``{"retry": {"base": 0.05}}``, per
    vendor with ``{"vendors.fal": {"concurrency": 2}}``, or per model with
    ``{"models.video-short": {"max_run_time": 5.0}}``.
    """
    port = free_port()
    sections: dict[str, Any] = {
        "vendors": {
            name: vendor.model_copy(update=_pointed_at(vendor, vendor_urls[name]))
            for name, vendor in base.vendors.items()
        },
        "gateway": base.gateway.model_copy(
            update={"port": port, "public_url": f"http://127.0.0.1:{port}"}
        ),
        "storage": base.storage.model_copy(
            update={"database": data / "jobline.db", "results": data / "results"}
        ),
    }
    config = base.model_copy(update=sections)
    for section, values in (overrides or {}).items():
        table, _, name = section.partition(".")
        if table in ("vendors", "models") and name:
            entries = dict(getattr(config, table))
            entries[name] = entries[name].model_copy(update=dict(values))
            config = config.model_copy(update={table: entries})
        else:
            current = getattr(config, section)
            config = config.model_copy(update={section: current.model_copy(update=dict(values))})
    return config


@dataclass
class JoblineClient:
    """The HTTP API as a client sees it (an API key; admin calls use the admin token)."""

    http: aiohttp.ClientSession
    base_url: str
    api_key: str = ""
    admin_token: str = ""

    def _auth(self, admin: bool = False, key: str | None = None) -> dict[str, str]:
        token = self.admin_token if admin else self.api_key
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        admin: bool = False,
        key: str | None = None,
        json: Any = None,
        api_key: str | None = None,
    ) -> tuple[int, Any]:
        headers = self._auth(admin, key)
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        async with self.http.request(
            method, self.base_url + path, json=json, headers=headers
        ) as response:
            body = await response.read()
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, body

    async def create_account(self, credits: int, name: str = "test") -> tuple[str, str]:
        status, body = await self.request(
            "POST", "/v1/accounts", admin=True, json={"name": name, "credits": credits}
        )
        if status != 201:
            raise RuntimeError(f"create account: {status} {body}")
        return body["account_id"], body["api_key"]

    async def submit(
        self,
        model: str,
        input: dict[str, Any],
        *,
        key: str | None = None,
        api_key: str | None = None,
    ) -> tuple[int, Any]:
        return await self.request(
            "POST", "/v1/jobs", json={"model": model, "input": input}, key=key, api_key=api_key
        )

    async def job(self, job_id: str, api_key: str | None = None) -> tuple[int, Any]:
        return await self.request("GET", f"/v1/jobs/{job_id}", api_key=api_key)

    async def wait(self, job_id: str, timeout: float = 60.0, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            status, job = await self.job(job_id)
            if status == 200 and job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job} after {timeout}s")
            await asyncio.sleep(interval)

    async def wait_all(
        self, job_ids: list[str], timeout: float = 120.0, interval: float = 0.2
    ) -> dict[str, Any]:
        results = await asyncio.gather(*(self.wait(j, timeout, interval) for j in job_ids))
        return dict(zip(job_ids, results, strict=True))

    async def credits(self, api_key: str | None = None) -> Any:
        return (await self.request("GET", "/v1/credits", api_key=api_key))[1]

    async def entries(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """The whole statement, oldest first, every page of it."""
        entries: list[dict[str, Any]] = []
        path = "/v1/credits/entries?limit=200"
        while True:
            status, body = await self.request("GET", path, api_key=api_key)
            if status != 200:
                raise RuntimeError(f"statement: {status} {body}")
            entries += body["entries"]
            if not body.get("next_cursor"):
                return entries
            path = f"/v1/credits/entries?limit=200&cursor={body['next_cursor']}"


@dataclass
class Testbed:
    """Fake vendors + jobline + a client with a funded account. Use ``async with``."""

    __test__ = False  # not a pytest test class

    data: Path
    profile: Any = "calm"
    seed: int = 0
    mode: Literal["ray", "in-process"] = "ray"
    credits: int = 100_000
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fake_limit: int | None = 10_000  # None: the fakes enforce each vendor's limit (429)
    base_config: Path = ROOT_CONFIG
    clock: Any = None  # in-process mode: the runtime's clock (None: the system's)
    config: JoblineConfig = field(init=False)
    fakes: Any = field(init=False)
    runtime: Any = field(init=False)
    client: JoblineClient = field(init=False)
    account_id: str = field(init=False)
    _http: aiohttp.ClientSession = field(init=False)

    async def __aenter__(self) -> Testbed:
        from vendors_fake.profile import FaultProfile, load_profile
        from vendors_fake.runner import start_fake_vendors

        base = load_config(self.base_config)
        ensure_dev_secrets(base)
        profile = (
            self.profile if isinstance(self.profile, FaultProfile) else load_profile(self.profile)
        )
        if self.fake_limit is not None:
            profile = profile.model_copy(update={"concurrency_limit": self.fake_limit})
        self.data.mkdir(parents=True, exist_ok=True)
        self.fakes = await start_fake_vendors(base, profile, ports="free", seed=self.seed)
        ray = {"namespace": f"jobline-{secrets.token_hex(4)}", **self.overrides.get("ray", {})}
        overrides = {**self.overrides, "ray": ray}
        self.config = local_config(base, self.data, self.fakes.urls, overrides=overrides)
        try:
            await self._start_runtime()
        except BaseException:
            await self.fakes.stop()
            raise
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self.client = JoblineClient(
            self._http,
            self.config.gateway.public_url,
            admin_token=self.config.gateway.admin_token() or "",
        )
        self.account_id, self.client.api_key = await self.client.create_account(self.credits)
        return self

    async def _start_runtime(self) -> None:
        if self.mode == "ray":
            from actors.hosting import RayRuntime

            self.runtime = await asyncio.to_thread(RayRuntime.start, self.config, seed=self.seed)
        else:
            from actors.wiring import InProcessRuntime, Wiring

            wiring = Wiring(seed=self.seed)
            if self.clock is not None:
                wiring = Wiring(seed=self.seed, clock=self.clock)
            self.runtime = await InProcessRuntime.start(self.config, wiring)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.close()
        if self.mode == "ray":
            await asyncio.to_thread(self.runtime.stop)
        else:
            await self.runtime.stop()
        await self.fakes.stop()

    async def call(self, role: str, method: str, *args: Any) -> Any:
        """Call a method of one actor object (Ray: through its host)."""
        if self.mode == "ray":
            return await asyncio.to_thread(self.runtime.call, role, method, *args)
        target = self.runtime.object(role)
        return await getattr(target, method)(*args)

    def fake_stats(self, vendor: str) -> dict[str, Any]:
        stats: dict[str, Any] = self.fakes[vendor].snapshot()
        return stats
