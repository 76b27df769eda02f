"""Vendor clients: the ``VendorClient`` protocol and one HTTP adapter per vendor API shape.

    make_client(vendor_config, api_key, webhook_secret) -> ReplicateClient | FalClient

A client submits a task, reads its status (with every output once it succeeded),
cancels it, downloads its outputs (streamed; ``data:`` URIs decoded without a request),
and verifies and parses the vendor's webhooks in the vendor's own scheme. Each client
owns one ``aiohttp.ClientSession`` (one connection pool), created lazily inside the
running event loop; ``close()`` releases it. Every request carries ``X-Jobline-Trace-Id``
(and a submit ``X-Jobline-Job-Id`` and ``X-Jobline-Attempt``), so one job can be followed
through the vendor's logs.

- :mod:`runtime.vendors.base`: ``TaskState``, ``TaskStatus``, ``Output``,
  ``WebhookEvent``, ``Download``, ``VendorClient``;
- :mod:`runtime.vendors.http`: the session, requests, downloads, and the one place
  where lower-layer errors become jobline's (its docstring has the table);
- :mod:`runtime.vendors.outputs`: outputs found under any key, data URIs;
- :mod:`runtime.vendors.replicate`, :mod:`runtime.vendors.fal`: the two API shapes, each
  written from the vendor's documentation and official client, not from our fakes.

Task failures are not exceptions: ``status()`` returns ``TaskStatus(FAILED, error=...,
permanent=...)``; a status read of a task the vendor does not know (404) is ``FAILED``
(transient), so the job is submitted again. Canceling a task that already ended, or that
the vendor does not know, is not an error.
"""

from __future__ import annotations

from runtime.config import VendorConfig
from runtime.errors import ConfigError
from runtime.vendors.base import (
    Download,
    FoundTask,
    Output,
    TaskState,
    TaskStatus,
    VendorClient,
    WebhookEvent,
)
from runtime.vendors.fal import JWKS_MIN_REFETCH, FalClient
from runtime.vendors.http import MAX_OUTPUT_BYTES, retry_after_seconds
from runtime.vendors.replicate import ReplicateClient

__all__ = [
    "MAX_OUTPUT_BYTES",
    "Download",
    "FalClient",
    "FoundTask",
    "Output",
    "ReplicateClient",
    "TaskState",
    "TaskStatus",
    "VendorClient",
    "WebhookEvent",
    "make_client",
    "retry_after_seconds",
]


def make_client(
    vendor_config: VendorConfig,
    api_key: str,
    webhook_secret: str | None = None,
    *,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    jwks_min_refetch: float = JWKS_MIN_REFETCH,
) -> VendorClient:
    """The adapter for the vendor's API shape. A replicate-shaped vendor needs its
    webhook secret (``ConfigError`` naming the variable without it); a fal-shaped one
    reads its webhook keys from the config's ``webhook_jwks_url``."""
    if vendor_config.api == "replicate":
        if not webhook_secret:
            variable = vendor_config.webhook_secret_env or "webhook_secret_env"
            raise ConfigError("environment", variable, "not set (the webhook secret)")
        return ReplicateClient(
            vendor_config, api_key, webhook_secret, max_output_bytes=max_output_bytes
        )
    return FalClient(
        vendor_config,
        api_key,
        max_output_bytes=max_output_bytes,
        jwks_min_refetch=jwks_min_refetch,
    )
