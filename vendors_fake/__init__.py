"""Fake AI vendors: aiohttp servers with the replicate and fal API shapes, random latency
and scripted failures, for stress-testing jobline before it meets a real vendor.

    async with FakeVendor("replicate", preset("flaky"), api_key="k", seed=7) as fake:
        ...  # point a client at fake.url; read fake.snapshot() or GET /_control/stats

``vendors_fake.runner`` starts one fake per vendor of a jobline.toml
(``jobline fake-vendors``); ``profiles.toml`` holds the presets.
"""

from vendors_fake.png import expected_png
from vendors_fake.profile import (
    FaultProfile,
    Latency,
    Outage,
    RouteFaults,
    WebhookFaults,
    load_profile,
    merge_profile,
    preset,
    preset_names,
)
from vendors_fake.server import DEV_WEBHOOK_SECRET, FakeVendor

__all__ = [
    "DEV_WEBHOOK_SECRET",
    "FakeVendor",
    "FaultProfile",
    "Latency",
    "Outage",
    "RouteFaults",
    "WebhookFaults",
    "expected_png",
    "load_profile",
    "merge_profile",
    "preset",
    "preset_names",
]
