"""Webhook signature schemes: Standard Webhooks (replicate) and fal's ED25519.

Standard Webhooks (https://www.standardwebhooks.com)
----------------------------------------------------
A signed webhook carries three headers::

    webhook-id:        msg_2Lh...            unique per event; redeliveries reuse it
    webhook-timestamp: 1712345678            integer seconds since the epoch
    webhook-signature: v1,<base64 sig> ...   space-separated; any one may match

where ``sig = HMAC-SHA256(key, f"{id}.{timestamp}.".encode() + body)`` and ``key`` is the
base64 part of the ``whsec_...`` secret. Replicate signs this way (its "Verify webhooks"
guide): :func:`verify`.

fal (its "Webhooks" page, "Verifying your webhook")
---------------------------------------------------
Four headers::

    X-Fal-Webhook-Request-Id   the request id
    X-Fal-Webhook-User-Id      the account's user id
    X-Fal-Webhook-Timestamp    seconds since the epoch
    X-Fal-Webhook-Signature    hex of an ED25519 signature

over ``f"{request_id}\n{user_id}\n{timestamp}\n{sha256_hex(body)}"``, by one of the keys
fal publishes as a JSON Web Key Set (``kty: OKP``, ``crv: Ed25519``, ``x``: base64url of
the raw key). fal sends no key id: every published key is tried. The timestamp must be
within five minutes of now. :func:`parse_jwks` reads the key set, :func:`fal_signed`
the headers, :func:`fal_signature_valid` checks one; fetching and caching the key set is
the fal adapter's (``runtime.vendors.fal``).

Pure functions: the caller passes ``now`` and the keys; nothing here reads a clock or
the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from runtime.errors import WebhookSignatureInvalid, WebhookTimestampStale

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0  # seconds either side of now

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
FAL_REQUEST_ID_HEADER = "x-fal-webhook-request-id"
FAL_USER_ID_HEADER = "x-fal-webhook-user-id"
FAL_TIMESTAMP_HEADER = "x-fal-webhook-timestamp"
FAL_SIGNATURE_HEADER = "x-fal-webhook-signature"
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
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)  # the signed content is id.timestamp.body, with no copy of the body
    return mac.digest()


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
    check_timestamp(timestamp, now, tolerance)


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


def check_timestamp(timestamp: int, now: float, tolerance: float) -> None:
    """Raise ``WebhookTimestampStale`` if ``timestamp`` is more than ``tolerance`` seconds
    away from ``now`` (a replay)."""
    if abs(now - timestamp) > tolerance:
        ahead = timestamp - now
        when = f"{ahead:.0f}s in the future" if ahead > 0 else f"{-ahead:.0f}s in the past"
        raise WebhookTimestampStale(
            f"webhook timestamp {timestamp} is {when} (tolerance {tolerance:.0f}s)"
        )


# --- fal: ED25519 ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FalSigned:
    """What a fal webhook's headers say, and the message its signature covers."""

    request_id: str
    user_id: str
    timestamp: int
    signature: bytes
    message: bytes


def fal_signed(headers: Mapping[str, str], body: bytes) -> FalSigned:
    """Read fal's four headers; ``WebhookSignatureInvalid`` if one is missing or malformed."""
    lowered = {name.lower(): value for name, value in headers.items()}
    request_id = lowered.get(FAL_REQUEST_ID_HEADER)
    user_id = lowered.get(FAL_USER_ID_HEADER)
    raw_timestamp = lowered.get(FAL_TIMESTAMP_HEADER)
    raw_signature = lowered.get(FAL_SIGNATURE_HEADER)
    if not request_id or not user_id or not raw_timestamp or not raw_signature:
        raise WebhookSignatureInvalid(
            "missing X-Fal-Webhook-Request-Id, -User-Id, -Timestamp or -Signature"
        )
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookSignatureInvalid(
            f"malformed X-Fal-Webhook-Timestamp {raw_timestamp!r}"
        ) from None
    try:
        signature = bytes.fromhex(raw_signature)
    except ValueError:
        raise WebhookSignatureInvalid("X-Fal-Webhook-Signature is not hex") from None
    digest = hashlib.sha256(body).hexdigest()
    message = f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()
    return FalSigned(request_id, user_id, timestamp, signature, message)


def fal_signature_valid(keys: Sequence[Ed25519PublicKey], signed: FalSigned) -> bool:
    """True if any of ``keys`` made ``signed``'s signature."""
    for key in keys:
        try:
            key.verify(signed.signature, signed.message)
        except InvalidSignature:
            continue
        return True
    return False


def parse_jwks(document: Any) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JSON Web Key Set (RFC 7517; OKP keys of RFC 8037); other
    keys are skipped. ``ValueError`` if it is no key set or holds no Ed25519 key."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError('not a JSON Web Key Set: no "keys" list')
    found = []
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = jwk.get("x")
        if not isinstance(x, str):
            continue
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            found.append(Ed25519PublicKey.from_public_bytes(raw))
        except (binascii.Error, ValueError):
            continue
    if not found:
        raise ValueError("the key set holds no Ed25519 key")
    return found
