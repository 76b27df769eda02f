"""runtime.webhooks: Standard Webhooks against its reference library, both ways; fal's
ED25519 scheme against signatures made here as fal's documentation describes them."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from runtime.errors import WebhookRejected, WebhookSignatureInvalid, WebhookTimestampStale
from runtime.webhooks import (
    check_timestamp,
    fal_signature_valid,
    fal_signed,
    parse_jwks,
    secret_key,
    sign,
    signed_headers,
    verify,
)

SECRET = "whsec_" + base64.b64encode(b"a-secret-of-32-bytes-for-testing").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-nobody-should-use").decode()
NOW = 1_712_345_678


def reference_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_our_signature_is_the_reference_signature() -> None:
    body = b'{"id":"p1","status":"succeeded"}'
    assert (
        sign(SECRET, "msg_1", NOW, body)
        == reference_headers(SECRET, "msg_1", NOW, body)["webhook-signature"]
    )


def test_the_reference_library_accepts_what_we_sign() -> None:
    body = b'{"id":"p1","status":"succeeded"}'
    now = int(datetime.now(UTC).timestamp())
    headers = signed_headers(SECRET, "msg_1", now, body)
    assert Webhook(SECRET).verify(body, headers) == {"id": "p1", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(body, headers)


def test_we_accept_what_the_reference_library_signs() -> None:
    body = b'{"request_id":"r1","status":"OK"}'
    verify(SECRET, reference_headers(SECRET, "msg_2", NOW, body), body, now=NOW + 10)


@given(
    msg_id=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=40),
    body=st.text(max_size=200),
    key=st.binary(min_size=1, max_size=64),
    timestamp=st.integers(min_value=0, max_value=4_000_000_000),
)
def test_signatures_agree_with_the_reference_for_any_message(
    msg_id: str, body: str, key: bytes, timestamp: int
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    data = body.encode()
    ours = sign(secret, msg_id, timestamp, data)
    assert ours == reference_headers(secret, msg_id, timestamp, data)["webhook-signature"]
    verify(secret, signed_headers(secret, msg_id, timestamp, data), data, now=timestamp)


def test_a_wrong_secret_a_changed_body_or_a_changed_id_is_rejected() -> None:
    body = b'{"status":"succeeded"}'
    headers = signed_headers(OTHER, "msg_1", NOW, body)
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, body, now=NOW)
    headers = signed_headers(SECRET, "msg_1", NOW, body)
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, b'{"status":"failed"}', now=NOW)
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, {**headers, "webhook-id": "msg_2"}, body, now=NOW)
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, {**headers, "webhook-timestamp": str(NOW + 1)}, body, now=NOW)


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_rejected(drop: str) -> None:
    body = b"{}"
    headers = signed_headers(SECRET, "msg_1", NOW, body)
    del headers[drop]
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, body, now=NOW)


@pytest.mark.parametrize(
    "signature",
    ["", "v1", "v1,", "v1,not base64!", "v2,AAAA", "garbage", "v1,AAAA v1,BBBB"],
)
def test_malformed_signatures_are_rejected_not_crashing(signature: str) -> None:
    headers = {"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": signature}
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, b"{}", now=NOW)


def test_a_malformed_timestamp_is_rejected() -> None:
    headers = signed_headers(SECRET, "m", NOW, b"{}")
    headers["webhook-timestamp"] = "yesterday"
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, b"{}", now=NOW)


def test_any_one_of_several_signatures_may_match() -> None:
    body = b'{"a":1}'
    now = int(datetime.now(UTC).timestamp())
    good = sign(SECRET, "m", now, body)
    forged = sign(OTHER, "m", now, body)
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(now),
        "webhook-signature": f"v1a,xyz {forged} {good}",
    }
    verify(SECRET, headers, body, now=now)
    Webhook(SECRET).verify(body, headers)  # the reference library agrees
    headers["webhook-signature"] = f"v1a,xyz {forged}"
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, body, now=now)


def test_header_names_are_case_insensitive() -> None:
    body = b"{}"
    headers = {k.title(): v for k, v in signed_headers(SECRET, "m", NOW, body).items()}
    verify(SECRET, headers, body, now=NOW)


@pytest.mark.parametrize("offset", [-301, 301, -3600, 86_400])
def test_an_authentic_but_stale_or_future_timestamp_is_rejected(offset: int) -> None:
    body = b"{}"
    headers = signed_headers(SECRET, "m", NOW + offset, body)
    with pytest.raises(WebhookTimestampStale):
        verify(SECRET, headers, body, now=NOW)
    verify(SECRET, headers, body, now=NOW, tolerance=abs(offset))


def test_both_rejections_are_webhook_rejected() -> None:
    assert issubclass(WebhookSignatureInvalid, WebhookRejected)
    assert issubclass(WebhookTimestampStale, WebhookRejected)


def test_the_secret_prefix_and_padding_are_optional() -> None:
    raw = b"k" * 23  # base64 with padding
    padded = base64.b64encode(raw).decode()
    assert padded.endswith("=")
    assert secret_key("whsec_" + padded) == raw
    assert secret_key(padded) == raw
    assert secret_key("whsec_" + padded.rstrip("=")) == raw
    assert sign(padded, "m", NOW, b"") == sign("whsec_" + padded, "m", NOW, b"")


@pytest.mark.parametrize("secret", ["whsec_", "", "whsec_***"])
def test_an_unusable_secret_is_a_value_error(secret: str) -> None:
    with pytest.raises(ValueError):
        secret_key(secret)


# --- fal: ED25519 over "request id, user id, timestamp, sha256 of the body" -----------------

FAL_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
FORGER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def jwk(key: Ed25519PrivateKey, kid: str = "k1") -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid}


def fal_headers(
    key: Ed25519PrivateKey, body: bytes, timestamp: int = NOW, request_id: str = "req-1"
) -> dict[str, str]:
    import hashlib

    message = f"{request_id}\nuser-9\n{timestamp}\n{hashlib.sha256(body).hexdigest()}"
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": "user-9",
        "X-Fal-Webhook-Timestamp": str(timestamp),
        "X-Fal-Webhook-Signature": key.sign(message.encode()).hex(),
    }


BODY = b'{"request_id":"req-1","status":"OK","payload":{"images":[]}}'


def test_a_fal_signature_by_a_published_key_verifies() -> None:
    keys = parse_jwks({"keys": [jwk(FORGER, "other"), jwk(FAL_KEY)]})
    signed = fal_signed(fal_headers(FAL_KEY, BODY), BODY)
    assert (signed.request_id, signed.user_id, signed.timestamp) == ("req-1", "user-9", NOW)
    assert fal_signature_valid(keys, signed)
    lowered = {k.lower(): v for k, v in fal_headers(FAL_KEY, BODY).items()}
    assert fal_signature_valid(keys, fal_signed(lowered, BODY))


@pytest.mark.parametrize(
    "case", ["forged-key", "tampered-body", "other-request", "other-timestamp", "other-user"]
)
def test_a_fal_signature_that_does_not_cover_what_came_is_refused(case: str) -> None:
    keys = parse_jwks({"keys": [jwk(FAL_KEY)]})
    headers = fal_headers(FORGER if case == "forged-key" else FAL_KEY, BODY)
    body = BODY + b" " if case == "tampered-body" else BODY
    if case == "other-request":
        headers["X-Fal-Webhook-Request-Id"] = "req-2"
    if case == "other-timestamp":
        headers["X-Fal-Webhook-Timestamp"] = str(NOW + 1)
    if case == "other-user":
        headers["X-Fal-Webhook-User-Id"] = "user-10"
    assert not fal_signature_valid(keys, fal_signed(headers, body))


@pytest.mark.parametrize(
    "broken",
    [
        {"X-Fal-Webhook-Signature": None},
        {"X-Fal-Webhook-Request-Id": None},
        {"X-Fal-Webhook-Timestamp": "yesterday"},
        {"X-Fal-Webhook-Signature": "not-hex"},
    ],
)
def test_missing_or_malformed_fal_headers_are_signature_errors(
    broken: dict[str, str | None],
) -> None:
    headers: dict[str, str] = fal_headers(FAL_KEY, BODY)
    for name, value in broken.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    with pytest.raises(WebhookSignatureInvalid):
        fal_signed(headers, BODY)


def test_timestamps_outside_the_tolerance_are_stale() -> None:
    check_timestamp(NOW, NOW + 300, 300)
    check_timestamp(NOW, NOW - 300, 300)
    for now in (NOW + 301, NOW - 301):
        with pytest.raises(WebhookTimestampStale):
            check_timestamp(NOW, now, 300)


def test_a_stale_timestamp_says_which_way_it_is_off() -> None:
    # Field case: a webhook 1000 s old said "is +1000s from now".
    with pytest.raises(WebhookTimestampStale, match=r"is 1000s in the past \(tolerance 300s\)"):
        check_timestamp(NOW - 1000, NOW, 300)
    with pytest.raises(WebhookTimestampStale, match=r"is 1000s in the future"):
        check_timestamp(NOW + 1000, NOW, 300)


def test_a_key_set_keeps_only_ed25519_keys() -> None:
    rsa = {"kty": "RSA", "n": "xx", "e": "AQAB", "kid": "rsa"}
    broken = {"kty": "OKP", "crv": "Ed25519", "x": "@@@", "kid": "broken"}
    (key,) = parse_jwks({"keys": [rsa, broken, jwk(FAL_KEY)]})
    assert key.public_bytes(Encoding.Raw, PublicFormat.Raw) == FAL_KEY.public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )
    for document in ({}, {"keys": "no"}, {"keys": [rsa]}, [1, 2], None):
        with pytest.raises(ValueError):
            parse_jwks(document)
