"""Standard Webhooks signing and verification (https://www.standardwebhooks.com).

A signed webhook carries three headers::

    webhook-id:        msg_2Lh...            unique per event; redeliveries reuse it
    webhook-timestamp: 1712345678            integer seconds since the epoch
    webhook-signature: v1,<base64 sig> ...   space-separated; any one may match

where ``sig = HMAC-SHA256(key, f"{id}.{timestamp}.".encode() + body)`` and ``key`` is the
base64 part of the ``whsec_...`` secret. Replicate signs this way; jobline's fake vendors
sign both API shapes this way, so the gateway verifies every vendor with :func:`verify`.

Pure functions: the caller passes ``now``; nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

from runtime.errors import WebhookSignatureInvalid, WebhookTimestampStale

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0  # seconds either side of now

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
# The webhook URL of a submit names the job and attempt (``?jobline_job_id=…&
# jobline_attempt=…``); vendors call it as given, so a webhook says whose task it is.
JOB_PARAM = "jobline_job_id"
ATTEMPT_PARAM = "jobline_attempt"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Tolerate unpadded base64, as the reference library does.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not base64 after its whsec_ prefix") from exc
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value (``v1,<base64>``) for one message."""
    digest = _digest(secret_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """All three Standard Webhooks headers for one message."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Accept a webhook or raise.

    Raises ``WebhookSignatureInvalid`` when a header is missing or malformed or no
    ``v1`` signature matches, and ``WebhookTimestampStale`` when an authentic message's
    timestamp is more than ``tolerance`` seconds away from ``now`` (a replay).
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(ID_HEADER)
    raw_timestamp = lowered.get(TIMESTAMP_HEADER)
    signatures = lowered.get(SIGNATURE_HEADER)
    if not msg_id or not raw_timestamp or not signatures:
        raise WebhookSignatureInvalid("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookSignatureInvalid(f"malformed webhook-timestamp {raw_timestamp!r}") from None

    expected = _digest(secret_key(secret), msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, sig) for sig in _v1_signatures(signatures)):
        raise WebhookSignatureInvalid("no webhook-signature matches")
    if abs(now - timestamp) > tolerance:
        raise WebhookTimestampStale(
            f"webhook-timestamp {timestamp} is {now - timestamp:+.0f}s from now "
            f"(tolerance {tolerance:.0f}s)"
        )


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a header; other versions and junk are skipped."""
    found = []
    for item in header.split():
        version, _, encoded = item.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    return found
