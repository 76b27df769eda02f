"""Start one fake vendor per vendor of a jobline config: ``jobline fake-vendors``.

Each fake listens on the port of its vendor's ``base_url`` (or a free port), speaks the
vendor's ``api`` shape, and accepts the API key found in the environment variable the
vendor config names; a replicate-shaped fake signs webhooks with the secret its
``webhook_secret_env`` names, so jobline and the fakes agree. (A fal-shaped fake signs
with its own ED25519 keys and publishes them at ``<its URL>/.well-known/jwks.json``,
which a jobline config names as that vendor's ``webhook_jwks_url``.) When a variable is
unset both sides fall back to the dev defaults of :func:`vendor_credentials`: key
``dev-key-<vendor>``, secret ``dev_webhook_secret(vendor)`` (``whsec_`` + base64 of
``jobline-dev-webhook-secret-<vendor>``).

The runner reads the config file itself (only each vendor's ``api``, ``base_url``,
``api_key_env``, ``webhook_secret_env`` and ``concurrency``): the fakes import nothing of
jobline. A profile without ``concurrency_limit`` takes each vendor's configured
``concurrency``, so a jobline that overruns its own limit gets 429s and the fake's stats
show it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from yarl import URL

from vendors_fake.profile import FaultProfile, load_profile, preset_names
from vendors_fake.server import FakeVendor


class VendorLike(Protocol):
    """What the runner reads of a vendor's config (a ``[vendors.<name>]`` table)."""

    @property
    def name(self) -> str: ...
    @property
    def api(self) -> Literal["replicate", "fal"]: ...
    @property
    def base_url(self) -> str: ...
    @property
    def api_key_env(self) -> str: ...
    @property
    def webhook_secret_env(self) -> str | None: ...
    @property
    def concurrency(self) -> int: ...


class ConfigLike(Protocol):
    @property
    def vendors(self) -> Mapping[str, VendorLike]: ...


@dataclass(frozen=True)
class VendorTable:
    """One ``[vendors.<name>]`` table of a jobline config, as the runner reads it."""

    name: str
    api: Literal["replicate", "fal"]
    base_url: str
    api_key_env: str
    webhook_secret_env: str | None
    concurrency: int


@dataclass(frozen=True)
class ConfigFile:
    vendors: Mapping[str, VendorTable]


def read_config(path: str | Path) -> ConfigFile:
    """The vendors of a jobline config file; ``ValueError`` naming the file and key."""
    path = Path(path)
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    tables = raw.get("vendors")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"{path}: vendors: at least one [vendors.<name>] table is needed")
    vendors = {}
    for name, table in tables.items():
        where = f"{path}: vendors.{name}"
        if not isinstance(table, dict):
            raise ValueError(f"{where}: must be a table")
        api = table.get("api")
        if api not in ("replicate", "fal"):
            raise ValueError(f"{where}.api: must be 'replicate' or 'fal', got {api!r}")
        fields = {}
        for key in ("base_url", "api_key_env"):
            if not isinstance(table.get(key), str):
                raise ValueError(f"{where}.{key}: a string is required")
            fields[key] = table[key]
        concurrency = table.get("concurrency")  # true is no concurrency of 1 (bool is an int)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"{where}.concurrency: must be an integer >= 1, got {concurrency!r}")
        secret_env = table.get("webhook_secret_env")
        if secret_env is not None and not isinstance(secret_env, str):
            raise ValueError(f"{where}.webhook_secret_env: must be a string, got {secret_env!r}")
        vendors[name] = VendorTable(
            name,
            api,
            fields["base_url"],
            fields["api_key_env"],
            secret_env if isinstance(secret_env, str) else None,
            concurrency,
        )
    return ConfigFile(vendors)


def dev_webhook_secret(vendor_name: str) -> str:
    raw = f"jobline-dev-webhook-secret-{vendor_name}".encode()
    return "whsec_" + base64.b64encode(raw).decode("ascii")


def vendor_credentials(
    vendor: VendorLike, environ: Mapping[str, str] | None = None
) -> tuple[str, str | None]:
    """(API key, webhook secret) for a vendor: its environment variables, else dev defaults.

    The secret is None for a vendor that names no ``webhook_secret_env`` (fal-shaped:
    it signs with its ED25519 keys). jobline uses the same fallback when it talks to a
    fake, so both sides agree.
    """
    env = os.environ if environ is None else environ
    key = env.get(vendor.api_key_env) or f"dev-key-{vendor.name}"
    if vendor.webhook_secret_env is None:
        return key, None
    secret = env.get(vendor.webhook_secret_env) or dev_webhook_secret(vendor.name)
    return key, secret


@dataclass
class FakeVendorSet:
    """The running fakes, by vendor name."""

    vendors: dict[str, FakeVendor] = field(default_factory=dict)

    @property
    def urls(self) -> dict[str, str]:
        return {name: fake.url for name, fake in self.vendors.items()}

    def __getitem__(self, name: str) -> FakeVendor:
        return self.vendors[name]

    async def stop(self) -> None:
        await asyncio.gather(*(fake.stop() for fake in self.vendors.values()))

    async def __aenter__(self) -> FakeVendorSet:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def start_fake_vendors(
    config: ConfigLike,
    profile_name_or_profile: str | Path | FaultProfile = "calm",
    host: str = "127.0.0.1",
    ports: Literal["free", 0] | Mapping[str, int] | None = None,
    seed: int = 0,
) -> FakeVendorSet:
    """Start a fake for every vendor of ``config``.

    ``ports``: None = each vendor's ``base_url`` port (a free one if the URL has none);
    ``"free"`` or 0 = free ports; a mapping = those ports by vendor name (free otherwise).
    Each fake's random streams are seeded from ``(vendor name, seed)``.
    """
    if isinstance(profile_name_or_profile, FaultProfile):
        profile = profile_name_or_profile
    else:
        profile = load_profile(profile_name_or_profile)
    running = FakeVendorSet()
    try:
        for name, vendor in config.vendors.items():
            vendor_profile = profile
            if profile.concurrency_limit is None:
                vendor_profile = profile.model_copy(
                    update={"concurrency_limit": vendor.concurrency}
                )
            key, secret = vendor_credentials(vendor)
            fake = FakeVendor(
                vendor.api,
                vendor_profile,
                key,
                secret or dev_webhook_secret(name),
                seed,
                name=name,
            )
            await fake.start(host, _port_for(name, vendor.base_url, ports))
            running.vendors[name] = fake
    except BaseException:
        await running.stop()
        raise
    return running


def _port_for(
    name: str, base_url: str, ports: Literal["free", 0] | Mapping[str, int] | None
) -> int:
    if ports == "free" or ports == 0:
        return 0
    if ports is not None:
        return ports.get(name, 0)
    return URL(base_url).explicit_port or 0


def main(argv: list[str] | None = None) -> int:
    """``jobline fake-vendors``: start the fakes, print their URLs, run until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="jobline fake-vendors",
        description="Run a fake vendor for every vendor in the jobline config.",
    )
    parser.add_argument("--config", default="jobline.toml", help="jobline config file")
    parser.add_argument(
        "--profile",
        default="calm",
        help=f"a preset ({', '.join(preset_names())}) or a .toml/.json profile file",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--free-ports", action="store_true", help="ignore the config's ports, use free ones"
    )
    args = parser.parse_args(argv)

    try:
        config = read_config(args.config)
        profile = load_profile(args.profile)
    except (FileNotFoundError, ValueError) as exc:
        print(f"jobline fake-vendors: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        ports: Literal["free"] | None = "free" if args.free_ports else None
        asyncio.run(_serve(config, profile, str(args.profile), args.host, ports, args.seed))
    return 0


async def _serve(
    config: ConfigLike,
    profile: FaultProfile,
    label: str,
    host: str,
    ports: Literal["free"] | None,
    seed: int,
) -> None:
    fakes = await start_fake_vendors(config, profile, host, ports, seed)
    try:
        print(f"fake vendors up: profile {label}, seed {seed}")
        if profile.description:
            print(f"  {profile.description}")
        for name, fake in fakes.vendors.items():
            print(f"  {name:<16} {fake.shape_name:<10} {fake.url}")
            if fake.shape_name == "fal":
                print(f"  {'':<16} {'':<10} webhook keys at {fake.jwks_url}")
        print("each fake's stats: GET <url>/_control/stats")
        print("Ctrl-C to stop.")
        sys.stdout.flush()
        await asyncio.Event().wait()
    finally:
        await fakes.stop()
