"""How the fakes sign their webhooks, written from each vendor's documentation.

**replicate: Standard Webhooks** (https://www.standardwebhooks.com/, the spec's
"Signature scheme"; replicate's "Verify webhooks" guide). Three headers::

    webhook-id:        msg_...      the same for every delivery of one event
    webhook-timestamp: 1712345678   seconds since the epoch, of this delivery attempt
    webhook-signature: v1,<base64>  HMAC-SHA256 of f"{id}.{timestamp}.{body}"

keyed with the base64-decoded part of the ``whsec_...`` secret.

**fal: ED25519** (fal's "Webhooks" page, "Verifying your webhook"). Four headers::

    X-Fal-Webhook-Request-Id   the request id
    X-Fal-Webhook-User-Id      the account's user id
    X-Fal-Webhook-Timestamp    seconds since the epoch
    X-Fal-Webhook-Signature    hex of the ED25519 signature of the message

where the message is ``f"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}"``
and the public keys are published as a JSON Web Key Set (RFC 7517/8037: ``kty: OKP``,
``crv: Ed25519``, ``x``: base64url of the raw key), which the fake serves at
``/.well-known/jwks.json`` as fal does at ``https://rest.alpha.fal.ai/.well-known/jwks.json``.

Neither scheme reads a clock: the caller passes the timestamp. Each fake derives its fal
keys from its name, so a restarted fake publishes the same keys; :meth:`FalSigner.rotate`
adds a new one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SECRET_PREFIX = "whsec_"
# base64 of b"fake-vendor-dev-webhook-secret" and of b"forged-by-a-stranger"
DEV_WEBHOOK_SECRET = "whsec_ZmFrZS12ZW5kb3ItZGV2LXdlYmhvb2stc2VjcmV0"
FORGED_WEBHOOK_SECRET = "whsec_Zm9yZ2VkLWJ5LWEtc3RyYW5nZXI="

FAL_REQUEST_ID = "X-Fal-Webhook-Request-Id"
FAL_USER_ID = "X-Fal-Webhook-User-Id"
FAL_TIMESTAMP = "X-Fal-Webhook-Timestamp"
FAL_SIGNATURE = "X-Fal-Webhook-Signature"


class StandardWebhooksSigner:
    """Signs with one ``whsec_`` secret (the spec's reference scheme, v1)."""

    def __init__(self, secret: str) -> None:
        encoded = secret.removeprefix(SECRET_PREFIX)
        self._key = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        if not self._key:
            raise ValueError("a Standard Webhooks secret must not be empty")

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        mac = hmac.new(self._key, f"{msg_id}.{timestamp}.".encode(), hashlib.sha256)
        mac.update(body)  # the body (up to megabytes) is not copied to be signed
        digest = mac.digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
        }


def _ed25519_key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class FalSigner:
    """fal's webhook signatures: the current key signs; every published key is in the JWKS."""

    def __init__(self, name: str, user_id: str | None = None) -> None:
        self.name = name
        self.user_id = user_id or f"fake-user-{name}"
        self._generation = 0
        self._keys: list[tuple[str, Ed25519PrivateKey]] = [self._new_key()]
        self._forger = _ed25519_key(f"forged-by-a-stranger:{name}")

    def _new_key(self) -> tuple[str, Ed25519PrivateKey]:
        kid = f"{self.name}-key-{self._generation}"
        return kid, _ed25519_key(f"fake-fal-webhook-key:{kid}")

    @property
    def current_kid(self) -> str:
        return self._keys[-1][0]

    def rotate(self, keep_old: bool = True) -> str:
        """Sign with a new key from now on; the old ones stay published if ``keep_old``."""
        self._generation += 1
        key = self._new_key()
        self._keys = [*self._keys, key] if keep_old else [key]
        return key[0]

    def jwks(self) -> dict[str, Any]:
        """The public key set, as fal publishes it."""
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": kid,
                    "x": _b64url(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)),
                }
                for kid, key in self._keys
            ]
        }

    def headers(
        self, request_id: str, timestamp: int, body: bytes, *, forged: bool = False
    ) -> dict[str, str]:
        digest = hashlib.sha256(body).hexdigest()
        message = f"{request_id}\n{self.user_id}\n{timestamp}\n{digest}".encode()
        key = self._forger if forged else self._keys[-1][1]
        return {
            FAL_REQUEST_ID: request_id,
            FAL_USER_ID: self.user_id,
            FAL_TIMESTAMP: str(timestamp),
            FAL_SIGNATURE: key.sign(message).hex(),
        }
