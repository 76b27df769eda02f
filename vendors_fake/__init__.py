"""Fake AI vendors: independent witnesses of the replicate and fal APIs, with random
latency and scripted faults, for stress-testing jobline before it meets a real vendor.

    async with FakeVendor("replicate", preset("flaky"), api_key="k", seed=7) as fake:
        ...  # point a client at fake.url; read fake.snapshot() or GET /_control/stats

The vendor's behaviour lives in :class:`~vendors_fake.core.VendorCore` (no HTTP, no
clock of its own); :class:`~vendors_fake.server.FakeVendor` serves it over aiohttp.
``vendors_fake.runner`` starts one fake per vendor of a jobline.toml
(``jobline fake-vendors``); ``profiles.toml`` holds the presets. Nothing here imports
jobline (``runtime``, ``actors``): the fakes are written from the vendors' documentation
and official clients, so they cannot share jobline's mistakes.
"""

from vendors_fake.core import Refused, VendorCore
from vendors_fake.outputs import expected_file
from vendors_fake.png import expected_png
from vendors_fake.profile import (
    FaultProfile,
    Latency,
    LostAnswers,
    Outage,
    OutputSpec,
    Refusal,
    RouteFaults,
    Size,
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
    "LostAnswers",
    "Outage",
    "OutputSpec",
    "Refusal",
    "Refused",
    "RouteFaults",
    "Size",
    "VendorCore",
    "WebhookFaults",
    "expected_file",
    "expected_png",
    "load_profile",
    "merge_profile",
    "preset",
    "preset_names",
]
